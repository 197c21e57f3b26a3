from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from _flows import POLICY, TOOLS, Job, Scripted, World, make_workflow

from tether import (
    ApprovalError,
    ApprovalInbox,
    Args,
    Database,
    End,
    Ledger,
    RunContext,
    Runtime,
    ToolCall,
    ToolContext,
    ToolError,
    ToolProxy,
    ToolRegistry,
    Workflow,
    WorkflowError,
    tool,
)  # fmt: skip
from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.record import runs as store
from tether.record.tables import runs as runs_table


def kinds(db: Database, run_id: str) -> list[str]:
    return [e.kind for e in Ledger(db).entries(run_id)]


def test_allowed_run_completes_and_records_every_step(db: Database) -> None:
    world = World()
    wf = make_workflow(world=world)
    r = Runtime(db).start(wf, {"amount_usd": 40}, started_by="ops")
    assert (r.status, r.outcome, r.steps) == ("completed", "refunded", 2)
    assert [w for w, _ in world.effects] == ["note", "refund", "note"]
    assert kinds(db, r.run_id) == ["run_started"] + ["proposal", "decision", "result"] * 3 + ["run_finished"]
    with db.read() as conn:
        events = store.load_events(conn, r.run_id)
    assert [e.kind for e in events if e.call_id == "2.1"] == ["proposal", "decision", "result"]
    assert Ledger(db).verify().ok


def test_deny_never_executes(db: Database) -> None:
    world = World()
    wf = Workflow("deleter", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: world)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        r = run.call("notes.delete_all", {})
        return End("completed", f"{r.status}:{r.decision.rules if r.decision else None}")

    r = Runtime(db).start(wf, {})
    assert r.outcome == "denied:['no_delete_in_v1']"
    assert world.effects == []


def test_approval_pauses_survives_restart_and_resumes_once(db_url: str) -> None:
    world = World()
    wf = make_workflow(world=world)
    db = Database(db_url)
    r = Runtime(db).start(wf, {"amount_usd": 250}, started_by="alice")
    assert r.status == "waiting_approval" and r.approval_id
    assert [w for w, _ in world.effects] == ["note"]
    db.dispose()  # the process may exit here

    db2 = Database(db_url)
    inbox = ApprovalInbox(db2)
    [req] = inbox.list()
    assert (req.tool, req.args, req.rules, req.started_by) == ("payments.refund", {"transaction_id": "T1", "amount_usd": 250.0}, ["refund_requires_approval"], "alice")
    with pytest.raises(ApprovalError, match="alice started run"):
        inbox.decide(req.id, approve=True, by="alice")
    with pytest.raises(ApprovalError, match="no approval request"):
        inbox.decide("apr_nope", approve=True, by="bob")
    inbox.decide(req.id, approve=True, by="bob", reason="checked")
    with pytest.raises(ApprovalError, match="already approved by bob"):
        inbox.decide(req.id, approve=False, by="carol")

    r2 = Runtime(db2).resume(r.run_id, wf)
    assert (r2.status, r2.outcome) == ("completed", "refunded")
    # The first note was replayed from the journal, not written again.
    assert [w for w, _ in world.effects] == ["note", "refund", "note"]
    assert Runtime(db2).resume(r.run_id, wf).status == "completed"  # resuming a finished run changes nothing
    assert [w for w, _ in world.effects] == ["note", "refund", "note"]
    k = kinds(db2, r.run_id)
    assert k.index("decision") < k.index("result")
    assert "approval_requested" in k and "approval_decided" in k
    assert Ledger(db2).verify().ok


def test_denied_approval_ends_without_side_effect(db: Database) -> None:
    world = World()
    wf = make_workflow(world=world)
    r = Runtime(db).start(wf, {"amount_usd": 250}, started_by="alice")
    ApprovalInbox(db).decide(r.approval_id or "", approve=False, by="bob", reason="no receipt")
    r2 = Runtime(db).resume(r.run_id, wf)
    assert (r2.status, r2.outcome) == ("escalated", "refund rejected")
    assert [w for w, _ in world.effects] == ["note"]


def test_resume_while_still_pending_stays_waiting(db: Database) -> None:
    wf = make_workflow()
    r = Runtime(db).start(wf, {"amount_usd": 250}, started_by="alice")
    with db.transaction() as conn:  # as if a resumer had claimed it before a decision
        conn.execute(runs_table.update().values(status="waiting_approval"))
    assert Runtime(db).resume(r.run_id, wf).status == "waiting_approval"
    assert Runtime(db).get(r.run_id).status == "waiting_approval"


def test_step_budget_ends_a_cycle(db: Database) -> None:
    wf = make_workflow(max_steps=5)
    r = Runtime(db).start(wf, {"loops": 1})
    assert r.status == "budget_exhausted" and r.steps == 5
    assert "step budget of 5" in (r.error or "")


def test_repeated_identical_call_is_a_loop(db: Database) -> None:
    wf = Workflow("looper", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: World())

    @wf.state(initial=True, goes_to=["again"])
    def first(run: RunContext[Job, World]) -> Any:
        run.call("notes.add", {"text": "same"})
        return "again"

    @wf.state(goes_to=["again"])
    def again(run: RunContext[Job, World]) -> Any:
        run.call("notes.add", {"text": "same"})
        return "again"

    r = Runtime(db).start(wf, {})
    assert r.status == "loop_detected" and r.steps == 2
    assert "repeated identical call notes.add" in (r.error or "")


def test_calls_per_step_are_bounded(db: Database) -> None:
    wf = Workflow("chatty", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: World(), max_calls_per_step=3)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        for i in range(10):
            run.call("notes.add", {"text": str(i)})
        return End()

    r = Runtime(db).start(wf, {})
    assert r.status == "budget_exhausted" and "more than 3 calls" in (r.error or "")


def test_bad_transition_and_crashing_state_fail_the_run(db: Database) -> None:
    wf = Workflow("bad", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: World())

    @wf.state(initial=True, goes_to=["b"])
    def a(run: RunContext[Job, World]) -> Any:
        return "c"

    @wf.state()
    def b(run: RunContext[Job, World]) -> Any:
        return End()

    r = Runtime(db).start(wf, {})
    assert r.status == "failed" and "went to 'c'" in (r.error or "")

    wf2 = Workflow("crash", input=Job, tools=TOOLS, policy=POLICY)

    @wf2.state(initial=True)
    def c(run: RunContext[Job, World]) -> Any:
        raise KeyError("oops")

    r = Runtime(db).start(wf2, {})
    assert r.status == "failed" and r.error == "KeyError: 'oops'"
    assert Ledger(db).verify().ok


def test_model_chooses_a_tool_within_the_bounded_set(db: Database) -> None:
    world = World()
    model = Scripted([
        {"option": "payments.refund", "args": {"transaction_id": "T9", "amount_usd": 20}, "confidence": 0.9},
        {"option": "shell.exec", "args": {}, "confidence": 0.99},
        {"option": "payments.refund", "args": {"transaction_id": "T9", "amount_usd": "lots"}, "confidence": 0.9},
    ])  # fmt: skip
    wf = Workflow("agent", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: world, model=lambda: model)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        statuses = []
        for _ in range(3):
            choice = run.choose("act", options=["payments.refund", "notes.add"], observation={"text": "refund me"})
            statuses.append(run.act(choice).status if choice.ok else f"refused: {choice.error}")
        return End("completed", " | ".join(statuses))

    r = Runtime(db).start(wf, {})
    assert r.outcome == "ok | refused: model chose 'shell.exec', not one of the 2 options offered | invalid"
    assert world.effects == [("refund", ("T9", 20.0))]
    # The model saw the tools' schemas, and its proposals are attributed to it.
    assert [t["name"] for t in model.asked[0].tools] == ["payments.refund", "notes.add"]
    proposals = [e.body for e in Ledger(db).entries(r.run_id) if e.kind == "proposal"]
    assert proposals[0]["proposer"] == "model:scripted"
    assert "'amount_usd'" in proposals[1]["error"]


def test_workflow_input_and_definition_errors(db: Database) -> None:
    wf = make_workflow()
    with pytest.raises(WorkflowError, match="invalid input for refunds: amount_usd"):
        Runtime(db).start(wf, {"amount_usd": "a lot"})
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs_table)).scalar() == 0
    empty = Workflow("empty", input=Job, tools=[], policy=POLICY)
    with pytest.raises(WorkflowError, match="no initial state"):
        Runtime(db).start(empty, {})
    with pytest.raises(WorkflowError, match="declared twice"):
        wf.state("start")(lambda run: End())


# -- the tool proxy on its own -------------------------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def proposed(self, call: ToolCall, args: Any, error: Any, schema: Any = None) -> None:
        self.seen.append(("proposed", error))

    def decided(self, call: ToolCall, decision: Any) -> None:
        self.seen.append(("decided", decision.action))

    def approval_requested(self, call: ToolCall, decision: Any) -> str:
        return "apr_x"

    def finished(self, call: ToolCall, result: Any) -> None:
        self.seen.append(("finished", result.status))


@pytest.mark.parametrize(
    ("tool_name", "args", "error"),
    [
        ("notes.nope", {"text": "x"}, "unknown tool 'notes.nope'"),
        ("notes.add", {}, "invalid arguments for notes.add: 'text' is a required property"),
        ("notes.add", {"text": "x", "extra": 1}, "invalid arguments for notes.add: Additional properties are not allowed ('extra' was unexpected)"),
        ("notes.add", {"text": 5}, "invalid arguments for notes.add: argument 'text': 5 is not of type 'string'"),
        ("payments.refund", {"transaction_id": "T", "amount_usd": "5"}, "argument 'amount_usd': '5' is not of type 'number'"),
    ],
)  # fmt: skip
def test_proxy_rejects_bad_calls_before_the_gate(tool_name: str, args: dict, error: str) -> None:
    world, rec = World(), _Recorder()
    proxy = ToolProxy(ToolRegistry(TOOLS))
    from tether.types import RunInfo

    res = CallPipeline(proxy).propose(ToolCall(call_id="1.1", tool=tool_name, args=args, proposer="test"), CallScope(RunInfo("r", 1, "t"), POLICY, rec, world))  # fmt: skip
    assert res.status == "invalid" and error in (res.error or "")
    assert rec.seen == [("proposed", res.error), ("finished", "invalid")]  # never decided, never executed
    assert world.effects == []


def test_proxy_timeout_and_tool_errors() -> None:
    from tether.types import RunInfo

    proxy, rec = ToolProxy(ToolRegistry(TOOLS)), _Recorder()
    run = RunInfo("r", 1, "t")
    res = CallPipeline(proxy).propose(ToolCall(call_id="1", tool="clock.sleep", args={"seconds": 2}, proposer="t"), CallScope(run, POLICY, rec, World()))  # fmt: skip
    assert res.status == "timeout" and res.error == "clock.sleep did not finish within 0.2s"
    res = CallPipeline(proxy).propose(ToolCall(call_id="2", tool="clock.boom", args={}, proposer="t"), CallScope(run, POLICY, rec, World()))  # fmt: skip
    assert res.status == "error" and res.error == "RuntimeError: upstream said no"
    proxy.close()


def test_tools_cannot_be_called_around_the_proxy() -> None:
    from _flows import add_note

    with pytest.raises(TypeError):
        add_note(None, None)  # type: ignore[operator]
    with pytest.raises(ToolError, match="accepts unknown fields"):
        from pydantic import BaseModel

        class Loose(BaseModel):
            x: int

        @tool("loose.call")
        def loose(ctx: ToolContext[None], args: Loose) -> None: ...
    with pytest.raises(ToolError, match="must look like 'family.action'"):
        tool("NoDots")


def test_decision_is_durable_before_the_side_effect(db: Database) -> None:
    seen: list[list[str]] = []

    class Probe(Args):
        n: int

    @tool("probe.effect")
    def effect(ctx: ToolContext[Database], args: Probe) -> dict[str, Any]:
        # Read the ledger from another connection while the tool runs.
        seen.append([e.kind for e in Ledger(ctx.deps).entries(ctx.run_id)])
        return {}

    wf = Workflow("probe", input=Job, tools=[effect], policy=POLICY, deps=lambda d: d)

    @wf.state(initial=True)
    def go(run: RunContext[Job, Database]) -> Any:
        run.call("probe.effect", {"n": 1})
        return End()

    Runtime(db).start(wf, {})
    assert seen == [["run_started", "proposal", "decision"]]
