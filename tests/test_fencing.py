"""One driver at a time: a process that lost its run to another stops at its next write, writing nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _flows import POLICY, Job, World
from test_durability import Hold, hold, release

from tether import ApprovalInbox, Database, End, Ledger, RunContext, Runtime, Workflow
from tether.errors import RunTakenOver
from tether.orchestration import engine
from tether.record import runs as store
from tether.record.tables import ledger_entries, run_events
from tether.record.tables import runs as runs_table

TESTS = Path(__file__).parent


def _two_step(world: World, paused: threading.Event, go_on: threading.Event) -> Workflow[Job, World]:
    wf: Workflow[Job, World] = Workflow("fenced", input=Job, tools=[hold, release], policy=POLICY, deps=lambda d: world)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        run.call("stock.hold", {"what": "A"})
        if threading.current_thread().name == "first-driver":  # only the first driver stalls here
            paused.set()
            go_on.wait(30)
        run.call("stock.hold", {"what": "B"})
        return End("completed", "held")

    return wf


def test_a_driver_that_lost_its_run_stops_without_writing(db: Database) -> None:
    """The first driver stalls between two effects (a long GC pause, a stopped VM); a second
    takes the run over as stranded and finishes it. When the first wakes up, its next write is
    refused: it makes no second effect, writes no journal event and no ledger entry."""
    world, paused, go_on = World(), threading.Event(), threading.Event()
    wf = _two_step(world, paused, go_on)
    outcome: dict[str, Any] = {}

    def first() -> None:
        try:
            outcome["result"] = Runtime(db).start(wf, {}, run_id="run_fenced", driver="proc:first")
        except BaseException as e:  # noqa: BLE001 - the test inspects what the driver raised
            outcome["error"] = e

    t = threading.Thread(target=first, name="first-driver")
    t.start()
    assert paused.wait(30)
    with db.read() as conn:
        assert store.driver_label(store.get_run(conn, "run_fenced").driver) == "proc:first"
    second = Runtime(db).resume("run_fenced", wf, stranded=True, driver="proc:second")
    assert (second.status, second.outcome) == ("completed", "held")
    go_on.set()
    t.join(30)

    assert isinstance(outcome.get("error"), RunTakenOver), outcome
    assert "taken over by another process; this one stopped without writing" in str(outcome["error"])
    # A's effect was made once (the second driver's repeat was answered by its key); B once.
    assert world.effects == [("hold", "A"), ("hold", "B")]
    with db.read() as conn:
        row = store.get_run(conn, "run_fenced")
        kinds = conn.execute(sa.select(run_events.c.kind, run_events.c.call_id).where(run_events.c.run_id == "run_fenced")
                             .order_by(run_events.c.seq)).all()  # fmt: skip
        finished = conn.execute(sa.select(sa.func.count()).select_from(ledger_entries)
                                .where(ledger_entries.c.kind == "run_finished")).scalar()  # fmt: skip
    assert row.status == "completed" and store.driver_label(row.driver) == "proc:second"
    # 1.1 twice: the taker re-ran the call whose result was never recorded (under its key);
    # 1.2 once: the first driver's proposal of it was never written.
    assert [k.call_id for k in kinds if k.kind == "proposal"] == ["1.1", "1.1", "1.2"]
    assert finished == 1
    assert Ledger(db).verify().ok


def test_state_code_cannot_swallow_the_takeover(db: Database) -> None:
    """`except Exception` in state code does not catch the fence: the driver still stops."""
    world = World()
    wf: Workflow[Job, World] = Workflow("greedy", input=Job, tools=[hold, release], policy=POLICY, deps=lambda d: world)
    stolen = threading.Event()

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        if not stolen.is_set():  # someone else claims the run under us
            with db.transaction() as conn:
                store.claim_run(conn, run.id, "running", "running", driver=store.new_driver("proc:rival"))
            stolen.set()
        try:
            run.call("stock.hold", {"what": "A"})
        except Exception:  # noqa: BLE001 - what careless state code does
            pass
        return End("completed", "held")

    with pytest.raises(RunTakenOver):
        Runtime(db).start(wf, {}, run_id="run_greedy")
    assert world.effects == []  # the decision's write was refused before the effect
    with db.read() as conn:
        row = store.get_run(conn, "run_greedy")
        assert (row.status, store.driver_label(row.driver)) == ("running", "proc:rival")
        assert conn.execute(sa.select(sa.func.count()).select_from(run_events)).scalar() == 0
    assert Ledger(db).verify().ok


def test_a_queued_segment_leaves_a_run_another_process_drives(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's segment finds the run `running` under another driver (a person approved it and
    their process is driving it): it steps aside. The engine workflow that held it re-drives it."""
    monkeypatch.setattr(engine, "_db", db)
    ref, job = "_slow_flow:slow", {"ticket_id": "T9", "steps": 2, "delay_ms": 1}
    done = engine.advance("run_q", ref, job, "alice", "default", driver="engine:run_q")
    assert done["status"] == "completed"
    held = store.new_driver("proc:approver")
    with db.transaction() as conn:
        conn.execute(runs_table.update().where(runs_table.c.id == "run_q").values(status="running", driver=held))
    out = engine.advance("run_q", ref, job, "alice", "default", driver="engine:run_q:resume:1")
    assert out == {"run_id": "run_q", "status": "not_driven", "error": "run run_q is being driven by proc:approver"}
    with db.read() as conn:
        assert store.get_run(conn, "run_q").driver == held  # untouched
    # The engine workflow that held it is being recovered (its worker died): it takes it back.
    with db.transaction() as conn:
        conn.execute(runs_table.update().where(runs_table.c.id == "run_q").values(driver=store.new_driver("engine:run_q")))
    again = engine.advance("run_q", ref, job, "alice", "default", driver="engine:run_q")
    assert again["status"] == "completed"
    with db.read() as conn:
        assert store.driver_label(store.get_run(conn, "run_q").driver) == "engine:run_q"


def test_a_worker_stopped_with_runs_still_going_exits_and_they_are_taken_over(db: Database, db_url: str, tmp_path: Path) -> None:
    """`tether worker --drain 0` stopped in the middle of a run exits at once (code 76) instead of
    driving on beside the worker that takes the run over; a second worker finishes it."""
    from tether.workflows.triage import systems

    systems.Systems(db)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    worker = [sys.executable, "-m", "tether", "worker", "--db", db_url, "--heartbeat", "0.2", "--dead-after", "1"]
    log = (tmp_path / "w.log").open("ab")
    first = subprocess.Popen([*worker, "--drain", "0"], env=env, stdout=log, stderr=log)
    second = None
    try:
        sys.path.insert(0, str(TESTS))
        from _slow_flow import slow

        run_id = engine.enqueue(db, slow, {"ticket_id": "T1", "steps": 60, "delay_ms": 50}, started_by="ops")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with db.read() as conn:
                row = conn.execute(sa.select(runs_table.c.steps).where(runs_table.c.id == run_id)).first()
            if row is not None:
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 76
        second = subprocess.Popen([*worker, "--drain", "10"], env=env, stdout=log, stderr=log)
        assert engine.wait(db, [run_id], 90, until=("completed",)) == {run_id: "completed"}
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        log.close()
    text = (tmp_path / "w.log").read_text()
    assert "runs still going after 0s; exiting so live workers take them over" in text
    assert "took over 1 runs of dead worker" in text
    with db.read() as conn:
        assert store.get_run(conn, run_id).steps == 60
    assert Ledger(db).verify().ok


def test_a_run_that_kills_every_worker_that_drives_it_is_retired(db: Database, db_url: str, tmp_path: Path) -> None:
    """A poison run (it kills its process each time) is dead-lettered by the engine after
    $TETHER_MAX_RECOVERIES starts; a live worker then marks it `interrupted` with the reason."""
    from tether.workflows.triage import systems

    systems.Systems(db)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "TETHER_MAX_RECOVERIES": "2"}
    cmd = [sys.executable, "-m", "tether", "worker", "--db", db_url, "--heartbeat", "0.2", "--dead-after", "1"]
    log = (tmp_path / "w.log").open("ab")
    procs = [subprocess.Popen(cmd, env=env, stdout=log, stderr=log) for _ in range(2)]
    started = 2
    try:
        sys.path.insert(0, str(TESTS))
        from _poison_flow import poison

        run_id = engine.enqueue(db, poison, {"ticket_id": "P1"}, started_by="ops")
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            with db.read() as conn:
                row = conn.execute(sa.select(runs_table.c.status, runs_table.c.error).where(runs_table.c.id == run_id)).first()
            status = row.status if row else None
            if status == "interrupted":
                break
            for i, p in enumerate(procs):
                if p.poll() is not None:  # killed by the run: a new worker takes its place
                    procs[i] = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
                    started += 1
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        log.close()
    assert status == "interrupted", (tmp_path / "w.log").read_text()[-2000:]
    assert "a poison run" in row.error and "runs resume RUN --stranded" in row.error
    assert started >= 4  # two workers died driving it before the engine gave up on it
    assert f"run {run_id} retired" in (tmp_path / "w.log").read_text()
    assert Ledger(db).verify().ok


def test_a_resume_that_fails_after_its_claim_does_not_leave_the_run_running(db: Database, monkeypatch: Any) -> None:
    """Runtime.resume claims the run (running, new driver) before _walk builds its meter; a bad
    $TETHER_COST_CEILING_USD raises there, outside _walk's try, so the run is left `running`
    under a driver that has gone: it looks driven for ever (workers skip a run another
    label holds) until someone passes --stranded."""
    from _flows import make_workflow

    from tether.errors import TetherError

    wf = make_workflow("refunds_ceiling")
    r = Runtime(db).start(wf, {"amount_usd": 5000.0})
    assert r.status == "waiting_approval"
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="lead")
    monkeypatch.setenv("TETHER_COST_CEILING_USD", "lots")
    with pytest.raises(TetherError):
        Runtime(db).resume(r.run_id, wf)
    assert Runtime(db).get(r.run_id).status == "waiting_approval"


def test_a_run_whose_last_write_fails_is_left_interrupted_not_running(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write that ends a run fails (the disk filled up, say): the run must not stay `running`
    under a driver that is gone. It is marked interrupted with the first line of the reason, and
    `runs resume --stranded` finishes it."""
    from tether.orchestration._journal import Journal

    world = World()
    wf: Workflow[Job, World] = Workflow("ending", input=Job, tools=[hold, release], policy=POLICY, deps=lambda d: world)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        run.call("stock.hold", {"what": "A"})
        return End("completed", "held")

    real = Journal.flush

    def failing(self: Journal, extra: Any = None, **values: Any) -> None:
        if values.get("status") == "completed":
            raise OSError("disk full\nwhile writing the run's end")
        real(self, extra, **values)

    monkeypatch.setattr(Journal, "flush", failing)
    with pytest.raises(OSError):
        Runtime(db).start(wf, {}, run_id="run_end")
    with db.read() as conn:
        row = store.get_run(conn, "run_end")
    assert row.status == "interrupted" and row.driver is None
    assert row.error == "interrupted: OSError: disk full; `tether runs resume RUN --stranded` continues it"
    monkeypatch.setattr(Journal, "flush", real)
    done = Runtime(db).resume("run_end", wf, stranded=True)
    assert (done.status, done.outcome) == ("completed", "held") and world.effects == [("hold", "A")]
    assert Ledger(db).verify().ok
