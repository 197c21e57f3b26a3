"""Retries with backoff and jitter, per-run deadlines, compensation and cancellation."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from _flows import POLICY, Empty, Job, Note, World

from tether import (
    ApprovalInbox,
    Args,
    Database,
    End,
    Ledger,
    PolicySet,
    RunContext,
    Runtime,
    Workflow,
    tool,
)
from tether.errors import Retryable, ToolError, WorkflowError
from tether.orchestration.replay import replay
from tether.record import runs as store
from tether.tools.tool import ToolContext


class Flaky:
    """An upstream that fails `failures` times, then applies the effect once per idempotency key."""

    def __init__(self, failures: int, error: type[Exception] = Retryable) -> None:
        self.failures, self.error = failures, error
        self.attempts: list[str] = []
        self.world = World()

    def send(self, key: str, text: str) -> dict[str, Any]:
        self.attempts.append(key)
        if len(self.attempts) <= self.failures:
            raise self.error(f"upstream busy (attempt {len(self.attempts)})")
        return self.world.apply(key, "sent", text)


@tool("mail.send", retries=3, retry_on=(ConnectionError,), backoff_s=0.5, max_backoff_s=1.5)
def send(ctx: ToolContext[Flaky], args: Note) -> dict[str, Any]:
    """Send a message upstream."""
    return ctx.deps.send(ctx.idempotency_key, args.text)


@tool("mail.send_once")
def send_once(ctx: ToolContext[Flaky], args: Note) -> dict[str, Any]:
    """Send, never retried."""
    return ctx.deps.send(ctx.idempotency_key, args.text)


def _run(db: Database, upstream: Flaky, tool_name: str) -> tuple[Any, list[float]]:
    wf: Workflow[Job, Flaky] = Workflow("mail", input=Job, tools=[send, send_once], policy=POLICY, deps=lambda d: upstream)

    @wf.state(initial=True)
    def go(run: RunContext[Job, Flaky]) -> Any:
        r = run.call(tool_name, {"text": "hello"})
        return End("completed" if r.ok else "failed", r.status, r.error)

    rt = Runtime(db)
    waits: list[float] = []
    proxy = rt._pipeline(wf).proxy
    proxy._sleep, proxy._random = waits.append, lambda: 1.0  # the top of each jitter range, no real waiting
    return rt.start(wf, {}), waits


def test_retryable_failures_are_retried_with_growing_waits_and_one_effect(db: Database) -> None:
    upstream = Flaky(failures=2)
    r, waits = _run(db, upstream, "mail.send")
    assert (r.status, r.outcome) == ("completed", "ok")
    assert waits == [0.5, 1.0]  # 0.5 * 2**(n-1), capped at 1.5; jitter draws from [0, that)
    assert len(set(upstream.attempts)) == 1 and len(upstream.attempts) == 3  # one idempotency key for every attempt
    assert upstream.world.effects == [("sent", "hello")]
    results = [e.body for e in Ledger(db).entries(r.run_id) if e.kind == "result"]
    assert [b["status"] for b in results] == ["ok"]


def test_retries_stop_at_the_limit_and_only_for_declared_errors(db: Database) -> None:
    r, waits = _run(db, Flaky(failures=10, error=ConnectionError), "mail.send")
    assert (r.status, r.outcome) == ("failed", "error")
    assert waits == [0.5, 1.0, 1.5] and "(after 4 attempts)" in (r.error or "")

    upstream = Flaky(failures=1, error=ValueError)  # not declared retryable: fails at once
    r, waits = _run(db, upstream, "mail.send")
    assert r.outcome == "error" and waits == [] and len(upstream.attempts) == 1

    upstream = Flaky(failures=1)  # a tool without retries does not retry even a Retryable
    r, waits = _run(db, upstream, "mail.send_once")
    assert r.outcome == "error" and waits == [] and len(upstream.attempts) == 1


def test_jitter_spreads_the_waits() -> None:
    delays = {send.retry.delay(3, __import__("random").random) for _ in range(200)}
    assert len(delays) > 150 and all(0 <= d < 1.5 for d in delays)
    with pytest.raises(ToolError, match="max_backoff_s >= backoff_s"):
        tool("x.y", retries=1, backoff_s=5, max_backoff_s=1)(lambda ctx, args: None)


@tool("clock.nap", timeout_s=None)
def nap(ctx: ToolContext[World], args: Empty) -> dict[str, Any]:
    """Take 0.3 s."""
    time.sleep(0.3)
    return {"napped": True}


def test_a_run_past_its_deadline_ends_before_its_next_call(db: Database) -> None:
    world = World()
    wf: Workflow[Job, World] = Workflow("slow", input=Job, tools=[nap, *[t for t in __import__("_flows").TOOLS]],
                                        policy=POLICY, deps=lambda d: world, deadline_s=0.2)  # fmt: skip

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        run.call("clock.nap", {})
        run.call("notes.add", {"text": "too late"})
        return End("completed", "done")

    r = Runtime(db).start(wf, {})
    assert r.status == "deadline_exceeded" and "0.2s deadline" in (r.error or "")
    assert world.effects == []  # the call after the deadline never ran
    with db.read() as conn:
        assert store.get_run(conn, r.run_id).active_s >= 0.3


# -- compensation ---------------------------------------------------------------------------
class Hold(Args):
    what: str


@tool("stock.hold", compensate=("stock.release", lambda args, out, key: {"what": args["what"]}))
def hold(ctx: ToolContext[World], args: Hold) -> dict[str, Any]:
    """Hold stock (undone by stock.release)."""
    return ctx.deps.apply(ctx.idempotency_key, "hold", args.what)


@tool("stock.release")
def release(ctx: ToolContext[World], args: Hold) -> dict[str, Any]:
    """Release held stock."""
    return ctx.deps.apply(ctx.idempotency_key, "release", args.what)



def _order(world: World) -> Workflow[Job, World]:
    wf: Workflow[Job, World] = Workflow("order", input=Job, tools=[hold, release, *_flow_tools()], policy=POLICY,
                                        deps=lambda d: world)  # fmt: skip

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        run.call("stock.hold", {"what": "A"})
        run.call("stock.hold", {"what": "B"})
        run.call("notes.add", {"text": "held"})  # no compensation declared: stays
        paid = run.call("payments.refund", {"transaction_id": "T1", "amount_usd": run.input.amount_usd})
        return End("completed" if paid.ok else "failed", paid.status)

    return wf


def _flow_tools() -> list[Any]:
    import _flows

    return list(_flows.TOOLS)


def test_a_failed_run_undoes_its_effects_newest_first(db: Database) -> None:
    world = World()
    wf = _order(world)
    r = Runtime(db).start(wf, {"amount_usd": 5000.0})  # over the approval line: waits
    assert r.status == "waiting_approval"
    ApprovalInbox(db).decide(r.approval_id or "", approve=False, by="lead", reason="no")
    r = Runtime(db).resume(r.run_id, wf)
    assert (r.status, r.outcome) == ("failed", "rejected")
    assert "compensated 2 of 2 effects" in (r.error or "")
    assert world.effects == [("hold", "A"), ("hold", "B"), ("note", "held"), ("release", "B"), ("release", "A")]
    undo = [e.body for e in Ledger(db).entries(r.run_id) if e.kind == "proposal" and e.body["call_id"].startswith("undo:")]
    assert [(b["tool"], b["args"], b["proposer"]) for b in undo] == [
        ("stock.release", {"what": "B"}, "compensation:order"), ("stock.release", {"what": "A"}, "compensation:order")]  # fmt: skip
    assert replay(db, r.run_id, workflow=wf).same  # the compensations replay from the journal too
    # Re-driving the ended run changes nothing: no second release.
    assert Runtime(db).resume(r.run_id, wf, stranded=True).status == "failed"
    assert len(world.effects) == 5


def test_cancelling_a_waiting_run_withdraws_its_request_and_undoes_its_effects(db: Database) -> None:
    world = World()
    wf = _order(world)
    r = Runtime(db).start(wf, {"amount_usd": 5000.0})
    with pytest.raises(WorkflowError, match="only a run waiting for approval or interrupted can be cancelled"):
        Runtime(db).cancel(Runtime(db).start(wf, {"amount_usd": 5.0}).run_id, wf, by="ops")
    c = Runtime(db).cancel(r.run_id, wf, by="ops", reason="customer withdrew")
    assert c.status == "cancelled" and "compensated 2 of 2" in (c.error or "")
    assert ApprovalInbox(db).list() == []
    assert ApprovalInbox(db).get(r.approval_id or "").status == "withdrawn"
    with pytest.raises(Exception, match="withdrawn|not pending"):
        ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="lead")
    assert [e for e in world.effects if e[0] == "release"] == [("release", "B"), ("release", "A")]
    kinds = [e.kind for e in Ledger(db).entries(r.run_id)]
    assert "run_cancelled" in kinds and kinds[-1] == "run_finished"


def test_triage_reverses_a_refund_when_its_run_fails_after_it(db: Database) -> None:
    import _patched_triage as patched

    from tether.workflows.triage import data, systems
    from tether.workflows.triage.flow import refund_target
    from tether.workflows.triage.intents import ROUTES

    bank = systems.Systems(db)
    data.seed_bank(bank)
    cid, (tx, amount) = next((c, t) for c in map(data.customer_id, range(data.CUSTOMERS))
                             if (t := refund_target(ROUTES["request_refund"], bank.lookup_customer(c)["transactions"]))
                             and t[1] < 100)  # fmt: skip
    with db.transaction() as conn:
        conn.execute(systems.tickets.insert().values(id="T-rf", customer_id=cid, status="new", created_at="t",
                                                     updated_at="t", text="I would like a refund for my last purchase please"))  # fmt: skip
    r = Runtime(db).start(patched.failing_reply, {"ticket_id": "T-rf"})
    assert r.status == "failed" and "compensated 1 of 1 effects" in (r.error or "")
    with db.read() as conn:
        rows = conn.execute(sa.select(systems.refunds.c.amount_cents).order_by(systems.refunds.c.created_at)).scalars().all()
        left = conn.execute(sa.select(systems.transactions.c.refunded_cents).where(systems.transactions.c.id == tx)).scalar()
    assert rows == [round(amount * 100), -round(amount * 100)] and left == 0


# -- seams found in review --------------------------------------------------------------------
RELEASE_NEEDS_OK = PolicySet.from_text("""
policies:
  - {name: refund_requires_approval, if: {tool: "payments.refund", amount_usd: "> 100"}, then: {action: require_human_approval}}
  - {name: release_needs_ok, if: {tool: "stock.release"}, then: {action: require_human_approval}}
""", "release.yaml")  # fmt: skip


def test_a_second_cancel_is_refused_and_keeps_the_undo_waiting(db: Database) -> None:
    world = World()
    wf = _order(world)
    wf._policy = RELEASE_NEEDS_OK
    r = Runtime(db).start(wf, {"amount_usd": 5000.0})
    c = Runtime(db).cancel(r.run_id, wf, by="ops")
    assert c.status == "waiting_approval"  # the first release waits for a person
    with pytest.raises(WorkflowError, match="already cancelled"):
        Runtime(db).cancel(r.run_id, wf, by="ops2")
    assert ApprovalInbox(db).get(c.approval_id or "").status == "pending"  # not withdrawn
    assert [e.kind for e in Ledger(db).entries(r.run_id)].count("run_cancelled") == 1


def test_the_kill_switch_does_not_drop_an_approved_undo(db: Database) -> None:
    from tether.orchestration import rollout

    world = World()
    wf = _order(world)
    wf._policy = RELEASE_NEEDS_OK
    r = Runtime(db).start(wf, {"amount_usd": 5000.0})
    ApprovalInbox(db).decide(r.approval_id or "", approve=False, by="lead")
    r = Runtime(db).resume(r.run_id, wf)
    assert r.status == "waiting_approval"  # failed; its first undo waits
    rollout.kill(db, "order", by="ops", reason="incident")
    while r.status == "waiting_approval":
        ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="lead")
        r = Runtime(db).resume(r.run_id, wf)
    assert (r.status, r.outcome) == ("failed", "rejected") and "compensated 2 of 2" in (r.error or "")
    assert world.effects[-2:] == [("release", "B"), ("release", "A")]
    with db.read() as conn:
        assert store.get_run(conn, r.run_id).steps == 1  # where the run stood, not reset


class Account(Args):
    customer_id: str


def test_a_retried_call_gets_a_fresh_credential(db: Database) -> None:
    attempts: list[str] = []

    @tool("acct.close", target="customer_id", retries=2, backoff_s=0, max_backoff_s=0)
    def close(ctx: ToolContext[World], args: Account) -> dict[str, Any]:
        """Close an account (fails once upstream, after the credential check)."""
        ctx.check_credential(args.customer_id)
        attempts.append(ctx.grant.credential or "")
        if len(attempts) == 1:
            raise Retryable("503 from upstream")
        return ctx.deps.apply(ctx.idempotency_key, "close", args.customer_id)

    world = World()
    wf: Workflow[Job, World] = Workflow("acct", input=Job, tools=[close], policy=POLICY, deps=lambda d: world)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        res = run.call("acct.close", {"customer_id": "C1"})
        return End("completed" if res.ok else "failed", res.status, res.error)

    r = Runtime(db).start(wf, {})
    assert r.status == "completed", r.error
    assert len(attempts) == 2 and attempts[0] != attempts[1] and world.effects == [("close", "C1")]


@tool("notes.add")
def shout(ctx: ToolContext[World], args: Note) -> dict[str, Any]:
    """Add a note, shouted (version 2 of the tool)."""
    return ctx.deps.apply(ctx.idempotency_key, "note-v2", args.text.upper())


def test_one_runtime_runs_two_versions_with_their_own_tools(db: Database) -> None:
    """A rollout drives the stable version and a candidate side by side in one process."""
    world = World()
    others = [t for t in _flow_tools() if t.name != "notes.add"]
    v1: Workflow[Job, World] = Workflow("roll", input=Job, tools=_flow_tools(), policy=POLICY, deps=lambda d: world)
    v2: Workflow[Job, World] = Workflow("roll", input=Job, tools=[shout, *others], policy=POLICY, deps=lambda d: world)
    for wf in (v1, v2):
        wf.state("go", initial=True)(lambda run: (run.call("notes.add", {"text": "hi"}), End("completed", "ok"))[1])
    rt = Runtime(db)
    rt.start(v1, {})
    rt.start(v2, {})
    assert world.effects == [("note", "hi"), ("note-v2", "HI")]


def _mig(world: World, go: Any) -> Workflow[Job, World]:
    wf: Workflow[Job, World] = Workflow("mig", input=Job, tools=_flow_tools(), policy=POLICY, deps=lambda d: world)
    wf.state("go", initial=True)(go)
    return wf


def _note_then_refund(run: RunContext[Job, World]) -> Any:
    run.call("notes.add", {"text": "first"})
    paid = run.call("payments.refund", {"transaction_id": "T1", "amount_usd": run.input.amount_usd})
    return End("completed" if paid.ok else "failed", paid.status)


def _refund_only(run: RunContext[Job, World]) -> Any:  # passes over the recorded note
    paid = run.call("payments.refund", {"transaction_id": "T1", "amount_usd": run.input.amount_usd})
    return End("completed" if paid.ok else "failed", paid.status)


def _note_only(run: RunContext[Job, World]) -> Any:  # ends before the recorded, approved refund
    run.call("notes.add", {"text": "first"})
    return End("completed", "skipped the refund")


@pytest.mark.parametrize("new_code", [_refund_only, _note_only], ids=["drops-a-done-call", "drops-the-pending-call"])
def test_migration_refuses_code_that_passes_over_a_recorded_call(db: Database, new_code: Any) -> None:
    world = World()
    old = _mig(world, _note_then_refund)
    r = Runtime(db).start(old, {"amount_usd": 5000.0})
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="lead")
    new = _mig(world, new_code)
    assert new.version != old.version
    m = Runtime(db).resume(r.run_id, new, migrate=True)
    assert m.status == "waiting_approval" and "not migrated" in (m.error or ""), m.error
    assert world.effects == [("note", "first")]  # nothing happened on the old run's behalf
    assert Runtime(db).resume(r.run_id, old).status == "completed"  # the old code still finishes it


def test_replay_reproduces_cancelled_and_deadline_endings(db: Database) -> None:
    world = World()
    wf = _order(world)
    r = Runtime(db).start(wf, {"amount_usd": 5000.0})
    assert Runtime(db).cancel(r.run_id, wf, by="ops").status == "cancelled"
    rep = replay(db, r.run_id, workflow=wf)
    assert (rep.replay_status, rep.same) == ("cancelled", True), rep.diff
    assert [d.replayed.tool for d in rep.diff if d.replayed][-2:] == ["stock.release", "stock.release"]

    slow: Workflow[Job, World] = Workflow("slow2", input=Job, tools=[nap, *_flow_tools()], policy=POLICY,
                                          deps=lambda d: world, deadline_s=0.2)  # fmt: skip

    @slow.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        run.call("clock.nap", {})
        run.call("notes.add", {"text": "too late"})
        return End("completed", "done")

    r = Runtime(db).start(slow, {})
    assert r.status == "deadline_exceeded"
    rep = replay(db, r.run_id, workflow=slow)
    assert (rep.replay_status, rep.same, rep.stopped) == ("deadline_exceeded", True, None)


@tool("stock.hold_then_die", timeout_s=None, compensate=("stock.release", lambda args, out, key: {"what": args["what"]}))
def hold_then_die(ctx: ToolContext[World], args: Hold) -> dict[str, Any]:
    """Hold, then (the first time) the process is interrupted before the result is recorded."""
    world = ctx.deps
    if getattr(world, "down", False):
        raise ConnectionError("the stock system is unreachable")
    out = world.apply(ctx.idempotency_key, "hold", args.what)
    if not getattr(world, "died", False):
        world.died = True  # type: ignore[attr-defined]
        raise KeyboardInterrupt
    return out


def _hold_two(world: World, name: str, policy: Any) -> Workflow[Job, World]:
    """Holds A, then B; the process dies while B runs (after its effect, before its record)."""
    wf: Workflow[Job, World] = Workflow(name, input=Job, tools=[hold, hold_then_die, release, *_flow_tools()],
                                        policy=policy, deps=lambda d: world)  # fmt: skip

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        run.call("stock.hold", {"what": "A"})
        run.call("stock.hold_then_die", {"what": "B"})
        return End("completed", "ok")

    return wf


def _interrupted_run(db: Database, wf: Workflow[Job, World]) -> str:
    with pytest.raises(KeyboardInterrupt):
        Runtime(db).start(wf, {})
    with db.read() as conn:
        [run_id] = conn.execute(sa.text("select id from runs")).scalars().all()
    return str(run_id)


def test_cancel_finishes_an_effect_that_was_in_flight_then_undoes_it(db: Database) -> None:
    """The process died while B ran (after the effect, before its record). Cancelling first
    finishes B under its own key (the system of record answers what it did, no second hold),
    then undoes B and A, newest first; replay reproduces it."""
    world = World()
    wf = _hold_two(world, "inflight", POLICY)
    run_id = _interrupted_run(db, wf)
    c = Runtime(db).cancel(run_id, wf, by="ops")
    assert c.status == "cancelled" and "compensated 2 of 2 effects" in (c.error or ""), c.error
    assert "may have happened" not in (c.error or "")
    assert world.effects == [("hold", "A"), ("hold", "B"), ("release", "B"), ("release", "A")]
    rep = replay(db, run_id, workflow=wf)
    assert (rep.replay_status, rep.same) == ("cancelled", True), rep.diff


def test_cancel_names_an_effect_it_could_not_finish(db: Database) -> None:
    world = World()
    wf = _hold_two(world, "inflight2", POLICY)
    run_id = _interrupted_run(db, wf)
    world.down = True  # the system of record is unreachable when the run is cancelled
    c = Runtime(db).cancel(run_id, wf, by="ops")
    assert c.status == "cancelled" and "compensated 1 of 1 effects" in (c.error or ""), c.error
    assert "not undone, may have happened: stock.hold_then_die (1.2)" in (c.error or "")


LIMITED = PolicySet.from_text(
    """
policies:
  - name: b_needs_approval
    if: {tool: "stock.hold_then_die"}
    then: {action: "require_human_approval"}
limits:
  - {name: one_b, tool: "stock.hold_then_die", per: run, rate: 1/hour}
""",
    "limited.yaml",
)


def test_finishing_an_approved_in_flight_call_does_not_draw_its_rate_limit_again(db: Database) -> None:
    """Same as test_cancel_finishes_an_effect_that_was_in_flight_then_undoes_it, but B needed an
    approval and has a 1-per-run limit: B's first (approved) run drew the token; finishing it
    under its own key on cancel must not draw again (commit 07a046a says it does not)."""
    world = World()
    wf = _hold_two(world, "inflight_appr", LIMITED)

    r = Runtime(db).start(wf, {})
    assert r.status == "waiting_approval"
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="lead")
    with pytest.raises(KeyboardInterrupt):
        Runtime(db).resume(r.run_id, wf)
    assert world.effects == [("hold", "A"), ("hold", "B")]
    c = Runtime(db).cancel(r.run_id, wf, by="ops")
    assert "may have happened" not in (c.error or ""), c.error
    assert world.effects == [("hold", "A"), ("hold", "B"), ("release", "B"), ("release", "A")]


class _Mail(Args):
    to: str


@tool("mail.send", timeout_s=None)
def _send_then_die(ctx: ToolContext[World], args: _Mail) -> dict[str, Any]:
    """No compensation: an email cannot be unsent. The first time, the process dies before sending."""
    world = ctx.deps
    if not getattr(world, "died", False):
        world.died = True  # type: ignore[attr-defined]
        raise KeyboardInterrupt
    return world.apply(ctx.idempotency_key, "mail", args.to)


def test_cancel_does_not_perform_an_irreversible_call_that_never_ran(db: Database) -> None:
    """The process died after mail.send was allowed but before it sent anything. Cancelling the
    run (to stop it) must not send the mail now: mail.send has no compensation, so finishing it
    cannot serve an undo; _finish_in_flight finishes every cleared call regardless."""
    world = World()
    wf: Workflow[Job, World] = Workflow("mailer", input=Job, tools=[hold, release, _send_then_die, *_flow_tools()],
                                        policy=PolicySet.from_text("policies: []\n", "p.yaml"), deps=lambda d: world)  # fmt: skip

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        run.call("stock.hold", {"what": "A"})
        run.call("mail.send", {"to": "customer@example.com"})
        return End("completed", "ok")

    with pytest.raises(KeyboardInterrupt):
        Runtime(db).start(wf, {})
    assert world.effects == [("hold", "A")]
    with db.read() as conn:
        [run_id] = conn.execute(sa.text("select id from runs")).scalars().all()
    c = Runtime(db).cancel(run_id, wf, by="ops", reason="wrong customer")
    assert c.status == "cancelled", c.error
    assert ("mail", "customer@example.com") not in world.effects, world.effects
    assert "not undone, may have happened: mail.send (1.2)" in (c.error or "")  # named, not made
