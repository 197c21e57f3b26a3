"""The vector store and the observation log, both in tether's database.

Two backends, one result (same ids, same order; ties go to the older item):
- `pgvector`, on PostgreSQL when the `vector` extension could be created (migration
  0010 makes the `memory_vectors` side table then): vectors live in a `vector`
  column and the database ranks them with the cosine operator `<=>`, filtered to
  the tenant's namespace, so nothing is loaded into the process;
- `numpy` everywhere else (SQLite, the embedded default, or PostgreSQL without
  pgvector): vectors are float32 blobs in `memory_items`; a search loads the
  tenant's namespace once into a numpy matrix (kept until the next add) and ranks by
  cosine similarity. sqlite-vec would do this inside SQLite, but this Python's
  sqlite3 cannot load extensions, so the store does not depend on it.
Both shortlist k+8 and re-score those in float64 (float32 sums differ between numpy
and pgvector in the 7th digit, which would swap near-ties), so they agree.
`VectorStore.backend` says which is in use. The blob is always written, so either
backend can serve the same rows. Searches are cached per (tenant, namespace,
query, k) until the namespace changes; hits and misses count in `cache_stats`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tether.errors import TetherError
from tether.record.cachestats import counter
from tether.record.db import Database, pgvector_ready, timestamp
from tether.record.tables import memory_items, observations

BACKENDS = ("auto", "numpy", "pgvector")
_SLACK = 8  # candidates past k that both backends re-score, so float noise cannot reorder near-ties


def _vector_text(vec: Any) -> str:
    # float32 -> Python float is exact, and pgvector parses it back to the same float32.
    return "[" + ",".join(repr(x) for x in vec.tolist()) + "]"


@dataclass(frozen=True)
class Hit:
    id: int
    text: str
    meta: dict[str, Any]
    score: float


class VectorStore:
    def __init__(self, db: Database, embedder: Any = None, *, cache_size: int = 2048, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise TetherError(f"vector store backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if embedder is None:  # $TETHER_EMBEDDINGS, else the offline hashing embedder
            from tether.memory.embed import embedder_from_env

            embedder = embedder_from_env()
        ready = pgvector_ready(db)
        if backend == "pgvector" and not ready:
            raise TetherError(f"no pgvector in {db.label}: it needs PostgreSQL with the vector extension (see README)")
        # numpy on a pgvector database still works (the blobs are there); pgvector writes both.
        self.backend = "pgvector" if ready and backend != "numpy" else "numpy"
        self._pg_write = ready
        self._counter = counter(db, "retrieval")
        self._embed_counter = counter(db, "embedding")
        self.db = db
        self.embedder = embedder
        self._matrices: dict[tuple[str, str], tuple[Any, list[int]]] = {}
        self._results: OrderedDict[tuple[str, str, str, int], list[Hit]] = OrderedDict()
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0

    def add(self, tenant: str, namespace: str, texts: Sequence[str], metas: Sequence[dict[str, Any]] | None = None) -> list[int]:
        import numpy as np

        metas = list(metas) if metas is not None else [{} for _ in texts]
        if len(metas) != len(texts):
            raise ValueError("one meta per text")
        vectors = self._embed(list(texts))
        now = timestamp()
        ids = []
        with self.db.transaction() as conn:
            for text, meta, vec in zip(texts, metas, vectors, strict=True):
                res = conn.execute(memory_items.insert().values(
                    tenant=tenant, namespace=namespace, text=text, meta=meta, embedder=self.embedder.name,
                    vector=np.asarray(vec, dtype=np.float32).tobytes(), created_at=now))  # fmt: skip
                ids.append(int(res.inserted_primary_key[0]))
                if self._pg_write:
                    conn.execute(sa.text("INSERT INTO memory_vectors (item_id, embedding) VALUES (:i, CAST(:v AS vector))"),
                                 {"i": ids[-1], "v": _vector_text(np.asarray(vec, dtype=np.float32))})  # fmt: skip
        self._forget(tenant, namespace)
        return ids

    def _embed(self, texts: list[str]) -> Any:
        """The embedder's vectors; its cache's hits and misses go to the shared counts (when it keeps any)."""
        before = (getattr(self.embedder, "hits", None), getattr(self.embedder, "misses", None))
        out = self.embedder.embed(texts)
        if isinstance(before[0], int) and isinstance(before[1], int):
            self._embed_counter.add(self.embedder.hits - before[0], self.embedder.misses - before[1])
        return out

    def _forget(self, tenant: str, namespace: str) -> None:
        self._matrices.pop((tenant, namespace), None)
        for key in [k for k in self._results if k[:2] == (tenant, namespace)]:
            del self._results[key]

    def _matrix(self, tenant: str, namespace: str) -> tuple[Any, list[int]]:
        import numpy as np

        key = (tenant, namespace)
        if key not in self._matrices:
            with self.db.read() as conn:
                rows = conn.execute(sa.select(memory_items.c.id, memory_items.c.vector).where(
                    memory_items.c.tenant == tenant, memory_items.c.namespace == namespace,
                    memory_items.c.embedder == self.embedder.name).order_by(memory_items.c.id)).all()  # fmt: skip
            m = np.vstack([np.frombuffer(r.vector, dtype=np.float32) for r in rows]) if rows else np.zeros((0, 1), np.float32)
            self._matrices[key] = (m, [r.id for r in rows])
        return self._matrices[key]

    def search(self, tenant: str, namespace: str, query: str, k: int = 5) -> list[Hit]:
        """The k items of this tenant's namespace nearest to `query` (never another tenant's)."""
        ckey = (tenant, namespace, query, k)
        if ckey in self._results:
            cached = self._results[ckey]
            if self._alive(tenant, namespace, [h.id for h in cached]):
                self.hits += 1
                self._counter.hit()
                self._results.move_to_end(ckey)
                return cached
            self._forget(tenant, namespace)  # items deleted elsewhere (a purge): never answer from them
        self.misses += 1
        self._counter.miss()
        if self.backend == "pgvector":
            hits = self._search_pg(tenant, namespace, query, k)
        else:
            hits = self._search_numpy(tenant, namespace, query, k)
        self._results[ckey] = hits
        if len(self._results) > self.cache_size:
            self._results.popitem(last=False)
        return hits

    def _search_pg(self, tenant: str, namespace: str, query: str, k: int) -> list[Hit]:
        qvec = self._embed([query])[0]
        sql = sa.text(
            "SELECT m.id FROM memory_items m JOIN memory_vectors v ON v.item_id = m.id"
            " WHERE m.tenant = :tenant AND m.namespace = :ns AND m.embedder = :embedder"
            " ORDER BY v.embedding <=> CAST(:q AS vector), m.id LIMIT :n"
        )
        params = {"q": _vector_text(qvec), "tenant": tenant, "ns": namespace, "embedder": self.embedder.name, "n": k + _SLACK}
        with self.db.read() as conn:
            return self._hits(conn, tenant, namespace, list(conn.execute(sql, params).scalars()), qvec, k)[0]

    def _search_numpy(self, tenant: str, namespace: str, query: str, k: int) -> list[Hit]:
        import numpy as np

        qvec = self._embed([query])[0]
        for _ in range(2):
            m, ids = self._matrix(tenant, namespace)
            if not ids:
                return []
            top = np.argsort(-(m @ qvec), kind="stable")[: k + _SLACK]
            with self.db.read() as conn:
                hits, complete = self._hits(conn, tenant, namespace, [ids[i] for i in top], qvec, k, {ids[i]: m[i] for i in top})
            if complete:
                break
            self._forget(tenant, namespace)  # the matrix holds items deleted elsewhere: load it again
        return hits

    def _alive(self, tenant: str, namespace: str, item_ids: list[int]) -> bool:
        """Whether every one of these items is still stored in this namespace (a purge in another
        process deletes them; ids are never reused, migration 0012, so an id stays its item's)."""
        if not item_ids:
            return True
        with self.db.read() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(memory_items).where(
                memory_items.c.id.in_(item_ids), *self._scope(tenant, namespace))).scalar()  # fmt: skip
        return n == len(set(item_ids))

    def _scope(self, tenant: str, namespace: str) -> list[Any]:
        c = memory_items.c
        return [c.tenant == tenant, c.namespace == namespace, c.embedder == self.embedder.name]

    def _hits(self, conn: sa.Connection, tenant: str, namespace: str, candidates: list[int], qvec: Any, k: int,
              vectors: dict[int, Any] | None = None) -> tuple[list[Hit], bool]:  # fmt: skip
        """The k best of the shortlist, scored once more in float64 and ties to the older item,
        and whether every candidate is still stored (a purge elsewhere deletes items).
        float32 sums differ between numpy and pgvector in the 7th digit; this way both
        backends give the same ids in the same order."""
        import numpy as np

        if not candidates:
            return [], True
        cols = [memory_items.c.id, memory_items.c.text, memory_items.c.meta]
        rows = conn.execute(sa.select(*cols, *([] if vectors else [memory_items.c.vector]))
                            .where(memory_items.c.id.in_(candidates), *self._scope(tenant, namespace))).all()  # fmt: skip
        vectors = vectors or {r.id: np.frombuffer(r.vector, dtype=np.float32) for r in rows}
        q64 = np.asarray(qvec, dtype=np.float64)
        scored = sorted(((float(vectors[r.id].astype(np.float64) @ q64), r) for r in rows), key=lambda x: (-x[0], x[1].id))
        return [Hit(r.id, r.text, _json(r.meta), round(s, 6)) for s, r in scored[:k]], len(rows) == len(set(candidates))

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


def _json(value: Any) -> dict[str, Any]:
    import json

    return dict(json.loads(value)) if isinstance(value, str) else dict(value or {})


class ObservationLog:
    """What the agent saw, append-only: there is no update or delete here (retention aside).
    String values are redacted before they are written, like every other store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, tenant: str, kind: str, data: dict[str, Any], run_id: str | None = None) -> int:
        red = self.db.redactor
        clean = {k: red.text(v) if isinstance(v, str) else v for k, v in data.items()}
        with self.db.transaction() as conn:
            res = conn.execute(observations.insert().values(tenant=tenant, run_id=run_id, kind=kind, data=clean, created_at=timestamp()))
        return int(res.inserted_primary_key[0])

    def read(self, tenant: str, *, run_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(observations).where(observations.c.tenant == tenant).order_by(observations.c.seq)
        if run_id is not None:
            q = q.where(observations.c.run_id == run_id)
        if kind is not None:
            q = q.where(observations.c.kind == kind)
        with self.db.read() as conn:
            return [{"seq": r.seq, "run_id": r.run_id, "kind": r.kind, "data": r.data, "created_at": r.created_at} for r in conn.execute(q)]
