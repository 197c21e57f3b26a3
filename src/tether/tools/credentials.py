"""Transaction-scoped credentials: one signed token per authorised call.

The proxy mints a JWT (EdDSA, with PyJWT) bound to one tool, one target object,
one run, step and call, expiring within minutes (at most an hour), and hands it
to the tool. The tool checks it before acting: signature, expiry, that it names
this tool and this object, and that it was never used before (each token id is
recorded once). A tool service elsewhere needs only the public key.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.errors import ToolError
from tether.record.db import Database, timestamp
from tether.record.signing import load_signing_key
from tether.record.tables import used_credentials

MAX_TTL_S = 3600
DEFAULT_TTL_S = 300
_ISSUER = "tether"


class CredentialError(ToolError):
    """A credential that must be refused (expired, replayed, altered, for another tool or object)."""


class Credentials:
    def __init__(self, db: Database, key: Ed25519PrivateKey | None = None, ttl_s: int = DEFAULT_TTL_S) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"credential lifetime must be 1 to {MAX_TTL_S} seconds")
        self.db = db
        self.ttl_s = ttl_s
        self._key = key or _credential_key(db.key_folder)
        self.public_key = self._key.public_key()

    def mint(self, *, tool: str, target: str, run_id: str, step: int, call_id: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims = {"iss": _ISSUER, "sub": f"{run_id}/{step}/{call_id}", "tool": tool, "target": target, "run": run_id,
                  "step": step, "call": call_id, "jti": secrets.token_hex(16), "iat": int(now), "exp": int(now) + self.ttl_s}  # fmt: skip
        return jwt.encode(claims, self._key, algorithm="EdDSA")

    def verify(self, token: str | None, *, tool: str, target: str, consume: bool = True) -> dict[str, Any]:
        if not token:
            raise CredentialError(f"{tool}: no credential was issued for this call")
        try:
            claims = jwt.decode(token, self.public_key, algorithms=["EdDSA"], issuer=_ISSUER,
                                options={"require": ["exp", "iat", "jti", "tool", "target"]})  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise CredentialError(f"{tool}: credential expired") from None
        except jwt.InvalidTokenError as e:
            raise CredentialError(f"{tool}: credential refused ({e})") from None
        if claims["exp"] - claims["iat"] > MAX_TTL_S:
            raise CredentialError(f"{tool}: credential lives longer than {MAX_TTL_S} s")
        if claims["tool"] != tool:
            raise CredentialError(f"{tool}: credential is for {claims['tool']}, not this tool")
        if claims["target"] != target:
            raise CredentialError(f"{tool}: credential is for object {claims['target']!r}, not {target!r}")
        if consume:
            try:
                with self.db.transaction() as conn:
                    conn.execute(used_credentials.insert().values(jti=claims["jti"], tool=tool, used_at=timestamp()))
            except sa.exc.IntegrityError:
                raise CredentialError(f"{tool}: credential already used (replayed)") from None
        return claims


def _credential_key(folder: Path) -> Ed25519PrivateKey:
    env = os.environ.get("TETHER_CREDENTIAL_KEY")
    return load_signing_key(Path(env).parent if env else folder, name=Path(env).name if env else "credentials.pem")
