"""API keys for the control plane: created once, stored hashed, each with one role.

Roles: operator (runs, rollout, kill switch), approver (the approval inbox, for a
tool family such as `payments.*`), auditor (read-only: ledger, exports, policies,
evals, costs), admin (everything). The key's name is the person it stands for:
approvals decided with it are decided by that name, under the same segregation of
duties as `tether approvals approve --as NAME`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from tether.errors import AccessDenied, TetherError
from tether.guardrails.identity import principal, refuse_look_alike
from tether.record import ledger
from tether.record.db import Database, timestamp
from tether.record.tables import api_keys

ROLES = ("operator", "approver", "auditor", "admin")
PREFIX = "tth_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    role: str
    scope: str | None
    created_at: str
    revoked_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, *, name: str, role: str, tools: str | None = None) -> tuple[str, ApiKey]:
    """A new key (returned once, never stored) and its record. Ledgered without the key."""
    name = principal(name)
    if role not in ROLES:
        raise TetherError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    if role == "approver" and not (tools and tools.strip()):
        raise TetherError("an approver key needs the tool family it may decide: --tools 'payments.*'")
    if role != "approver" and tools:
        raise TetherError(f"--tools scopes approver keys only, not {role}")
    key_id = "key_" + secrets.token_hex(6)
    key = f"{PREFIX}{key_id.removeprefix('key_')}_{secrets.token_urlsafe(32)}"
    rec = ApiKey(key_id, name, role, tools.strip() if tools else None, timestamp())
    with db.transaction() as conn:
        refuse_look_alike(conn, name)
        conn.execute(api_keys.insert().values(id=rec.id, name=rec.name, role=rec.role, scope=rec.scope,
                                              key_hash=_hash(key), created_at=rec.created_at))  # fmt: skip
        ledger.append(conn, "api_key_created", {"key_id": rec.id, "name": rec.name, "role": rec.role, "scope": rec.scope})
    return key, rec


def authenticate(db: Database, key: str | None) -> ApiKey:
    """The key's record, or AccessDenied saying what was wrong (never which part of a key matched)."""
    if not key:
        raise AccessDenied("an API key is required (Authorization: Bearer KEY; create one with `tether keys create`)")
    parts = key.removeprefix(PREFIX).split("_", 1)
    if not key.startswith(PREFIX) or len(parts) != 2 or len(key) > 200:
        raise AccessDenied("malformed API key (keys look like tth_…)")
    with db.read() as conn:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == "key_" + parts[0])).first()
    # Compare in constant time even when no row matched, so timing does not tell ids apart.
    if not hmac.compare_digest(row.key_hash if row else "0" * 64, _hash(key)) or row is None:
        raise AccessDenied("unknown API key")
    if row.revoked_at:
        raise AccessDenied(f"API key {row.id} was revoked at {row.revoked_at[:19]}")
    return ApiKey(row.id, row.name, row.role, row.scope, row.created_at, row.revoked_at)


def list_keys(db: Database) -> list[ApiKey]:
    with db.read() as conn:
        rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).all()
    return [ApiKey(r.id, r.name, r.role, r.scope, r.created_at, r.revoked_at) for r in rows]


def revoke(db: Database, key_id: str) -> ApiKey:
    with db.transaction() as conn:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise TetherError(f"no API key with id {key_id!r}")
        if row.revoked_at:
            raise TetherError(f"API key {key_id} is already revoked")
        now = timestamp()
        conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=now))
        ledger.append(conn, "api_key_revoked", {"key_id": key_id, "name": row.name, "role": row.role})
    return ApiKey(row.id, row.name, row.role, row.scope, row.created_at, now)
