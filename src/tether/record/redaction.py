"""Redact before write: field-level redaction with keyed hashes.

Tool argument schemas mark fields: `{"pii": "email"}` (or phone, card, iban,
national_id, ip, person: the whole value is personal), `{"pii": "free_text"}`
(scan it and redact what is found) or `{"secret": true}` (never written in any
form). Use the `PII(...)` and `SECRET` field markers from `tether`.

Free text is scanned with Presidio's recognizers (emails, phone numbers via
libphonenumber, payment cards with a Luhn check, IBANs with their checksum, IP
addresses, US SSNs, UK NINOs, ...). A found value becomes `<kind:HASH>` where
HASH is the first 16 hex digits of HMAC-SHA256(key, value): an auditor holding
the key can match a value without anyone reading it. Person names in free text
need a named-entity model, which this machine cannot download, so they are only
redacted where a schema marks the field `person`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import Field

KINDS = ("email", "phone", "card", "iban", "national_id", "ip", "person", "free_text")
_ENTITY_KIND = {
    "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "card", "IBAN_CODE": "iban",
    "IP_ADDRESS": "ip", "US_SSN": "national_id", "UK_NINO": "national_id", "ES_NIF": "national_id",
    "IT_FISCAL_CODE": "national_id",
}  # fmt: skip
_MIN_SCORE = {"phone": 0.4, "ip": 0.5, "national_id": 0.5}  # lower-confidence patterns need this much


def PII(kind: str) -> Any:  # noqa: N802 - reads like a type marker: Annotated[str, PII("email")]
    """Mark an argument as personal data of `kind` (email, phone, free_text, ...): redacted before any write."""
    if kind not in KINDS:
        raise ValueError(f"unknown PII kind {kind!r} (one of {', '.join(KINDS)})")
    return Field(json_schema_extra={"pii": kind})


SECRET: Any = Field(json_schema_extra={"secret": True})


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


@cache
def _recognizers() -> list[Any]:
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        EsNifRecognizer,
        IbanRecognizer,
        IpRecognizer,
        ItFiscalCodeRecognizer,
        PhoneRecognizer,
        UkNinoRecognizer,
        UsSsnRecognizer,
    )  # fmt: skip

    # Presidio validates email domains with tldextract, which would fetch the public
    # suffix list over the network; use the snapshot it ships instead.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    return [EmailRecognizer(), CreditCardRecognizer(), IbanRecognizer(), IpRecognizer(), UsSsnRecognizer(),
            UkNinoRecognizer(), EsNifRecognizer(), ItFiscalCodeRecognizer(),
            PhoneRecognizer(supported_regions=("US", "GB", "DE", "FR", "ES", "IT", "IE", "NL", "PT"))]  # fmt: skip


def scan(text: str) -> list[Finding]:
    """Personal data found in free text, without overlaps (the longest wins)."""
    found: list[Finding] = []
    for r in _recognizers():
        for res in r.analyze(text, r.supported_entities, None):
            kind = _ENTITY_KIND.get(res.entity_type)
            if kind and res.score >= _MIN_SCORE.get(kind, 0.0):
                found.append(Finding(kind, res.start, res.end))
    found.sort(key=lambda f: (f.start, -(f.end - f.start)))
    out: list[Finding] = []
    for f in found:
        if not out or f.start >= out[-1].end:
            out.append(f)
    return out


class Redactor:
    """Removes PII and secrets from values before they are written (keyed HMAC placeholders)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a redaction key needs at least 16 bytes")
        self._key = key

    def keyed_hash(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()

    def token(self, kind: str, value: str) -> str:
        return f"<{kind}:{self.keyed_hash(value)[:16]}>"

    def text(self, text: str) -> str:
        """Free text with every finding replaced by its token."""
        findings = scan(text)
        if not findings:
            return text
        parts, pos = [], 0
        for f in findings:
            parts += [text[pos : f.start], self.token(f.kind, text[f.start : f.end])]
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts)

    def value(self, marks: Mapping[str, Any], value: Any) -> Any:
        """One value under its schema marks."""
        if value is None:
            return None
        if marks.get("secret"):
            return "<secret>"
        kind = marks.get("pii")
        if kind == "free_text":
            return self.text(value) if isinstance(value, str) else value
        if kind:
            return self.token(kind, value if isinstance(value, str) else repr(value))
        return value

    def args(self, schema: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
        """A call's arguments with every marked field redacted (nested objects and lists too)."""
        return _walk(self, schema, schema, dict(args))


def _resolve(root: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), node)
    return node


def _walk(r: Redactor, root: Mapping[str, Any], node: Mapping[str, Any], value: Any) -> Any:
    node = _resolve(root, node)
    if "pii" in node or node.get("secret"):
        return r.value(node, value)
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: _walk(r, root, props.get(k, {}), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(r, root, node.get("items", {}), v) for v in value]
    for option in node.get("anyOf", []):  # Optional[...] fields
        option = _resolve(root, option)
        if "pii" in option or option.get("secret"):
            return r.value(option, value)
    return value


def marked(schema: Mapping[str, Any]) -> bool:
    """Whether any field of the schema is marked (most are not: skip the walk)."""
    if isinstance(schema, Mapping):
        if "pii" in schema or schema.get("secret"):
            return True
        return any(marked(v) for v in schema.values() if isinstance(v, (Mapping, list)))
    if isinstance(schema, list):
        return any(marked(v) for v in schema)
    return False


def load_key(folder: Path) -> bytes:
    """$TETHER_REDACTION_KEY, else `redaction.key` in `folder` (created once, mode 0600)."""
    env = os.environ.get("TETHER_REDACTION_KEY")
    if env:
        return env.encode()
    return create_once(folder / "redaction.key", lambda: secrets.token_hex(32).encode())


def create_once(path: Path, make: Any) -> bytes:
    """The file's bytes, writing `make()` first if it does not exist. Safe between
    processes: the content is written aside and linked into place whole, so no
    reader sees a half-written key and the first writer wins."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(make())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()
