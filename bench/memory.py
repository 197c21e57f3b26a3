"""Vector store search: per-query cost of the numpy backend against pgvector, same rows.

    .venv/bin/python bench/memory.py [--items 2000] [--queries 300]

Both stores sit on one throwaway PostgreSQL with pgvector (the machine's, else the
build in the `pgserver` wheel), over `--items` Banking77 messages of one tenant
(plus as many of another tenant, which no search may return), embedded by the
offline hashing embedder (4,096 dimensions). pgvector ranks in SQL with `<=>`,
an exact scan (no HNSW/IVFFlat index: those stop at 2,000 dimensions and are
approximate, and the backends are meant to agree). numpy loads the tenant's
namespace once per store (timed apart: it is paid again after each add) and ranks in
the process. The result cache is off (every query distinct), so each search is
a real one. Also checks the two agree on ids and order.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from pgtemp import TempPostgres, find_pgvector_bin  # noqa: E402

from tether.memory.store import VectorStore  # noqa: E402
from tether.record.db import Database  # noqa: E402
from tether.workflows.triage import data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=300)
    a = ap.parse_args()
    found = find_pgvector_bin()
    if found is None:
        sys.exit("no PostgreSQL with pgvector (install the test extra: pgserver)")
    texts = list(dict.fromkeys(e.text for e in data.examples()))
    corpus, queries = texts[: a.items], texts[-a.queries :]
    pg = TempPostgres(found).start()
    try:
        db = Database(pg.create_db("bench"))
        vec = VectorStore(db, cache_size=0)
        t = time.perf_counter()
        vec.add("acme", "kb", corpus)
        vec.add("globex", "kb", texts[a.items : 2 * a.items])
        add_s = time.perf_counter() - t
        vec.embedder.embed(queries)  # both stores share the embedder: time ranking, not embedding
        num = VectorStore(db, vec.embedder, cache_size=0, backend="numpy")
        t = time.perf_counter()
        num._matrix("acme", "kb")
        load_s = time.perf_counter() - t
        results = {}
        for name, store in (("numpy", num), ("pgvector", vec)):
            store.search("acme", "kb", "warm up", 5)
            got, times = [], []
            for q in queries:
                t = time.perf_counter()
                got.append([h.id for h in store.search("acme", "kb", q, 5)])
                times.append(time.perf_counter() - t)
            results[name] = got
            results[name + "_s"] = statistics.median(times)  # the median: 2 shared cores make the mean jumpy
        same = sum(x == y for x, y in zip(results["numpy"], results["pgvector"], strict=True))
        print(f"corpus {a.items} items/tenant x 2 tenants, 4096-dim hashing embeddings, {a.queries} queries, k=5")
        print(f"add (embed + insert both, pgvector backend): {add_s * 1000 / (2 * a.items):.3f} ms/item")
        print(f"numpy    per query (median): {results['numpy_s'] * 1000:.3f} ms  (+ {load_s * 1000:.1f} ms to load the namespace once)")
        print(f"pgvector per query (median): {results['pgvector_s'] * 1000:.3f} ms  (exact scan in SQL, nothing loaded)")
        print(f"ratio pgvector/numpy: {results['pgvector_s'] / results['numpy_s']:.1f}x; same ids and order: {same}/{len(queries)}")
        db.dispose()
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
