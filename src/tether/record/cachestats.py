"""Hit and miss counts of tether's caches, kept in the database so `tether metrics`
reports hit rates over every process that used it, not just its own.

Caches: `answer` (repeated questions), `embedding` (texts already embedded) and
`retrieval` (searches already made). A write per lookup would cost more than an
embedding-cache hit saves, so counts are added up in memory and written in
batches: every `every` lookups, once `max_age_s` has passed since the last write,
and when the process exits. A process that is killed loses at most one batch.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import threading
import time
import weakref
from typing import Any

import sqlalchemy as sa

from tether.record.tables import cache_stats

CACHES = ("answer", "embedding", "retrieval")
log = logging.getLogger(__name__)
_live: weakref.WeakSet[CacheCounter] = weakref.WeakSet()


class CacheCounter:
    def __init__(self, db: Any, cache: str, *, every: int = 200, max_age_s: float = 2.0) -> None:
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)}, got {cache!r}")
        self.db = db
        self.cache = cache
        self.every = every
        self.max_age_s = max_age_s
        self._hits = self._misses = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()
        _live.add(self)

    def hit(self, n: int = 1) -> None:
        self.add(n, 0)

    def miss(self, n: int = 1) -> None:
        self.add(0, n)

    def add(self, hits: int, misses: int) -> None:
        """Count lookups (negative numbers correct an earlier count, e.g. a hit that could not be used)."""
        with self._lock:
            self._hits += hits
            self._misses += misses
            due = abs(self._hits) + abs(self._misses) >= self.every or time.monotonic() - self._last >= self.max_age_s
        if due:
            try:
                self.flush()
            except sa.exc.SQLAlchemyError as e:  # counting must not fail the lookup it counts; kept for the next try
                log.warning("could not write %s cache counts: %s", self.cache, str(e).splitlines()[0])

    def flush(self) -> None:
        with self._lock:
            hits, misses = self._hits, self._misses
            self._hits = self._misses = 0
            self._last = time.monotonic()
        if not (hits or misses):
            return
        try:
            with self.db.transaction() as conn:
                add(conn, self.cache, hits, misses)
        except BaseException:
            with self._lock:
                self._hits += hits
                self._misses += misses
            raise


def add(conn: sa.Connection, cache: str, hits: int, misses: int, day: str | None = None) -> None:
    day = day or dt.datetime.now(dt.UTC).date().isoformat()
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    q = insert(cache_stats).values(cache=cache, day=day, hits=hits, misses=misses)
    conn.execute(q.on_conflict_do_update(index_elements=["cache", "day"],
                                         set_={"hits": cache_stats.c.hits + hits, "misses": cache_stats.c.misses + misses}))  # fmt: skip


def counter(db: Any, cache: str) -> CacheCounter:
    return CacheCounter(db, cache)


def rates(conn: sa.Connection, since: str | None = None) -> dict[str, dict[str, Any]]:
    """Per cache: hits, misses and hit rate, over all days (or since a day)."""
    q = sa.select(cache_stats.c.cache, sa.func.sum(cache_stats.c.hits), sa.func.sum(cache_stats.c.misses)).group_by(cache_stats.c.cache)
    if since:
        q = q.where(cache_stats.c.day >= since)
    found = {c: (int(h or 0), int(m or 0)) for c, h, m in conn.execute(q)}
    out = {}
    for cache in CACHES:
        h, m = found.get(cache, (0, 0))
        out[cache] = {"hits": h, "misses": m, "hit_rate": round(h / (h + m), 4) if h + m else 0.0}
    return out


@atexit.register
def flush_all() -> None:
    """Write what every live counter still holds (at exit; tests and benches may call it)."""
    for c in list(_live):
        try:
            c.flush()
        except Exception:  # noqa: BLE001 - at exit the database may be gone; counts are best effort
            pass
