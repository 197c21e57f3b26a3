"""Who is who: names compared as a person would read them (Unicode TR39 confusable skeletons).

`principal(name)` refuses a name that hides characters (controls, format characters,
default-ignorable code points such as U+FE0F, U+034F or the Hangul filler U+3164).
`skeleton(name)` is what two names are compared by: NFKC, case-folded, then ICU's TR39
skeleton (Cyrillic `а` reads as Latin `a`, `ｍ` as `m`, `rn` as `m`): `alice` and `аlice`
are one person to segregation of duties, and a key of a name confusable with an existing
principal is refused at creation.

ICU comes from PyICU (the `icu` extra, in the test extra). Without it, fail closed: a name
outside printable ASCII is refused, since it could not be compared safely.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

from tether.errors import ApprovalConflict, ApprovalError

_INVISIBLE = ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")


@functools.lru_cache(maxsize=1)
def _icu() -> Any:
    try:
        import icu
    except ImportError:
        return None
    return icu


@functools.lru_cache(maxsize=1)
def _checker() -> Any:
    return _icu().SpoofChecker()


def _ignorable(c: str) -> bool:
    icu = _icu()
    return bool(icu.Char.hasBinaryProperty(c, icu.UProperty.DEFAULT_IGNORABLE_CODE_POINT))


def principal(name: str) -> str:
    """A person's or component's name as given, refused when it could pass for someone else."""
    cleaned = name.strip()
    if not cleaned:
        raise ApprovalError("a name is required (--as USER)")
    if len(cleaned) > 200:
        raise ApprovalError("a name is at most 200 characters")
    icu = _icu()
    hidden = [c for c in cleaned if unicodedata.category(c) in _INVISIBLE or (icu is not None and _ignorable(c))]
    if hidden:
        raise ApprovalError(f"name {cleaned!r} contains invisible or control characters (U+{ord(hidden[0]):04X})")
    if icu is None and not (cleaned.isascii() and cleaned.isprintable()):
        raise ApprovalError(f"name {cleaned!r} is not plain ASCII; comparing other names safely needs ICU "
                            "(pip install 'tether[icu]')")  # fmt: skip
    return cleaned


@functools.lru_cache(maxsize=4096)
def skeleton(name: str) -> str:
    """What `name` looks like: equal skeletons are the same principal."""
    folded = unicodedata.normalize("NFKC", name).casefold().strip()
    if _icu() is None:
        return folded  # only ASCII names get this far (principal refuses the others)
    return unicodedata.normalize("NFKC", _checker().getSkeleton(0, folded)).casefold()


def same_principal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and skeleton(a) == skeleton(b)


def refuse_look_alike(conn: Any, name: str) -> None:
    """Refuse a new key or approver whose name reads like another principal's (`bob` and `bоb`)."""
    import sqlalchemy as sa

    from tether.record.tables import api_keys, approvers

    known = {*conn.execute(sa.select(api_keys.c.name)).scalars(), *conn.execute(sa.select(approvers.c.name)).scalars()}
    twin = next((k for k in sorted(known) if k != name and same_principal(k, name)), None)
    if twin is not None:
        raise ApprovalConflict(f"name {name!r} looks like the existing principal {twin!r}; pick a name no one can mistake")
