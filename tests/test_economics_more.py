"""pgvector memory, cache hit rates across processes, retention of the economics stores,
per-action budgets, and the cost ceiling recorded with the run."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from _flows import POLICY, Job, World
from tether import End, Runtime, Workflow
from tether.cli import cli
from tether.errors import TetherError
from tether.memory.store import ObservationLog, VectorStore
from tether.memory.tool import retrieval_tool
from tether.orchestration.replay import replay
from tether.record.db import Database

CORPUS = [
    ("Cards arrive within 5 working days of ordering", {"doc": "card-arrival"}),
    ("Top up by bank transfer, debit card or Apple Pay", {"doc": "top-up"}),
    ("Refunds take up to 5 days to appear on your statement", {"doc": "refunds"}),
    ("Freeze a lost card in the app under Card settings", {"doc": "lost-card"}),
    ("Exchange rates are set by the market when you pay abroad", {"doc": "fx"}),
    ("A declined payment may mean the merchant blocked the card", {"doc": "declined"}),
    ("Change your PIN at any cash machine of our network", {"doc": "pin"}),
    ("Verify your identity with a passport photo and a selfie", {"doc": "kyc"}),
]
QUERIES = ["when will my new card arrive", "how do I top up", "my refund is missing", "I lost my card",
           "what exchange rate do you use", "why was my payment declined", "change pin", "identity check"]


def _fill(store: VectorStore) -> None:
    store.add("acme", "kb", [t for t, _ in CORPUS], [m for _, m in CORPUS])
    store.add("globex", "kb", ["Globex: cards arrive by owl post", "Globex: top up with gold coins"])
    store.add("acme", "faq", ["Cards arrive by drone in the faq namespace"])


def _ranked(store: VectorStore, tenant: str = "acme", ns: str = "kb", k: int = 4) -> list[list[tuple[int, float]]]:
    return [[(h.id, h.score) for h in store.search(tenant, ns, q, k)] for q in QUERIES]


def test_pgvector_ranks_in_sql_like_numpy(pgvector_url: str) -> None:
    db = Database(pgvector_url)
    pg = VectorStore(db)
    assert pg.backend == "pgvector"
    _fill(pg)
    with db.read() as conn:  # the vectors are in the vector column, one per item
        assert conn.exec_driver_sql("SELECT count(*), min(vector_dims(embedding)) FROM memory_vectors").one() == (11, 4096)
    numpy = VectorStore(db, backend="numpy")  # the same rows, ranked in the process
    got, want = _ranked(pg), _ranked(numpy)
    assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want]
    assert all(abs(a[1] - b[1]) < 1e-4 for ra, rb in zip(got, want, strict=True) for a, b in zip(ra, rb, strict=True))
    assert pg.search("acme", "kb", QUERIES[0], 1)[0].meta == {"doc": "card-arrival"}
    # Tenant and namespace isolation, in SQL: globex's and the faq's items never come back.
    every = [h.text for q in QUERIES + ["cards arrive by owl post", "drone"] for h in pg.search("acme", "kb", q, 20)]
    assert len(set(every)) == len(CORPUS) and not any("Globex" in t or "drone" in t for t in every)
    assert {h.text for h in pg.search("globex", "kb", "cards arrive", 20)} == {"Globex: cards arrive by owl post",
                                                                              "Globex: top up with gold coins"}
    assert pg.search("initech", "kb", "cards", 5) == []
    db.dispose()


def test_numpy_store_on_sqlite_matches_pgvector(db: Database, pgvector_url: str) -> None:
    lite, pgdb = VectorStore(db), Database(pgvector_url)
    pg = VectorStore(pgdb)
    assert (lite.backend, pg.backend) == ("numpy", "pgvector")
    _fill(lite)
    _fill(pg)
    assert [[i for i, _ in r] for r in _ranked(lite, k=8)] == [[i for i, _ in r] for r in _ranked(pg, k=8)]
    pgdb.dispose()


def test_postgresql_without_pgvector_keeps_the_numpy_path(pg_url: str, db: Database) -> None:
    pgdb = Database(pg_url)  # the machine's PostgreSQL 15: no vector extension
    store = VectorStore(pgdb)
    assert store.backend == "numpy" and VectorStore(db).backend == "numpy"
    _fill(store)
    assert store.search("acme", "kb", "I lost my card", 1)[0].meta == {"doc": "lost-card"}
    with pytest.raises(TetherError, match="no pgvector in"):
        VectorStore(pgdb, backend="pgvector")
    with pytest.raises(TetherError, match="backend must be one of auto, numpy, pgvector"):
        VectorStore(db, backend="faiss")
    pgdb.dispose()


def test_retrieval_tool_end_to_end_on_pgvector(pgvector_url: str) -> None:
    db = Database(pgvector_url)
    store = VectorStore(db)
    store.add("acme", "kb", ["Refunds take up to 5 days", "Cards arrive within a week"])
    store.add("globex", "kb", ["Globex refunds take a month"])
    log = ObservationLog(db)
    wf: Workflow[Job, World] = Workflow("kb_lookup_pg", input=Job, tools=[retrieval_tool(store, log=log)], policy=POLICY,
                                        deps=lambda db: World())  # fmt: skip

    @wf.state(initial=True, goes_to=[])
    def look(run: Any) -> Any:
        r = run.call("memory.search", {"query": "how long do refunds take", "k": 5})
        return End("completed", json.dumps([h["text"] for h in r.output["hits"]]))

    r = Runtime(db).start(wf, {}, tenant="acme")
    assert r.status == "completed"
    assert json.loads(r.outcome or "") == ["Refunds take up to 5 days", "Cards arrive within a week"]
    assert [o["data"]["query"] for o in log.read("acme", run_id=r.run_id)] == ["how long do refunds take"]
    before = store.hits + store.misses
    assert replay(db, r.run_id, workflow=wf).same and store.hits + store.misses == before
    db.dispose()
