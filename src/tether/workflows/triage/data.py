"""The triage data: Banking77 messages (real) and the bank's records (generated).

Banking77 (PolyAI, CC BY 4.0; see data/SOURCE.md and data/LICENSE) is split
here once, with a fixed seed, into a training part for the offline classifier
and a held-back test part. Demo tickets are drawn only from the test part, so
the classifier never acts on a message it trained on.

Customers, cards and transactions are generated deterministically from a seed:
the same seed gives the same bank.
"""

from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

import sqlalchemy as sa

from tether.workflows.triage import systems

SPLIT_SEED = 77
TEST_SHARE = 0.2
BANK_SEED = 2026
CUSTOMERS = 300


@dataclass(frozen=True)
class Example:
    text: str
    intent: str


def _data_file(name: str) -> Any:
    return resources.files("tether.workflows.triage").joinpath("data", name)


@cache
def examples() -> tuple[Example, ...]:
    with _data_file("train.csv").open(encoding="utf-8", newline="") as f:
        return tuple(Example(r["text"].strip(), r["category"]) for r in csv.DictReader(f))


def data_digest() -> str:
    return hashlib.sha256(_data_file("train.csv").read_bytes()).hexdigest()


@cache
def split() -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(train, test): a stratified split of Banking77's train.csv with a fixed seed."""
    from sklearn.model_selection import train_test_split

    rows = examples()
    train, test = train_test_split(
        list(rows), test_size=TEST_SHARE, random_state=SPLIT_SEED, stratify=[r.intent for r in rows]
    )
    return tuple(train), tuple(test)


def demo_tickets(n: int, seed: int) -> list[tuple[Example, str]]:
    """`n` held-back messages, each with the customer who sent it."""
    test = split()[1]
    if n > len(test):
        raise ValueError(f"only {len(test)} held-back messages exist, asked for {n}")
    rng = random.Random(seed)
    picked = rng.sample(range(len(test)), n)
    return [(test[i], customer_id(rng.randrange(CUSTOMERS))) for i in picked]


# -- the bank's generated records ----------------------------------------------
_FIRST = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Grace", "Hugo", "Ines", "Jonas", "Kenji", "Lena",
          "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor", "Wen", "Yara"]  # fmt: skip
_LAST = ["Almeida", "Brown", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Haddad", "Ivanova", "Jensen",
         "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov", "Rossi", "Schmidt", "Tanaka", "Weber"]  # fmt: skip
_MERCHANTS = ["Grocer", "Airline", "Electronics", "Hotel", "Pharmacy", "Bookshop", "Streaming", "Rail", "Cafe",
              "Furniture", "Garage", "Clinic"]  # fmt: skip
_COUNTRIES = ["GB", "DE", "FR", "ES", "IE", "NL", "PT", "IT"]
_BASE = datetime(2026, 11, 1, tzinfo=UTC)


def customer_id(i: int) -> str:
    return f"C{i + 1:04d}"


def _money(rng: random.Random, median: float, sigma: float, cap: float) -> int:
    return max(100, min(int(rng.lognormvariate(0, sigma) * median * 100), int(cap * 100)))


def bank(seed: int = BANK_SEED, n: int = CUSTOMERS) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {"customers": [], "cards": [], "transactions": []}
    for i in range(n):
        cid = customer_id(i)
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        tier = rng.choices(["standard", "premium", "metal"], weights=[70, 22, 8])[0]
        out["customers"].append({"id": cid, "name": f"{first} {last}", "email": f"{first}.{last}{i}@example.com".lower(),
                                 "tier": tier, "country": rng.choice(_COUNTRIES), "status": "active"})  # fmt: skip
        kinds = ["physical"] + (["virtual"] if rng.random() < 0.5 else [])
        for k, kind in enumerate(kinds):
            out["cards"].append({"id": f"K{i + 1:04d}{k}", "customer_id": cid, "last4": f"{rng.randrange(10000):04d}",
                                 "kind": kind, "status": "active", "frozen_reason": None})  # fmt: skip
        t = _BASE - timedelta(days=30)
        txs: list[dict[str, Any]] = []

        def add(kind: str, desc: str, cents: int, dup: str | None = None) -> str:
            nonlocal t
            t += timedelta(hours=rng.randrange(6, 90))
            tid = f"X{i + 1:04d}{len(txs):02d}"
            txs.append({"id": tid, "customer_id": cid, "kind": kind, "description": desc, "amount_cents": cents,
                        "refunded_cents": 0, "booked_at": t.isoformat(), "duplicate_of": dup})  # fmt: skip
            return tid

        for _ in range(rng.randrange(3, 6)):
            # Card payments: median about $120, a tail past $1,000 (about 3%).
            add("card_payment", rng.choice(_MERCHANTS), _money(rng, 120, 1.1, 2500))
        add("atm_withdrawal", "ATM withdrawal", rng.choice([40, 60, 100, 200, 300]) * 100)
        add("transfer", "Transfer out", _money(rng, 150, 0.8, 3000))
        paid = [x for x in txs if x["kind"] == "card_payment"]
        original = rng.choice(paid)
        add("card_payment", original["description"], original["amount_cents"], dup=original["id"])
        add("fee", rng.choice(["Card payment fee", "Transfer fee", "ATM fee", "Exchange fee"]), rng.randrange(50, 1500))
        out["transactions"].extend(txs)
    return out


def seed_bank(sys: systems.Systems, seed: int = BANK_SEED, n: int = CUSTOMERS) -> int:
    """Insert the generated bank if it is not there yet. Returns customers added."""
    with sys.db.read() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(systems.customers)).scalar() >= n:
            return 0
    data = bank(seed, n)
    with sys.db.transaction() as conn:
        have = set(conn.execute(sa.select(systems.customers.c.id)).scalars())
        new_ids = {c["id"] for c in data["customers"]} - have
        if not new_ids:
            return 0
        conn.execute(systems.customers.insert(), [c for c in data["customers"] if c["id"] in new_ids])
        conn.execute(systems.cards.insert(), [c for c in data["cards"] if c["customer_id"] in new_ids])
        conn.execute(systems.transactions.insert(), [x for x in data["transactions"] if x["customer_id"] in new_ids])
    return len(new_ids)
