"""The embedded vector store and the observation log, both in tether's database.

Vectors are float32 blobs in `memory_items`; a search loads the tenant's
namespace once into a numpy matrix (kept until the next add) and ranks by cosine
similarity. sqlite-vec would do this inside SQLite, but this Python's sqlite3
cannot load extensions, so the store does not depend on it. Searches are cached
per (tenant, namespace, query, k) until the namespace changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tether.record.db import Database, timestamp
from tether.record.tables import memory_items, observations


@dataclass(frozen=True)
class Hit:
    id: int
    text: str
    meta: dict[str, Any]
    score: float


class VectorStore:
    def __init__(self, db: Database, embedder: Any = None, *, cache_size: int = 2048) -> None:
        if embedder is None:
            from tether.memory.embed import HashingEmbedder

            embedder = HashingEmbedder()
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
        vectors = self.embedder.embed(list(texts))
        now = timestamp()
        ids = []
        with self.db.transaction() as conn:
            for text, meta, vec in zip(texts, metas, vectors, strict=True):
                res = conn.execute(memory_items.insert().values(
                    tenant=tenant, namespace=namespace, text=text, meta=meta, embedder=self.embedder.name,
                    vector=np.asarray(vec, dtype=np.float32).tobytes(), created_at=now))  # fmt: skip
                ids.append(int(res.inserted_primary_key[0]))
        self._forget(tenant, namespace)
        return ids

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
        import numpy as np

        ckey = (tenant, namespace, query, k)
        if ckey in self._results:
            self.hits += 1
            self._results.move_to_end(ckey)
            return self._results[ckey]
        self.misses += 1
        m, ids = self._matrix(tenant, namespace)
        if not ids:
            return []
        scores = m @ self.embedder.embed([query])[0]
        top = np.argsort(-scores)[:k]
        chosen = {ids[i]: float(scores[i]) for i in top}
        with self.db.read() as conn:
            rows = {r.id: r for r in conn.execute(sa.select(memory_items.c.id, memory_items.c.text, memory_items.c.meta)
                                                  .where(memory_items.c.id.in_(list(chosen))))}  # fmt: skip
        hits = [Hit(i, rows[i].text, dict(rows[i].meta), round(s, 6)) for i, s in chosen.items()]
        self._results[ckey] = hits
        if len(self._results) > self.cache_size:
            self._results.popitem(last=False)
        return hits

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


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
