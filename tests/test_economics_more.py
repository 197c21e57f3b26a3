"""pgvector memory, cache hit rates across processes, retention of the economics stores,
per-action budgets, and the cost ceiling recorded with the run."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from _flows import POLICY, Job, World, ask_refund_ask
from click.testing import CliRunner

from tether import End, Runtime, Workflow
from tether.cli import cli
from tether.errors import TetherError
from tether.memory.store import ObservationLog, VectorStore
from tether.orchestration.replay import replay
from tether.record.db import Database
from tether.tools.retrieval import retrieval_tool

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
    from tether.record.cachestats import flush_all, rates

    flush_all()  # the counts are upserted on PostgreSQL too
    store.search("acme", "kb", "how long do refunds take", 5)
    flush_all()
    with db.read() as conn:
        assert rates(conn)["retrieval"] == {"hits": 1, "misses": 1, "hit_rate": 0.5}
    db.dispose()


# -- cache hit rates, across processes ---------------------------------------------
_OTHER_PROCESS = """
import sys
from tether import Choice, DecisionRequest, Usage
from tether.memory.store import VectorStore
from tether.models.base import CallContext, call_context
from tether.models.cache import AnswerCache, CachedModel
from tether.record.db import Database

class Fixed:
    name = "gpt-4.1"
    def choose(self, request):
        return Choice(point=request.point, option=request.options[0], args={}, confidence=0.9, model=self.name,
                      usage=Usage(input_tokens=100, output_tokens=5))

db = Database(sys.argv[1])
store = VectorStore(db)
store.add("acme", "kb", ["Cards arrive within 5 days", "Top up by bank transfer"])  # embeddings: 2 misses
for q in ["card arrival", "card arrival", "top up", "card arrival"]:  # retrieval: 2 misses, 2 hits
    store.search("acme", "kb", q, 1)                                 # embedding: 2 more misses (each query once)
store.embedder.embed(["Top up by bank transfer"])                    # outside the store: not counted
store.add("acme", "kb", ["Top up by bank transfer"])   # embedding: 1 hit; the namespace changed, searches forgotten
store.search("acme", "kb", "card arrival", 1)          # retrieval: 1 miss; embedding: 1 hit
model = CachedModel(Fixed(), AnswerCache(db))
for text in ["how do I top up", "How do I top up?", "where is my card", "how do I top up"]:  # answer: 2 misses, 2 hits
    with call_context(CallContext(tenant="acme", policy_hash="p")):
        model.choose(DecisionRequest(point="reply", options=["reply"], observation={"text": text}))
"""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_cache_hit_rates_in_metrics_count_every_process(db_url: str) -> None:
    for _ in range(2):  # two processes, one after the other, both counted
        done = subprocess.run([sys.executable, "-c", _OTHER_PROCESS, db_url], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    out = CliRunner().invoke(cli, ["metrics", "--db", db_url])
    assert out.exit_code == 0, out.output
    got = _samples(out.stdout)

    def look(cache: str, result: str) -> float:
        return got[("tether_cache_lookups_total", (("cache", cache), ("result", result)))]

    # The second process finds the first one's answers in the database: all 4 of its answer lookups hit.
    assert (look("answer", "hit"), look("answer", "miss")) == (2 + 4, 2 + 0)
    assert (look("retrieval", "hit"), look("retrieval", "miss")) == (2 * 2, 2 * 3)  # per-process result cache
    assert (look("embedding", "hit"), look("embedding", "miss")) == (2 * 2, 2 * 4)
    assert got[("tether_cache_hit_ratio", (("cache", "answer"),))] == 0.75
    assert got[("tether_cache_hit_ratio", (("cache", "retrieval"),))] == 0.4
    assert got[("tether_cache_hit_ratio", (("cache", "embedding"),))] == pytest.approx(1 / 3, abs=1e-4)
    assert got[("tether_vector_store_backend", (("backend", "numpy"),))] == 1.0
    caches = json.loads(CliRunner().invoke(cli, ["costs", "--db", db_url, "--json"]).stdout)["caches"]
    assert caches["answer"] == {"hits": 6, "misses": 2, "hit_rate": 0.75}
    assert "cache hit rates: answer 75.0% of 8, embedding 33.3% of 12, retrieval 40.0% of 10" in \
        CliRunner().invoke(cli, ["costs", "--db", db_url]).stdout


# -- retention of the economics stores ----------------------------------------------
def _seed_retention(db: Database) -> None:
    import datetime as dt

    from tether.record.tables import answer_cache, observations

    now = dt.datetime.now(dt.UTC)
    ago = lambda days: (now - dt.timedelta(days=days)).isoformat()  # noqa: E731
    VectorStore(db).add("acme", "kb", ["Cards arrive within 5 days"])
    VectorStore(db).add("gone", "kb", ["Gone's private note", "Gone's other note"])
    log = ObservationLog(db)
    log.append("acme", "retrieval", {"query": "fresh"})
    log.append("gone", "retrieval", {"query": "fresh, but its tenant is forgotten"})
    with db.transaction() as conn:
        conn.execute(observations.insert().values(tenant="acme", kind="retrieval", data={"query": "old"}, created_at=ago(40)))
        row = {"point": "reply", "value": {"option": "x"}, "policy_hash": "p", "prompt_hash": "q", "created_at": ago(9)}
        conn.execute(answer_cache.insert(), [
            {**row, "key": "live", "tenant": "acme", "expires_at": (now + dt.timedelta(days=1)).isoformat()},
            {**row, "key": "expired", "tenant": "acme", "expires_at": ago(1)},
            {**row, "key": "gone-live", "tenant": "gone", "expires_at": (now + dt.timedelta(days=1)).isoformat()}])  # fmt: skip


def test_purge_covers_observations_expired_answers_and_forgotten_tenants(db: Database, db_url: str) -> None:
    from tether.record.ledger import Ledger
    from tether.record.tables import (
        answer_cache,
        memory_items,
        model_calls,
        observations,
        runs,
    )

    wf = _budget_flow()
    Runtime(db, model=lambda: _Priced()).start(wf, {}, tenant="gone")  # a run, its spend and ledger entries
    _seed_retention(db)
    head = Ledger(db).head()
    with db.read() as conn:
        spend_before = conn.execute(sa.select(sa.func.count()).select_from(model_calls)).scalar()
    res = CliRunner().invoke(cli, ["purge", "--db", db_url, "--forget-tenant", "gone", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"dry_run": True, "prompts": 0, "journal_events": 0, "spans": 0, "observations": 2,
                                      "answer_cache": 2, "memory_items": 2}  # fmt: skip
    with db.read() as conn:  # a dry run deletes nothing
        assert conn.execute(sa.select(sa.func.count()).select_from(observations)).scalar() == 3
    res = CliRunner().invoke(cli, ["purge", "--db", db_url, "--forget-tenant", "gone"])
    assert res.exit_code == 0 and "deleted: 0 prompts, 0 journal events, 0 spans, 2 observations, 2 cached answers, " \
                                  "2 memory items; ledger untouched" in res.stdout
    with db.read() as conn:
        assert conn.execute(sa.select(observations.c.tenant, observations.c.data)).all() == [("acme", {"query": "fresh"})]
        assert conn.execute(sa.select(answer_cache.c.key)).scalars().all() == ["live"]
        assert conn.execute(sa.select(memory_items.c.tenant)).scalars().all() == ["acme"]
        assert conn.execute(sa.select(sa.func.count()).select_from(model_calls)).scalar() == spend_before > 0
        assert conn.execute(sa.select(runs.c.tenant)).scalars().all() == ["gone"]  # runs are the journal's business
    assert Ledger(db).head() == head and Ledger(db).verify().ok
    res = CliRunner().invoke(cli, ["purge", "--db", db_url, "--observations-days", "0"])
    assert res.exit_code == 1 and res.stderr.strip() == "error: observation days must be at least 1 day"
    res = CliRunner().invoke(cli, ["purge", "--db", db_url, "--forget-tenant", " "])
    assert res.exit_code == 1 and "--forget-tenant needs a tenant name" in res.stderr


def test_forgetting_a_tenant_on_pgvector_drops_its_vectors(pgvector_url: str) -> None:
    from tether.record.retention import Retention, purge

    db = Database(pgvector_url)
    _seed_retention(db)
    assert purge(db, Retention(forget_tenants=("gone",)))["memory_items"] == 2
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM memory_vectors").scalar() == 1
    assert [h.text for h in VectorStore(db).search("gone", "kb", "note", 5)] == []
    db.dispose()


# -- per-action budgets -----------------------------------------------------------------
ONE_CALL = (1000 * 2.00 + 100 * 8.00) / 1e6  # $0.0028 at gpt-4.1 prices


class _Priced:
    """Priced as gpt-4.1, fixed usage; picks the first option, with a note's text as arguments."""

    name = "gpt-4.1"

    def __init__(self) -> None:
        self.asked = 0

    def choose(self, request: Any) -> Any:
        from tether import Choice, Usage

        self.asked += 1
        return Choice(point=request.point, option=request.options[0], args={"text": "noted"}, confidence=0.9,
                      model=self.name, usage=Usage(input_tokens=1000, output_tokens=100))  # fmt: skip


def _budget_flow() -> Workflow[Job, World]:
    from _flows import TOOLS

    wf: Workflow[Job, World] = Workflow("noter", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: World())

    @wf.state(initial=True, goes_to=["refund"])
    def note(run: Any) -> Any:
        r = run.act(run.choose("what", ["notes.add"], {"text": "x" * 400}))  # the model's call leads to notes.add
        run.data["note"] = r.status if r.status != "denied" else f"denied: {r.error}"
        return "refund"

    @wf.state(goes_to=[])
    def refund(run: Any) -> Any:
        run.choose("sure", ["yes", "no"], {"text": "y" * 400})  # the code then proposes the refund: it is the action
        r = run.call("payments.refund", {"transaction_id": "T1", "amount_usd": 5})
        return End("completed", f"{run.data['note']} | refund {r.status}")

    return wf


def test_an_action_budget_denies_calls_to_its_tool_once_spent(db_url: str) -> None:
    import datetime as dt

    from tether.record.ledger import Ledger
    from tether.record.tables import model_calls, run_events

    db = Database(db_url)
    rt = Runtime(db, model=lambda: _Priced())
    first = rt.start(_budget_flow(), {}, tenant="acme")
    assert (first.status, first.outcome) == ("completed", "ok | refund ok")
    with db.read() as conn:
        assert conn.execute(sa.select(model_calls.c.step, model_calls.c.action).order_by(model_calls.c.id)).all() == [
            (1, "notes.add"), (2, "payments.refund")]
    res = CliRunner().invoke(cli, ["costs", "budget", "action", "notes.add", "--daily", "0.002", "--db", db_url])
    assert res.exit_code == 0 and "set budget for action notes.add" in res.stdout
    second = rt.start(_budget_flow(), {}, tenant="globex")  # any tenant: the budget is the action's
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    # The spend counts this run's own model call too: it was made on the way to the action, and paid for.
    why = f"daily budget of action 'notes.add' is spent ($0.0056 of $0.0020); calls to it are refused until {tomorrow} UTC"
    assert (second.status, second.outcome) == ("completed", f"denied: {why} | refund ok")  # the run goes on; refunds have no budget
    with db.read() as conn:
        result = conn.execute(sa.select(run_events.c.data).where(run_events.c.run_id == second.run_id, run_events.c.kind == "result")
                              .order_by(run_events.c.seq)).scalars().first()  # fmt: skip
    assert (result["tool"], result["status"], result["error"]) == ("notes.add", "denied", why)
    ledgered = [e.body for e in Ledger(db).entries(second.run_id) if e.kind == "result"]
    assert {"tool": "notes.add", "status": "denied", "error": why}.items() <= ledgered[0].items()
    out = json.loads(CliRunner().invoke(cli, ["costs", "--db", db_url, "--json"]).stdout)
    # The denied call's model call still counts toward the action: it was spent on the way to it.
    assert {a["name"]: a["calls"] for a in out["by_action"]} == {"notes.add": 2, "payments.refund": 2}
    assert [(b["scope"], b["name"], b["spent_usd"]) for b in out["budgets"]] == [("action", "notes.add", pytest.approx(2 * ONE_CALL))]
    # Raised, the budget lets calls through again.
    CliRunner().invoke(cli, ["costs", "budget", "action", "notes.add", "--daily", "1", "--db", db_url])
    assert rt.start(_budget_flow(), {}).outcome == "ok | refund ok"
    db.dispose()


def test_a_spent_action_budget_asks_no_human_and_holds_after_an_approval(db: Database) -> None:
    from _flows import TOOLS

    from tether import ApprovalInbox
    from tether.models.budgets import set_budget
    from tether.record.tables import approvals

    wf: Workflow[Job, World] = Workflow("big_refund", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: World())

    @wf.state(initial=True, goes_to=[])
    def go(run: Any) -> Any:
        run.choose("sure", ["yes"], {"text": "x" * 400})
        r = run.call("payments.refund", {"transaction_id": "T1", "amount_usd": 500})  # over 100: a person approves
        return End("completed", f"{r.status}: {r.error}")

    rt = Runtime(db, model=lambda: _Priced())
    waiting = rt.start(wf, {}, started_by="alice")
    assert waiting.status == "waiting_approval"
    with db.transaction() as conn:
        set_budget(conn, "action", "payments.refund", "monthly", 0.001)  # spent already by the waiting run's call
    refused = rt.start(wf, {}, started_by="alice")
    assert refused.status == "completed" and refused.outcome.startswith("denied: monthly budget of action 'payments.refund' is spent")
    with db.read() as conn:  # nobody was asked to approve a call that could not be paid for
        assert conn.execute(sa.select(approvals.c.run_id)).scalars().all() == [waiting.run_id]
    ApprovalInbox(db).decide(waiting.approval_id or "", approve=True, by="bob", reason="ok")
    resumed = rt.resume(waiting.run_id, wf)  # spent while the approval waited: denied after it too
    assert resumed.status == "completed" and resumed.outcome.startswith("denied: monthly budget of action 'payments.refund'")


@pytest.mark.parametrize("args, message", [
    (["costs", "budget", "action", "not a tool!", "--daily", "1"], "an action budget names a tool like 'payments.refund', got 'not a tool!'"),
    (["costs", "budget", "action", "notes.add", "--monthly", "-2"], "a budget limit must be >= 0 USD"),
    (["costs", "budget", "actions", "notes.add", "--daily", "1"], "'actions' is not one of 'tenant', 'feature', 'action'"),
])  # fmt: skip
def test_action_budget_bad_input_is_one_line(db_url: str, args: list[str], message: str) -> None:
    from tether.record.tables import budgets

    Database(db_url).dispose()
    p = subprocess.run([sys.executable, "-c", "from tether.cli import main; main()", *args, "--db", db_url],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode != 0 and p.stderr.startswith("error: ") and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    db = Database(db_url)
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(budgets)).scalar() == 0  # nothing half-written
    db.dispose()


# -- the cost ceiling, recorded with the run ------------------------------------------------
def _asker(questions: int = 3) -> Workflow[Job, World]:
    from _flows import TOOLS

    wf: Workflow[Job, World] = Workflow("asker", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: World())

    @wf.state(initial=True, goes_to=[])
    def ask(run: Any) -> Any:
        for i in range(questions):
            run.choose(f"q{i}", ["yes", "no"], {"text": "x" * 400})
        return End("completed", "asked")

    return wf


ASKER = _asker()


def test_the_ceiling_is_recorded_shown_and_replayed(db_url: str) -> None:
    from tether.record.tables import runs

    db = Database(db_url)
    wf = ASKER
    stopped = Runtime(db, model=lambda: _Priced(), cost_ceiling_usd=0.005).start(wf, {})
    done = Runtime(db, model=lambda: _Priced(), cost_ceiling_usd=1.0).start(wf, {})
    free = Runtime(db, model=lambda: _Priced()).start(wf, {})
    assert (stopped.status, done.status, free.status) == ("cost_ceiling", "completed", "completed")
    shown = json.loads(CliRunner().invoke(cli, ["runs", "show", stopped.run_id, "--db", db_url, "--json"]).stdout)
    assert shown["cost_ceiling_usd"] == 0.005 and shown["cost_usd"] == pytest.approx(ONE_CALL)
    assert "cost_ceiling_usd: 1.0" in CliRunner().invoke(cli, ["runs", "show", done.run_id, "--db", db_url]).stdout
    import httpx
    from _server import LiveServer

    from tether.server.app import create_app
    from tether.server.keys import create_key

    key, _ = create_key(db, name="olga", role="operator", tools=None)
    server = LiveServer(create_app(db))
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            view = c.get(f"/api/runs/{stopped.run_id}").json()
            assert view["run"]["cost_ceiling_usd"] == view["cost"]["ceiling_usd"] == 0.005
            assert c.get(f"/api/runs/{free.run_id}").json()["cost"]["ceiling_usd"] is None
    finally:
        server.stop()
    # Replay applies the recorded ceiling: the run ends on it again, at the same call.
    ref = ["--workflow", "test_economics_more:ASKER"]
    res = CliRunner().invoke(cli, ["replay", stopped.run_id, "--db", db_url, "--json", *ref])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["replay_status"], report["same"], report["cost_ceiling_usd"]) == ("cost_ceiling", True, 0.005)
    assert "would take the run past its cost ceiling of $0.0050" in report["error"]
    assert "cost ceiling: $0.0050 (recorded with the run)" in CliRunner().invoke(cli, ["replay", stopped.run_id, "--db", db_url, *ref]).stdout
    assert replay(db, done.run_id, workflow=wf).same  # $1 is never reached
    # It is the recorded value that counts: recorded lower, the completed run's replay stops on it.
    with db.transaction() as conn:
        conn.execute(runs.update().where(runs.c.id == done.run_id).values(cost_ceiling_usd=0.006))
    again = replay(db, done.run_id, workflow=wf)
    assert (again.replay_status, again.same) == ("cost_ceiling", False)
    db.dispose()


def test_a_resumed_run_keeps_the_ceiling_it_started_under(db: Database) -> None:

    from tether import ApprovalInbox

    wf = ask_refund_ask()

    model = _Priced()
    r = Runtime(db, model=lambda: model, cost_ceiling_usd=0.005).start(wf, {}, started_by="alice")
    assert r.status == "waiting_approval"
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="bob", reason="ok")
    r = Runtime(db, model=lambda: model).resume(r.run_id, wf)  # this resumer sets no ceiling; the run's own holds
    assert r.status == "cost_ceiling" and model.asked == 1


def test_the_economics_migration_matches_the_tables(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tether.record.tables import metadata

    with db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    mine = [d for d in diffs if any(t in repr(d) for t in ("cache_stats", "cost_ceiling_usd", "'action'", "ix_model_calls_action"))]
    assert mine == []


def test_migrating_to_pgvector_moves_existing_vectors(pgvector_url: str) -> None:
    """A PostgreSQL database filled before 0010 gets its vectors into the pgvector table on upgrade."""
    import numpy as np
    from alembic import command

    from tether.memory.embed import HashingEmbedder
    from tether.record.db import _alembic_config
    from tether.record.tables import memory_items

    engine = sa.create_engine(pgvector_url.replace("postgresql://", "postgresql+psycopg://"))
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008")
    emb = HashingEmbedder()
    texts = [t for t, _ in CORPUS]
    with engine.begin() as conn:
        conn.execute(memory_items.insert(), [
            {"tenant": "acme", "namespace": "kb", "text": t, "meta": m, "embedder": emb.name, "created_at": "t",
             "vector": np.asarray(v, dtype=np.float32).tobytes()} for (t, m), v in zip(CORPUS, emb.embed(texts), strict=True)])  # fmt: skip
    engine.dispose()
    db = Database(pgvector_url)  # migrates to the newest revision
    store = VectorStore(db)
    assert store.backend == "pgvector"
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM memory_vectors").scalar() == len(CORPUS)
    assert [[i for i, _ in r] for r in _ranked(store)] == [[i for i, _ in r] for r in _ranked(VectorStore(db, backend="numpy"))]
    db.dispose()


def test_cache_counts_survive_a_failed_write(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    from tether.record.cachestats import CacheCounter, rates
    from tether.record.tables import cache_stats

    c = CacheCounter(db, "retrieval", every=2)
    with db.transaction() as conn:
        cache_stats.drop(conn)
    c.hit()
    c.miss()  # due: the write fails, the lookup does not, the counts wait
    assert "could not write retrieval cache counts" in caplog.text
    with db.transaction() as conn:
        cache_stats.create(conn)
    c.hit()
    with db.read() as conn:
        assert rates(conn)["retrieval"] == {"hits": 2, "misses": 1, "hit_rate": 0.6667}
    with pytest.raises(ValueError, match="cache must be one of answer, embedding, retrieval"):
        CacheCounter(db, "prompts")
