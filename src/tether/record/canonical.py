"""Canonical JSON (RFC 8785, JCS) and the hashes built on it.

The ledger hashes canonical bytes so an auditor can recompute every hash in any
language that implements JCS.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pydantic_core
import rfc8785
from pydantic import BaseModel


def to_jsonable(value: Any) -> Any:
    """Plain JSON types only (pydantic models dumped in JSON mode)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def plain_json(value: Any) -> Any:
    """`value` as plain JSON (datetimes and decimals as text, models dumped), or ValueError /
    TypeError for what JSON cannot hold (NaN, infinities, arbitrary objects)."""
    try:
        out = pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as e:
        raise TypeError(str(e)) from None
    json.dumps(out, allow_nan=False)
    return out


def canonical_json(value: Any) -> bytes:
    return rfc8785.dumps(to_jsonable(value))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(value: Any) -> str:
    """SHA-256 of a value's canonical JSON."""
    return sha256_hex(canonical_json(value))
