"""Rate and volume limits, declared in a policy file under `limits:`.

    limits:
      - name: refunds_per_tenant
        tool: "payments.*"
        per: tenant            # tool | tenant | run
        rate: 10/minute        # N/second, N/minute or N/hour
        burst: 5               # bucket size (default: N)
      - name: export_rows
        tool: "crm.export"
        max_result_rows: 1000  # a result whose `rows` list is longer is withheld

Rate limits are token buckets. `RateLimiter` keeps them in one process;
`SharedRateLimiter` keeps them in the database, so every process on the same
store (workers on PostgreSQL, CLI runs on one SQLite file) draws from the same
buckets. A call over a limit is denied with the limit's name, before it runs.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tether.errors import PolicyError
from tether.record.db import RATE_LOCK, pg_lock
from tether.record.tables import rate_buckets

_PER_UNIT = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


@dataclass(frozen=True)
class Limit:
    name: str
    tool: str
    per: str = "tool"
    rate: float | None = None  # tokens per second
    burst: float | None = None
    max_result_rows: int | None = None
    rows_field: str = "rows"

    def applies(self, tool: str) -> bool:
        return fnmatch.fnmatchcase(tool, self.tool)


def parse_limits(items: Any, source: str, line: int) -> tuple[Limit, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise PolicyError(f"{source}:{line}: 'limits' must be a list")
    out = []
    for item in items:
        where = f"{source}:{getattr(item, 'line', line)}"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("tool"), str):
            raise PolicyError(f"{where}: each limit needs a name and a tool glob")
        unknown = set(item) - {"name", "tool", "per", "rate", "burst", "max_result_rows", "rows_field"}
        if unknown:
            raise PolicyError(f"{where}: limit {item['name']!r}: unknown key {sorted(unknown)[0]!r}")
        per = item.get("per", "tool")
        if per not in ("tool", "tenant", "run"):
            raise PolicyError(f"{where}: limit {item['name']!r}: per must be tool, tenant or run")
        rate = burst = None
        if "rate" in item:
            try:
                n, unit = str(item["rate"]).split("/")
                rate = float(n) / _PER_UNIT[unit.strip()]
                assert rate > 0
            except (ValueError, KeyError, AssertionError):
                raise PolicyError(f"{where}: limit {item['name']!r}: rate {item['rate']!r} is not like 10/minute") from None
            burst = float(item.get("burst", n))
        rows = item.get("max_result_rows")
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 0):
            raise PolicyError(f"{where}: limit {item['name']!r}: max_result_rows must be a whole number")
        if rate is None and rows is None:
            raise PolicyError(f"{where}: limit {item['name']!r} sets neither rate nor max_result_rows")
        out.append(Limit(item["name"], item["tool"], per, rate, burst, rows, str(item.get("rows_field", "rows"))))
    return tuple(out)


Bucket = tuple[str, str]  # (limit name, key)


def _buckets(limits: tuple[Limit, ...], tool: str, tenant: str, run_id: str) -> list[tuple[Limit, Bucket]]:
    out = []
    for lim in limits:
        if lim.rate is None or not lim.applies(tool):
            continue
        key = {"tool": tool, "tenant": f"{tenant}|{tool}", "run": f"{run_id}|{tool}"}[lim.per]
        out.append((lim, (lim.name, key)))
    return out


def _draw(
    wanted: list[tuple[Limit, Bucket]], held: dict[Bucket, tuple[float, float]], now: float
) -> tuple[str | None, dict[Bucket, float]]:
    """(the limit that is empty, or None; the new levels). All buckets or none are drawn from."""
    levels = {}
    for lim, k in wanted:
        tokens, at = held.get(k, (lim.burst or 1.0, now))
        tokens = min(lim.burst or 1.0, tokens + max(0.0, now - at) * (lim.rate or 0))
        if tokens < 1.0:
            return lim.name, {}
        levels[k] = tokens - 1.0
    return None, levels


class RateLimiter:
    """Token buckets by (limit, key) in this process; thread-safe."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[Bucket, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, limits: tuple[Limit, ...], tool: str, tenant: str, run_id: str) -> str | None:
        """None when the call may go; else the name of the limit it would break (nothing is taken then)."""
        wanted = _buckets(limits, tool, tenant, run_id)
        if not wanted:
            return None
        with self._lock:
            now = self._clock()
            broken, levels = _draw(wanted, self._buckets, now)
            for k, tokens in levels.items():
                self._buckets[k] = (tokens, now)
        return broken


class SharedRateLimiter:
    """Token buckets in the database, drawn from in one write transaction, so processes share them.

    Wall-clock time, as processes share no monotonic clock; a clock stepping back
    refills nothing."""

    def __init__(self, db: Any, clock: Any = time.time) -> None:  # tether.record.db.Database
        self.db = db
        self._clock = clock

    def take(self, limits: tuple[Limit, ...], tool: str, tenant: str, run_id: str) -> str | None:
        t = rate_buckets
        wanted = _buckets(limits, tool, tenant, run_id)
        if not wanted:
            return None
        with self.db.transaction() as conn:
            pg_lock(conn, RATE_LOCK)  # the first take of a bucket inserts it
            now = self._clock()
            where = sa.or_(*(sa.and_(t.c.limit_name == n, t.c.key == k) for _, (n, k) in wanted))
            rows = conn.execute(sa.select(t).where(where).with_for_update()).all()
            held = {(r.limit_name, r.key): (r.tokens, r.updated_at) for r in rows}
            broken, levels = _draw(wanted, held, now)
            for (name, key), tokens in levels.items():
                if (name, key) in held:
                    conn.execute(t.update().where(t.c.limit_name == name, t.c.key == key)
                                 .values(tokens=tokens, updated_at=now))  # fmt: skip
                else:  # a race to create it fails this transaction on the primary key; nothing is drawn
                    conn.execute(t.insert().values(limit_name=name, key=key, tokens=tokens, updated_at=now))
        return broken


def result_too_big(limits: tuple[Limit, ...], tool: str, output: Any) -> str | None:
    for lim in limits:
        if lim.max_result_rows is None or not lim.applies(tool) or not isinstance(output, dict):
            continue
        rows = output.get(lim.rows_field)
        if isinstance(rows, list) and len(rows) > lim.max_result_rows:
            return f"limit {lim.name}: result has {len(rows)} rows, more than {lim.max_result_rows}"
    return None
