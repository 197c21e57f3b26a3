"""Signed export manifests: an auditor can check an export is whole and came from here.

The manifest names the export file's SHA-256, its entry count and its first and
last entries, and is signed with Ed25519 (the `cryptography` library). The
public key is printed by `tether ledger pubkey`; auditors pin it once and check
every manifest against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tether.errors import LedgerError
from tether.record.canonical import canonical_json
from tether.record.redaction import create_once


def load_signing_key(folder: Path, name: str = "ledger-signing.pem") -> Ed25519PrivateKey:
    """An Ed25519 key in `folder/name` (made once, mode 0600); for the ledger, $TETHER_LEDGER_SIGNING_KEY wins."""
    env = os.environ.get("TETHER_LEDGER_SIGNING_KEY") if name == "ledger-signing.pem" else None
    path = Path(env or folder / name)
    pem = create_once(path, lambda: Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError(f"{path}: not an Ed25519 private key")
    return key


def public_key_text(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


def make_manifest(export: bytes, entries: int, first: tuple[int, str] | None, last: tuple[int, str] | None,
                  key: Ed25519PrivateKey, exported_at: str) -> dict[str, Any]:  # fmt: skip
    body = {
        "format": "tether-ledger-manifest/1",
        "exported_at": exported_at,
        "file_sha256": hashlib.sha256(export).hexdigest(),
        "entries": entries,
        "first": {"seq": first[0], "hash": first[1]} if first else None,
        "last": {"seq": last[0], "hash": last[1]} if last else None,
        "public_key": public_key_text(key),
    }
    return {**body, "signature": base64.b64encode(key.sign(canonical_json(body))).decode()}


def check_manifest(manifest: dict[str, Any], export: bytes, pinned_key: str | None = None) -> None:
    """Raise LedgerError unless the manifest is signed, matches the export, and (if given) the pinned key."""
    try:
        body = {k: v for k, v in manifest.items() if k != "signature"}
        key_text = body["public_key"]
        if pinned_key is not None and key_text != pinned_key:
            raise LedgerError(f"manifest is signed by {key_text}, not the pinned key {pinned_key}")
        raw = base64.b64decode(key_text.removeprefix("ed25519:"), validate=True)
        Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(manifest["signature"], validate=True), canonical_json(body))
    except InvalidSignature:
        raise LedgerError("manifest signature does not verify (the manifest was changed)") from None
    except (KeyError, ValueError, TypeError) as e:
        raise LedgerError(f"not a tether ledger manifest ({e})") from None
    if hashlib.sha256(export).hexdigest() != body["file_sha256"]:
        raise LedgerError("export file does not match the manifest's SHA-256 (the export was changed or cut)")


def read_manifest(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LedgerError(f"{path}: manifest not found") from None
    except (ValueError, OSError) as e:
        raise LedgerError(f"{path}: not a manifest ({e})") from None
    if not isinstance(data, dict):
        raise LedgerError(f"{path}: not a manifest")
    return data
