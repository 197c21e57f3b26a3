"""A labelled corpus of bank messages with planted personal data, for measuring redaction.

    python -m tether.workflows.triage.pii_corpus > evals/pii_corpus.jsonl

Each line: {"text": ..., "spans": [{"kind": ..., "start": ..., "end": ...}]}. The
carriers are held-back Banking77 messages; into each, a sentence with one or two
planted values is added. Values are generated to be valid where validity is
checkable (Luhn for cards, the ISO 7064 checksum for IBANs, libphonenumber's
ranges for phone numbers), in several written formats. About one line in five plants nothing, to measure false alarms on the
carriers themselves.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

from tether.workflows.triage import data

SEED = 5150
LINES = 600


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    prefix = rng.choice(["4", "51", "52", "53", "54", "55", "37", "6011"])
    length = 15 if prefix == "37" else 16
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    digits = body + _luhn_digit(body)
    style = rng.choice(["plain", "spaces", "dashes"])
    if style == "plain" or length == 15:
        return digits
    sep = " " if style == "spaces" else "-"
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


def iban(rng: random.Random) -> str:
    country, length = rng.choice([("GB", 22), ("DE", 22), ("FR", 27), ("ES", 24), ("NL", 18), ("IE", 22)])
    if country in ("GB", "NL", "IE"):
        bank = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
        bban = bank + "".join(str(rng.randrange(10)) for _ in range(length - 8))
    else:
        bban = "".join(str(rng.randrange(10)) for _ in range(length - 4))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    code = f"{country}{check:02d}{bban}"
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4)) if rng.random() < 0.5 else code


def email(rng: random.Random) -> str:
    user = rng.choice(["jane.doe", "m.okafor", "lena_w", "p.nakamura", "sam1987", "a.costa+bank"])
    return f"{user}@{rng.choice(['example.com', 'mail.co.uk', 'post.de', 'inbox.fr'])}"


def phone(rng: random.Random) -> str:
    """A number libphonenumber calls valid (as an issued number would be), in one of several formats."""
    import phonenumbers

    while True:
        number = _phone_text(rng)
        region = "GB" if number.startswith("0") else "US" if number.startswith("(") else None
        if phonenumbers.is_valid_number(phonenumbers.parse(number, region)):
            return number


def _phone_text(rng: random.Random) -> str:
    return rng.choice([
        f"+44 20 7946 {rng.randrange(1000):04d}", f"+44 7911 {rng.randrange(10**5, 10**6)}",
        f"020 7946 {rng.randrange(1000):04d}", f"+1 (415) 555-{rng.randrange(10000):04d}",
        f"(212) 555-{rng.randrange(10000):04d}", f"+49 30 {rng.randrange(10**7, 10**8)}",
        f"+33 1 {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)}",
    ])  # fmt: skip


def ip(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
    return f"2001:db8:{rng.randrange(16**4):x}::{rng.randrange(16**4):x}"


def national_id(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.randrange(100, 665)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"  # US SSN
    letters = "ABCEGHJKLMNPRSTWXYZ"
    prefix = rng.choice([a + b for a in letters for b in letters if a + b not in ("BG", "GB", "NK", "KN", "NT", "TN", "ZZ")])
    return f"{prefix}{rng.randrange(10**5, 10**6)}{rng.choice('ABCD')}"  # UK NINO: 2 letters, 6 digits, a suffix


def person(rng: random.Random) -> str:
    return f"{rng.choice(['Maria', 'John', 'Aisha', 'Kenji', 'Olga', 'Pedro'])} {rng.choice(['Schmidt', 'Okafor', 'Silva', 'Tanaka', 'Novak'])}"


MAKERS = {"email": email, "phone": phone, "card": card, "iban": iban, "ip": ip, "national_id": national_id, "person": person}
TEMPLATES = {
    "email": "You can reach me at {}.", "phone": "Call me back on {} please.", "card": "The card number is {}.",
    "iban": "Send it to my account {}.", "ip": "I logged in from {} yesterday.", "national_id": "My ID number is {}.",
    "person": "My name is {}.",
}  # fmt: skip


def build(lines: int = LINES, seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    carriers = [e.text for e in data.split()[1]]
    out = []
    for _ in range(lines):
        text = rng.choice(carriers)
        spans = []
        if rng.random() >= 0.2:
            for kind in rng.sample(sorted(MAKERS), rng.choice([1, 1, 2])):
                value = MAKERS[kind](rng)
                sentence = TEMPLATES[kind].format(value)
                start = len(text) + 1 + sentence.index(value)
                text = f"{text} {sentence}"
                spans.append({"kind": kind, "start": start, "end": start + len(value)})
        out.append({"text": text, "spans": spans})
    return out


def main() -> None:
    for line in build():
        sys.stdout.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
