"""Durable timers: a run waiting on a time holds no process and resumes from the database when due."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from _flows import POLICY, Job, World, add_note
from click.testing import CliRunner
from test_durability import hold, release

from tether import Database, End, Ledger, RunContext, Runtime, Workflow
from tether.cli import cli
from tether.orchestration import engine
from tether.orchestration.replay import replay
from tether.orchestration.worker import Worker
from tether.record.metrics import exposition
from tether.record.tables import run_events


def _reminder(world: World, wait: Any) -> Workflow[Job, World]:
    wf: Workflow[Job, World] = Workflow("reminder", input=Job, tools=[add_note, hold, release], policy=POLICY,
                                        deps=lambda d: world)  # fmt: skip

    @wf.state(initial=True, goes_to=["follow_up"])
    def ask(run: RunContext[Job, World]) -> str:
        run.call("notes.add", {"text": "asked the customer"})
        run.call("stock.hold", {"what": "A"})
        wait(run)
        return "follow_up"

    @wf.state(goes_to=[])
    def follow_up(run: RunContext[Job, World]) -> End:
        run.call("notes.add", {"text": "followed up"})
        return End("completed", "followed_up")

    return wf


def test_a_sleeping_run_holds_no_process_and_is_woken_when_due(db: Database, db_url: str) -> None:
    world = World()
    wf = _reminder(world, lambda run: run.sleep(0.5))
    rt = Runtime(db)
    r = rt.start(wf, {})
    assert r.status == "waiting_timer" and r.wake_at is not None
    due = dt.datetime.fromisoformat(r.wake_at)
    assert 0.3 < (due - dt.datetime.now(dt.UTC)).total_seconds() <= 0.5
    assert world.effects == [("note", "asked the customer"), ("hold", "A")]

    # Resumed before it is due (say, by hand): it goes back to waiting, repeating nothing.
    early = rt.resume(r.run_id, wf)
    assert (early.status, early.wake_at) == ("waiting_timer", r.wake_at)
    assert Runtime(db).wake_due() == []  # nothing is due yet

    time.sleep(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds()) + 0.05)
    import _flows  # the CLI loads the workflow by its ref: give it this one

    _flows.reminder = wf  # type: ignore[attr-defined]
    with db.transaction() as conn:
        conn.execute(sa.text("update runs set workflow_ref = '_flows:reminder' where id = :id"), {"id": r.run_id})
    res = CliRunner().invoke(cli, ["runs", "wake", "--json", "--db", db_url])
    assert res.exit_code == 0, res.stderr
    [woken] = json.loads(res.output)
    assert (woken["run_id"], woken["status"], woken["outcome"]) == (r.run_id, "completed", "followed_up")
    assert world.effects == [("note", "asked the customer"), ("hold", "A"), ("note", "followed up")]
    with db.read() as conn:
        kinds = conn.execute(sa.select(run_events.c.kind).where(run_events.c.run_id == r.run_id)).scalars().all()
    assert kinds.count("timer") == 1 and kinds.count("timer_fired") == 1
    with db.read() as conn:  # the due time is cleared once the run goes on
        assert conn.execute(sa.text("select wake_at from runs where id = :i"), {"i": r.run_id}).scalar() is None
    rep = replay(db, r.run_id, workflow=wf)
    assert (rep.replay_status, rep.same) == ("completed", True)
    assert Ledger(db).verify().ok


def test_replay_of_a_waiting_run_and_cancelling_it(db: Database) -> None:
    world = World()
    deadline = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    wf = _reminder(world, lambda run: run.wait_until(deadline))
    r = Runtime(db).start(wf, {})
    assert (r.status, r.wake_at) == ("waiting_timer", "2099-01-01T00:00:00.000000+00:00")
    shown = json.loads(CliRunner().invoke(cli, ["runs", "show", r.run_id, "--json", "--db", str(db.url)]).output)
    assert (shown["status"], shown["wake_at"]) == ("waiting_timer", r.wake_at) and shown["driver"].startswith("proc:")
    rep = replay(db, r.run_id, workflow=wf)
    assert (rep.replay_status, rep.same) == ("waiting_timer", True)
    c = Runtime(db).cancel(r.run_id, wf, by="ops", reason="customer replied")
    assert c.status == "cancelled" and "compensated 1 of 1 effects" in (c.error or "")
    assert world.effects[-1] == ("release", "A")


@pytest.mark.parametrize(("wait", "message"), [
    (lambda run: run.sleep(-1), "sleep takes 0 to 10 years in seconds, got -1"),
    (lambda run: run.wait_until(dt.datetime(2099, 1, 1)), "wait_until needs a timezone-aware datetime"),
])  # fmt: skip
def test_a_bad_timer_fails_the_run_with_the_reason(db: Database, wait: Any, message: str) -> None:
    world = World()
    r = Runtime(db).start(_reminder(world, wait), {})
    assert r.status == "failed" and message in (r.error or "")


def test_workers_wake_due_runs_once(db: Database) -> None:
    """Every worker looks for due timers at every beat; the resumption of a due run gets an id
    from its due time, so two workers (or a worker and `runs wake --queue`) queue it once."""
    from _timer_flow import nap

    r = Runtime(db).start(nap, {"seconds": 0.3})
    assert r.status == "waiting_timer"
    time.sleep(0.35)
    assert "tether_timers_due 1.0" in exposition(db).decode()  # what an operator sees before anything wakes it
    res = CliRunner().invoke(cli, ["runs", "wake", "--queue", "--json", "--db", str(db.url)])
    assert res.exit_code == 0 and json.loads(res.output) == {"queued": 1}, res.stderr
    client = engine.open_client(db)
    try:
        e = engine.Engine(db, "test")
        assert e.wake_timers(client) == 0 and e.wake_timers(client) == 0  # seen again by a worker, queued once
        segments = [w for w in client.list_workflows(load_input=False) if w.workflow_id.startswith(f"{r.run_id}:resume:timer-")]
        assert len(segments) == 1  # ...queued once
    finally:
        client.destroy()
    later = Runtime(db).start(nap, {"seconds": 0.5})  # due while the worker runs: its beat wakes it
    w = Worker(db, concurrency=2, heartbeat_s=0.2, dead_after_s=1.0, drain_s=0)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        got = engine.wait(db, [r.run_id, later.run_id], 60, until=("completed",))
        assert got == {r.run_id: "completed", later.run_id: "completed"}
    finally:
        w.stop()
        t.join()
    assert Runtime(db).get(later.run_id).outcome == "rested"
    assert Ledger(db).verify().ok


def test_a_timer_resumption_that_finds_the_run_not_yet_due_does_not_strand_it(db: Database) -> None:
    """A worker whose clock runs ahead (or any segment that resumed the run before it was due by
    the resumer's clock) burns the deterministic segment id `RUN:resume:timer-<digest(wake_at)>`:
    the run re-sleeps with the same wake_at, and every later wake_timers() enqueue of that id is a
    no-op in the engine, so the run stays waiting_timer past its due time for ever."""
    import threading
    import time

    from _timer_flow import nap

    from tether.orchestration import engine
    from tether.orchestration.worker import Worker
    from tether.record.canonical import digest

    r = Runtime(db).start(nap, {"seconds": 1.5})
    assert r.status == "waiting_timer" and r.wake_at
    # What Engine.wake_timers does on a worker whose clock is ~1.5 s ahead of the others:
    engine.enqueue_resume(db, r.run_id, segment=f"{r.run_id}:resume:timer-{digest(r.wake_at)[:12]}")
    w = Worker(db, concurrency=1, heartbeat_s=0.2, dead_after_s=1.0, drain_s=0)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        time.sleep(3.0)  # well past due; the worker beats ~15 times and calls wake_timers each time
        got = engine.wait(db, [r.run_id], 5, until=("completed",))
    finally:
        w.stop()
        t.join()
    assert got == {r.run_id: "completed"}


def test_runs_whose_timer_resumption_failed_do_not_block_every_later_timer(db: Database, monkeypatch: Any) -> None:
    """Engine.wake_timers looks at the oldest `limit` (100) due runs only. Runs that stay due
    because their resumption could not drive them (here: paused under a version no worker runs
    any more, so `not_driven`; the same for the stranding of the test above) head that list for
    ever, and a newer run's due timer is never queued. limit=2 instead of 100 keeps it small."""
    import threading
    import time

    from _timer_flow import nap

    from tether.orchestration import engine
    from tether.orchestration.worker import Worker

    monkeypatch.setattr(engine, "WAKE_PER_BEAT", 2)  # a small page, so the stuck runs fill it
    old = [Runtime(db).start(nap, {"seconds": 0.01}).run_id for _ in range(2)]
    with db.transaction() as conn:  # paused under a version this deploy no longer runs
        conn.execute(sa.text("update runs set workflow_version = 'v-old'"))
    time.sleep(0.05)
    new = Runtime(db).start(nap, {"seconds": 0.3})
    w = Worker(db, concurrency=2, heartbeat_s=0.2, dead_after_s=1.0, drain_s=0)
    t = threading.Thread(target=w.run)
    t.start()
    try:
        got = engine.wait(db, [new.run_id], 4, until=("completed",))
    finally:
        w.stop()
        t.join()
    assert got == {new.run_id: "completed"}
    # The old ones were tried WAKE_ATTEMPTS times, then left for a person with the reason; no longer due.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and engine.due_timers(db):
        w2 = Worker(db, concurrency=2, heartbeat_s=0.2, dead_after_s=1.0, drain_s=0)
        t2 = threading.Thread(target=w2.run)
        t2.start()
        time.sleep(1.0)
        w2.stop()
        t2.join()
    with db.read() as conn:
        rows = conn.execute(sa.text("select status, wake_at, error from runs where id in (:a, :b)"),
                            {"a": old[0], "b": old[1]}).all()  # fmt: skip
    for status, wake_at, error in rows:
        assert status == "waiting_timer" and wake_at is None  # kept, resumable by hand or --migrate
        assert error.startswith("not woken: its timer was due at") and "3 wake-ups did not resume it" in error
    assert "tether_timers_not_woken 2.0" in exposition(db).decode()  # what an operator alerts on


def test_evals_run_timers_on_virtual_time(tmp_path: Any) -> None:
    """A golden case of a workflow that sleeps a day is scored at once: eval time is virtual."""
    from pathlib import Path

    from _timer_flow import nap

    from tether.evals.golden import Case
    from tether.evals.runner import _template, run_case

    case = Case(id="nap-1", workflow="_timer_flow:nap", input={"seconds": 86400}, expected={"status": "completed"})
    result = run_case(case, nap, _template(nap, Path(tmp_path)), Path(tmp_path), None)
    assert (result.status, result.success) == ("completed", True), result  # not left waiting_timer for a day


def test_wake_due_with_a_given_now_fires_the_timers_it_picked(db: Database) -> None:
    """A run picked as due by `now` has that timer fire, whatever the clock says (a scheduler
    that runs on its own clock; tests of workflows that wait for hours)."""
    from _timer_flow import nap

    r = Runtime(db).start(nap, {"seconds": 3600})
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat(timespec="microseconds")
    [woken] = Runtime(db).wake_due(now=later)
    assert woken.status == "completed", woken


def test_a_queued_wake_up_of_a_run_on_other_code_is_refused_unless_migrated(db: Database, monkeypatch: Any) -> None:
    """What a worker does with a wake-up (engine options): on other code the run is left as it is,
    with the reason; with `migrate` (`runs resume --queue --migrate`) its journal is re-run on this code."""
    from _timer_flow import nap

    monkeypatch.setattr(engine, "_db", db)
    r = Runtime(db).start(nap, {"seconds": 3600})
    with db.transaction() as conn:
        conn.execute(sa.text("update runs set workflow_version = 'v-old' where id = :i"), {"i": r.run_id})
    args = (r.run_id, "_timer_flow:nap", {"seconds": 3600}, "ops", "default")
    out = engine.advance(*args, driver="engine:w1", options={"timer_due": r.wake_at})
    assert out["status"] == "not_driven" and "version v-old" in out["error"]
    assert Runtime(db).get(r.run_id).status == "waiting_timer"  # untouched
    out = engine.advance(*args, driver="engine:w2", options={"timer_due": r.wake_at, "migrate": True})
    assert (out["status"], out["outcome"]) == ("completed", "rested")  # the hour-long timer fired: it was due by the waker
    with db.read() as conn:
        assert conn.execute(sa.text("select workflow_version from runs where id = :i"), {"i": r.run_id}).scalar() == nap.version
