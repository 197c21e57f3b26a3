"""Scale-out mode: tether on PostgreSQL, queued runs, workers, crash-and-resume."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_triage import _customers_with_refund_between, _ticket

from tether import ApprovalInbox, Database, Ledger, Runtime
from tether.cli import cli
from tether.orchestration import engine
from tether.orchestration.worker import Worker
from tether.record import ledger
from tether.record.tables import workers
from tether.workflows.triage import data, systems
from tether.workflows.triage.flow import workflow

BENCH = Path(__file__).parent.parent / "bench"


def test_postgresql_url_uses_psycopg3(pg_url: str) -> None:
    db = Database(pg_url)
    assert db.url.drivername == "postgresql+psycopg"
    assert Database(pg_url, create=False).url.database == db.url.database  # migrated once, opened again


def test_concurrent_first_ledger_appends_on_postgresql(pg_url: str) -> None:
    # The head row does not exist before the first append: without a lock, two first appends collide.
    db = Database(pg_url)
    errors: list[BaseException] = []

    def append(i: int) -> None:
        try:
            for j in range(15):
                with db.transaction() as conn:
                    ledger.append(conn, "test", {"thread": i, "n": j})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=append, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = Ledger(db).verify()
    assert report.ok and report.entries == 60, report.message()


def test_triage_start_approve_resume_and_verify_on_postgresql(pg_url: str) -> None:
    db = Database(pg_url)
    bank = systems.Systems(db)
    data.seed_bank(bank)
    (cid, target), (cid2, _) = _customers_with_refund_between(bank, 100, 1000)[:2]
    r = Runtime(db).start(workflow, {"ticket_id": _ticket(db, bank, "T-pg-1", cid, "I would like a refund for my last purchase please")},
                          started_by="intake")  # fmt: skip
    assert r.status == "waiting_approval"
    [req] = ApprovalInbox(db).list()
    assert req.args["transaction_id"] == target[0]
    runner = CliRunner()
    res = runner.invoke(cli, ["approvals", "approve", req.id, "--as", "lead", "--reason", "ok", "--db", pg_url])
    assert res.exit_code == 0 and f"{r.run_id} completed refund_issued" in res.output, res.stderr
    # Decided where nothing resumed it: `runs resume` finishes it.
    r2 = Runtime(db).start(workflow, {"ticket_id": _ticket(db, bank, "T-pg-2", cid2, "I would like a refund for my last purchase please")},
                           started_by="intake")  # fmt: skip
    ApprovalInbox(db).decide(r2.approval_id or "", approve=True, by="lead")
    res = runner.invoke(cli, ["runs", "resume", r2.run_id, "--db", pg_url])
    assert res.exit_code == 0 and f"{r2.run_id} completed refund_issued" in res.output, res.stderr
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(systems.refunds)).scalar() == 2
    res = runner.invoke(cli, ["ledger", "verify", "--db", pg_url])
    assert res.exit_code == 0 and "ledger ok" in res.output, res.output + res.stderr


@pytest.fixture
def worker(db: Database) -> Iterator[Worker]:
    systems.Systems(db)
    w = Worker(db, concurrency=2, heartbeat_s=0.2, dead_after_s=1.0, drain_s=0)
    t = threading.Thread(target=w.run)
    t.start()
    yield w
    w.stop()
    t.join()


def test_queued_runs_and_a_queued_resume_after_approval(db: Database, db_url: str, worker: Worker) -> None:
    bank = systems.Systems(db)
    data.seed_bank(bank)
    runner = CliRunner()
    tid = _ticket(db, bank, "T-q-1", "C0002", "I think my card was stolen yesterday, please block it")
    res = runner.invoke(cli, ["run", "support_triage", "--input", json.dumps({"ticket_id": tid}), "--queue", "--db", db_url])
    assert res.exit_code == 0, res.stderr
    run_id, word = res.output.split()
    assert word == "queued"
    (cid, _), = _customers_with_refund_between(bank, 100, 1000)[:1]
    tid2 = _ticket(db, bank, "T-q-2", cid, "I would like a refund for my last purchase please")
    run2 = engine.enqueue(db, workflow, {"ticket_id": tid2}, started_by="intake")
    assert engine.wait(db, [run_id, run2], 60) == {run_id: "completed", run2: "waiting_approval"}
    assert Runtime(db).get(run_id).outcome == "card_frozen"

    # Waiting holds no process: the run is in the database only, until a person decides and its resumption is queued.
    res = runner.invoke(cli, ["runs", "resume", run2, "--queue", "--json", "--db", db_url])
    segment = json.loads(res.output)["segment"]
    [after] = engine.wait_segments(db, [segment], 60).values()
    assert after["status"] == "waiting_approval"  # resumed, and back to waiting: nobody decided yet
    [req] = ApprovalInbox(db).list()
    ApprovalInbox(db).decide(req.id, approve=True, by="lead")
    res = runner.invoke(cli, ["runs", "resume", run2, "--queue", "--db", db_url])
    assert res.exit_code == 0 and res.output.strip() == f"{run2} queued", res.stderr
    assert engine.wait(db, [run2], 60, until=("completed",)) == {run2: "completed"}
    assert Runtime(db).get(run2).outcome == "refund_issued"
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(systems.refunds)).scalar() == 1
        assert conn.execute(sa.select(workers.c.id)).scalars().all() == [worker.worker_id]
    assert Ledger(db).verify().ok

    res = runner.invoke(cli, ["runs", "resume", run2, "--queue", "--db", db_url])
    assert res.exit_code == 1 and res.stderr.strip() == f"error: run {run2} already ended (completed)"


def test_a_queued_run_under_a_policy_file_and_a_queued_stranded_resume(
    db: Database, db_url: str, worker: Worker, tmp_path: Path
) -> None:
    """`run --queue --policies F` runs under F (stored when queued, so the worker runs the text
    checked here); `runs resume --queue --stranded` hands a run whose process died to the workers."""
    from tether.guardrails.loading import load_policy
    from tether.record.tables import runs as runs_table

    bank = systems.Systems(db)
    data.seed_bank(bank)
    strict = tmp_path / "strict.yaml"
    strict.write_text("default: allow\npolicies:\n  - name: freezes_need_a_person\n    if: {tool: cards.freeze}\n"
                      "    then: {action: require_human_approval}\n")
    runner = CliRunner()
    run_ids = []
    for tid, cid in (("T-q-3", "C0002"), ("T-q-4", "C0003")):
        _ticket(db, bank, tid, cid, "I think my card was stolen yesterday, please block it")
        res = runner.invoke(cli, ["run", "support_triage", "--input", json.dumps({"ticket_id": tid}), "--queue",
                                  "--policies", str(strict), "--db", db_url])  # fmt: skip
        assert res.exit_code == 0, res.stderr
        run_ids.append(res.output.split()[0])
    assert engine.wait(db, run_ids, 60) == dict.fromkeys(run_ids, "waiting_approval")  # the file's rule held
    with db.read() as conn:
        hashes = set(conn.execute(sa.select(runs_table.c.policy_hash).where(runs_table.c.id.in_(run_ids))).scalars())
        frozen = conn.execute(sa.select(sa.func.count()).select_from(systems.cards).where(systems.cards.c.status == "frozen")).scalar()
    assert hashes == {load_policy(strict).hash} and frozen == 0

    # The approver's process claimed the run and died (SIGKILL) before finishing it: it stays `running`.
    stranded = run_ids[1]
    [req] = [r for r in ApprovalInbox(db).list() if r.run_id == stranded]
    ApprovalInbox(db).decide(req.id, approve=True, by="lead")
    with db.transaction() as conn:
        conn.execute(runs_table.update().where(runs_table.c.id == stranded).values(status="running", driver="proc:gone:1#dead"))
    res = runner.invoke(cli, ["runs", "resume", stranded, "--queue", "--db", db_url])
    assert res.exit_code == 1 and "pass --stranded if the process driving it died" in res.stderr
    res = runner.invoke(cli, ["runs", "resume", stranded, "--queue", "--stranded", "--db", db_url])
    assert res.exit_code == 0, res.stderr
    status = engine.wait(db, [stranded], 60)[stranded]
    while status == "waiting_approval":  # the customer has more cards: each freeze waits for a person
        [req] = [r for r in ApprovalInbox(db).list() if r.run_id == stranded]
        ApprovalInbox(db).decide(req.id, approve=True, by="lead")
        segment = engine.enqueue_resume(db, stranded)
        status = engine.wait_segments(db, [segment], 60)[segment]["status"]
    assert status == "completed"
    with db.read() as conn:
        frozen = conn.execute(sa.select(sa.func.count()).select_from(systems.cards).where(systems.cards.c.status == "frozen")).scalar()
    assert frozen >= 1
    assert Ledger(db).verify().ok


def test_queue_refuses_bad_input_and_options(db_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["run", "support_triage", "--input", '{"ticket": "x"}', "--queue", "--db", db_url])
    assert res.exit_code == 1 and res.stderr.startswith("error: ") and "ticket" in res.stderr
    assert not (tmp_path / "tether.engine.db").exists()  # nothing queued, no engine state written
    res = runner.invoke(cli, ["run", "support_triage", "--input", '{"ticket_id": "x"}', "--queue", "--policies", "p.yaml",
                              "--db", db_url])  # fmt: skip
    assert res.exit_code != 0 and "p.yaml" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    unchecked = tmp_path / "unchecked.yaml"
    unchecked.write_text("policies:\n  - name: typo\n    if: {tool: payments.refund, amount: '> 5'}\n    then: {action: deny}\n")
    res = runner.invoke(cli, ["run", "support_triage", "--input", '{"ticket_id": "x"}', "--queue", "--policies",
                              str(unchecked), "--db", db_url])  # fmt: skip
    assert res.exit_code == 1 and "amount" in res.stderr and "never be checked" in res.stderr
    assert not (tmp_path / "tether.engine.db").exists()  # still nothing queued
    res = runner.invoke(cli, ["run", "support_triage", "--input", '{"ticket_id": "x"}', "--queue", "--db", "sqlite://"])
    assert res.exit_code == 1 and "not an in-memory SQLite database" in res.stderr
    res = runner.invoke(cli, ["worker", "--heartbeat", "2", "--dead-after", "1", "--db", db_url])
    assert res.exit_code == 1 and "--dead-after (1.0s) must be longer than --heartbeat (2.0s)" in res.stderr


def _crash(*args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, str(BENCH / "crash.py"), "--runs", "12", "--workers", "2", "--kills", "2",
                          "--pause", "0.2", *args], capture_output=True, text=True, timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_killed_with_sigkill_lose_and_repeat_nothing(backend: str, request: pytest.FixtureRequest) -> None:
    args = ["--db", backend] if backend == "sqlite" else ["--db", "postgresql", "--pg-url", request.getfixturevalue("pg_url")]
    res = _crash(*args)
    assert res["runs"] == res["finished"] == 12
    assert res["kills"] == 2 and res["takeovers"] >= 1  # killed in mid-run: their runs went to live workers
    assert res["side_effects_seen"] == res["side_effects_expected"] > 12
    assert res["duplicate_side_effects"] == 0
    assert res["ledger_ok"] is True


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_worker_killed_between_an_effect_and_its_record(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The effect is made, the worker dies before recording it: a new worker resumes the run,
    the system of record answers the repeated call from its idempotency key, nothing is done twice."""
    import signal
    import time

    from crash import check, enqueue_all, prepare, start_worker

    db_url = request.getfixturevalue("db_url" if backend == "sqlite" else "pg_url")
    db = Database(db_url)

    [run_id] = enqueue_all(db, prepare(db, 1, seed=4))
    first = start_worker(db_url, 2, 30.0, tmp_path / "w.log")  # sleeps 30 s after its first effect
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with db.read() as conn:
                if conn.execute(sa.select(sa.func.count()).select_from(systems.idempotency)).scalar():
                    break
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = start_worker(db_url, 2, 0.0, tmp_path / "w.log")
        try:
            assert engine.wait(db, [run_id], 60, until=("completed", "escalated")) == {run_id: "completed"}
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        first.kill()
    res = check(db, [run_id])
    assert res["effects_answered_by_key"] == 1
    assert res["side_effects_seen"] == res["side_effects_expected"] >= 3 and res["duplicate_side_effects"] == 0
    assert res["ledger_ok"] is True
    assert "took over 1 runs of dead worker" in (tmp_path / "w.log").read_text()


def test_one_live_worker_claims_a_dead_one_and_a_claimed_worker_stops_beating(db: Database) -> None:
    import time

    a, b, dead = (Worker(db, heartbeat_s=0.2, dead_after_s=1.0) for _ in range(3))
    last = time.time() - 60  # silent for a minute
    with db.transaction() as conn:
        conn.execute(workers.insert().values(id=dead.worker_id, host="h", pid=1, concurrency=1, started_at="t",
                                             heartbeat=last))  # fmt: skip
    assert a._claim(dead.worker_id, last) is True
    assert b._claim(dead.worker_id, last) is False  # the beat it read has changed: a got there first
    assert dead.beat() is False  # declared dead: it must stop (the worker loop exits the process)
    # An owner of runs that never registered (say, it died while starting): one claimer inserts its row.
    assert a._claim("w-ghost", None) is True
    assert b._claim("w-ghost", None) is False


def test_a_stranded_run_a_worker_cannot_resume_says_why(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run left `running` whose code version no worker here runs becomes `interrupted` with the
    reason, instead of looking driven for ever; `runs resume --stranded --migrate` takes it from there."""
    from tether.orchestration import engine
    from tether.record.tables import runs as runs_table

    monkeypatch.setattr(engine, "_db", db)
    me = "engine:run_strand"
    started = engine.advance("run_strand", "_slow_flow:slow", {"ticket_id": "T2", "steps": 2, "delay_ms": 1}, "alice", "default",
                             driver=me)  # fmt: skip
    assert started["status"] == "completed"
    with db.transaction() as conn:
        conn.execute(runs_table.update().where(runs_table.c.id == "run_strand").values(status="running", workflow_version="0ld"))
    out = engine.advance("run_strand", "_slow_flow:slow", {"ticket_id": "T2"}, "alice", "default", driver=me)
    assert out["status"] == "not_driven" and "version 0ld" in out["error"]
    with db.read() as conn:
        row = conn.execute(sa.select(runs_table.c.status, runs_table.c.error).where(runs_table.c.id == "run_strand")).one()
    assert row.status == "interrupted" and row.error.startswith("not resumed by a worker: run run_strand started on")


def test_a_queued_run_refused_by_the_kill_switch_is_kept_with_the_reason(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its id was handed out when it was queued: a worker that finds the workflow killed (or its
    budget spent) records the run as ended, with the reason, instead of dropping it."""
    from tether.models import budgets
    from tether.orchestration import rollout

    monkeypatch.setattr(engine, "_db", db)
    job = {"ticket_id": "T-none"}
    rollout.kill(db, "support_triage", by="ops", reason="bad answers")
    out = engine.advance("run_refused", "support_triage", job, "alice", "default", driver="engine:run_refused")
    assert out["status"] == "halted" and "workflow support_triage is killed (bad answers)" in out["error"]
    rollout.restore(db, "support_triage", by="ops")
    with db.transaction() as conn:
        budgets.set_budget(conn, "tenant", "acme", "daily", 0.0)
    out = engine.advance("run_broke", "support_triage", job, "alice", "acme", driver="engine:run_broke")
    assert out["status"] == "budget_exhausted" and "budget" in out["error"]
    runner = CliRunner()
    res = runner.invoke(cli, ["runs", "show", "run_refused", "--json", "--db", str(db.url)])
    assert res.exit_code == 0, res.stderr
    shown = json.loads(res.output)
    assert shown["status"] == "halted" and shown["steps"] == 0
    with db.read() as conn:
        kinds = conn.execute(sa.select(ledger.ledger_entries.c.kind).where(ledger.ledger_entries.c.run_id == "run_broke")).scalars().all()
    assert kinds == ["run_refused"]
    assert Ledger(db).verify().ok


def test_a_bad_max_recoveries_setting_fails_before_the_worker_registers(db: Database, db_url: str) -> None:
    res = CliRunner().invoke(cli, ["worker", "--db", db_url], env={"TETHER_MAX_RECOVERIES": "lots"})
    assert res.exit_code == 1
    assert res.stderr.strip() == "error: TETHER_MAX_RECOVERIES must be a whole number of starts, got 'lots'"
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(workers)).scalar() == 0
