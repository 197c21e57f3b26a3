"""Replay: re-execute a recorded run against its recording, under patched code or policies.

The workflow's state functions run again. Model questions are answered from the
recorded choices, authorised tool calls from the recorded results, approvals
from the recorded decisions; the policy gate decides afresh (under the policy
given, or the one the run was recorded under). Nothing is written and no live
system or model is called: when the code asks for something the recording does
not hold, replay stops there and says so.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from tether.errors import RunNotFound, TetherError
from tether.guardrails.loading import Policy, policy_from_text
from tether.guardrails.policy import Decision
from tether.models.base import Choice, DecisionRequest
from tether.models.meter import RunMeter
from tether.models.prices import load_prices
from tether.orchestration._journal import MemoryJournal, recorded_call
from tether.orchestration.context import EndRun, RunContext, Sleep, Suspend
from tether.orchestration.environment import Replayed
from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.orchestration.runtime import drive
from tether.orchestration.session import is_session, recorded_tool
from tether.orchestration.workflow import Workflow, load
from tether.record import runs as store
from tether.record.canonical import digest
from tether.record.db import Database
from tether.tools.calls import ToolCall
from tether.tools.proxy import Outcome, ToolProxy
from tether.tools.registry import ToolRegistry
from tether.tools.tool import Tool, ToolContext
from tether.types import Approval, RunInfo


class ReplayGap(TetherError):
    """The replayed code needs an answer the recording does not hold."""


class IncompatibleRecording(TetherError):
    pass


@dataclass(frozen=True)
class Action:
    """One proposed tool call of a run, with what the gate and the tool made of it."""

    step: int
    state: str
    tool: str
    args: dict[str, Any]
    decision: str | None  # None: refused before the gate (invalid)
    rules: list[str]
    status: str  # ok | invalid | denied | pending_approval | rejected | error | timeout

    @property
    def key(self) -> str:
        return digest([self.tool, self.args])


def actions(events: list[store.Event]) -> list[Action]:
    """The run's tool calls in order, from its journal (a re-proposed call counts once)."""
    by_call: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for e in events:
        if e.call_id is None or "." not in e.call_id:
            continue
        a = by_call.get(e.call_id)
        if e.kind == "proposal" and a is None:
            a = by_call[e.call_id] = {"step": e.step, "state": e.state, "tool": e.data["tool"], "args": e.data["args"],
                                      "decision": None, "rules": [], "status": "invalid" if e.data.get("error") else "proposed"}  # fmt: skip
            order.append(e.call_id)
        elif a is None:
            continue
        elif e.kind == "decision":
            a["decision"], a["rules"] = e.data["action"], e.data["rules"]
            if e.data["action"] == "require_human_approval":
                a["status"] = "pending_approval"
        elif e.kind == "result":
            a["status"] = e.data["status"]
    return [Action(**by_call[c]) for c in order]


@dataclass
class DiffEntry:
    kind: str  # same | changed | added | missing
    step: int
    original: Action | None
    replayed: Action | None
    what: str = ""


@dataclass
class ReplayReport:
    run_id: str
    workflow: str
    original_status: str
    replay_status: str
    same: bool
    first_divergence: int | None
    diff: list[DiffEntry]
    stopped: str | None
    policy_hash: str
    original_policy_hash: str
    workflow_version: str
    original_workflow_version: str
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    cost_ceiling_usd: float | None = None  # the ceiling the run ran under, applied again

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Recording:
    """The recorded answers, consumed in order as the replayed code asks for them."""

    def __init__(self, run_id: str, events: list[store.Event]) -> None:
        self.run_id = run_id
        self.choices: dict[tuple[str, str], list[Choice]] = defaultdict(list)
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        # Approvals are keyed by what the code sent, results by the validated arguments.
        self.approvals: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.novelty: dict[str, list[bool]] = defaultdict(list)  # risk feature, as it was when recorded
        # Results recorded once the run was stopping (cancelled, or ended and undoing its effects)
        # came from finishing in-flight calls and from undoing: the states never saw them.
        stop = min((e.seq for e in events if e.kind in ("cancel", "compensating")), default=None)
        self.held: list[tuple[str, dict[str, Any]]] = []
        fired = {e.call_id for e in events if e.kind == "timer_fired"}
        self.timers = [e.call_id in fired for e in events if e.kind == "timer"]  # in order: did each fire?
        proposals: dict[str, tuple[str, str]] = {}
        self.last_model = "unknown"
        self.costs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)  # what each choice cost, as recorded
        self.last_cost: dict[str, Any] = {}
        for e in events:
            if e.kind == "choice":
                self.choices[(e.data["point"], e.data["request_digest"])].append(Choice.model_validate(e.data["choice"]))
                self.costs[(e.data["point"], e.data["request_digest"])].append(e.data.get("cost") or {})
                self.last_model = e.data["choice"]["model"]
            elif e.kind == "proposal" and e.call_id:
                if e.call_id not in proposals:
                    self.novelty[e.data["tool"]].append(bool(e.data.get("risk_context", {}).get("novel")))
                sent = f"{e.data['tool']}|{e.data['sent_digest']}"
                proposals.setdefault(e.call_id, (digest([e.data["tool"], e.data["args"]]), sent))
            elif e.kind == "approval" and e.call_id in proposals:
                self.approvals[proposals[e.call_id][1]].append(e.data)
            elif e.kind == "result" and e.call_id in proposals and e.data["status"] in ("ok", "error", "timeout"):
                if stop is not None and e.seq > stop:
                    self.held.append((proposals[e.call_id][0], e.data))
                else:
                    self.results[proposals[e.call_id][0]].append(e.data)

    def timer_fired(self) -> bool:
        return self.timers.pop(0) if self.timers else False

    def stopping(self) -> None:
        """The replayed run is stopping too: the answers recorded while it stopped become available."""
        for key, data in self.held:
            self.results[key].append(data)
        self.held = []

    def estimate(self, request: DecisionRequest) -> list[Any]:
        """A call the run never made, estimated as the meter estimates any model (priced as the
        model of its last recorded choice), for the recorded ceiling."""
        from tether.models.meter import estimate

        last = self.last_model

        class _Like:
            name = last

        return estimate(_Like(), request)

    def choose(self, request: DecisionRequest) -> Choice:
        key = (request.point, digest(request))
        queue = self.choices.get(key)
        if not queue:
            raise ReplayGap(f"the code asks the model {request.point!r} with an input run {self.run_id} never sent it")
        self.last_cost = self.costs[key].pop(0)
        return queue.pop(0)

    def execute(self, t: Tool, ctx: ToolContext[Any], args: Any) -> Outcome:
        queue = self.results.get(digest([t.name, t.dump(args)]))
        if not queue:
            raise ReplayGap(f"step {ctx.step}: {t.name} with these arguments was never executed in run {self.run_id}; "
                            "replay does not call live systems")  # fmt: skip
        r = queue.pop(0)
        return r["status"], r.get("output"), r.get("error"), 0.0

    def novel(self, tenant: str, tool: str) -> bool:
        queue = self.novelty.get(tool)
        return queue.pop(0) if queue else False

    def approval(self, call: ToolCall, decision: Decision) -> Approval | None:
        """The recorded human answer for this call, applied to the decision made now."""
        queue = self.approvals.get(f"{call.tool}|{digest(call.args)}")
        if not queue:
            return None
        d = queue.pop(0)
        return Approval(d["approval_id"], d["approved"], d["by"] or "", None, decision)


class _ReplayMeter(RunMeter):
    """The run's recorded ceiling applied again. A call the run made is checked with the estimate
    it was checked with then and charged what it cost then; the call it never made (the one its
    ceiling stopped) is estimated afresh, as the meter estimates any model."""

    def __init__(self, recording: _Recording, ceiling: float) -> None:
        super().__init__(load_prices(), ceiling)
        self._recording = recording

    def check(self, model: Any, request: DecisionRequest) -> str | None:
        queue = self._recording.costs.get((request.point, digest(request)))
        if not queue:
            return super().check(model, request)
        worst = queue[0].get("estimate_usd")
        return None if worst is None else self.over(request.point, worst)  # no estimate recorded: it passed then

    def charge(self, choice: Choice) -> dict[str, Any]:
        cost = self._recording.last_cost
        self.spent += cost.get("cost_usd", 0.0)
        return cost


class _RecordedModel:
    name = "recording"

    def __init__(self, recording: _Recording) -> None:
        self._recording = recording

    def choose(self, request: DecisionRequest) -> Choice:
        return self._recording.choose(request)

    def estimate(self, request: DecisionRequest) -> list[Any]:
        return self._recording.estimate(request)


def replay(
    db: Database, run_id: str, *, workflow: Workflow[Any, Any] | None = None, policy: Policy | None = None
) -> ReplayReport:
    with db.read() as conn:
        row = store.get_run(conn, run_id)
        if row.record_format == 0:
            raise IncompatibleRecording(f"the recording of run {run_id} was purged (retention); it cannot be replayed")
        if row.record_format != store.RECORD_FORMAT:
            raise IncompatibleRecording(
                f"run {run_id} was recorded in format {row.record_format}; this tether replays format {store.RECORD_FORMAT}"
            )
        events = store.load_events(conn, run_id)
        source, text = store.policy_text(conn, row.policy_hash)
    if is_session(row.workflow_ref):
        return _replay_session(db, row, events, policy or policy_from_text(text, source))
    if row.status == "running":
        raise RunNotFound(f"run {run_id} is still running; replay a run that has paused or ended")
    wf = workflow or load(row.workflow_ref)
    wf.check()
    pol = policy or policy_from_text(text, source)
    recording = _Recording(run_id, events)
    journal = MemoryJournal(db, run_id, [])
    proxy = CallPipeline(ToolProxy(wf.tools, executor=recording.execute))
    model = _RecordedModel(recording)
    # The ceiling the run ran under (recorded since 0010): a run that ended on it ends there again.
    meter = _ReplayMeter(recording, row.cost_ceiling_usd) if row.cost_ceiling_usd is not None else None
    ctx = RunContext(
        run_id=run_id, workflow=wf, input=wf.parse_input(row.input), tenant=row.tenant, started_by=row.started_by,
        journal=journal, pipeline=proxy, policy=pol, deps=None, model=lambda: model, env=Replayed(recording),
        meter=meter,
    )  # fmt: skip
    ctx.finishable = {e.call_id for e in events if e.kind == "result" and e.call_id}
    stopped = error = None
    outside_end = False
    cancelled = any(e.kind == "cancel" for e in events)
    try:
        try:
            status, error = _run(wf, ctx)
        except (Suspend, ReplayGap) as stop:
            if cancelled:
                status, error = store.CANCELLED, None  # where the run stopped, someone cancelled it
            elif isinstance(stop, ReplayGap) and row.status in _OUTSIDE_ENDINGS:
                # Ended from outside the code (clock, kill switch, spend): the recording ends there too,
                # and the call the replay reached past that end is not an action of the run.
                status, error, outside_end = row.status, row.error, True
            else:
                raise
        if status in wf.compensate_on:
            recording.stopping()
            ctx.compensate()
    except Sleep:
        status = "waiting_timer"
    except Suspend:
        status = "waiting_approval"
    except ReplayGap as e:
        status, stopped = "stopped", str(e)
    finally:
        proxy.close()

    replay_events = journal.events()
    if outside_end:
        ops = {e.call_id for e in events if e.call_id}
        replay_events = [e for e in replay_events if e.call_id is None or e.call_id in ops or e.call_id.startswith("undo:")]
    original, replayed = actions(events), actions(replay_events)
    diff = _diff(original, replayed)
    first = next((d.step for d in diff if d.kind != "same"), None)
    if first is None and status != row.status:
        first = journal.step  # same actions, different ending
    counts = {k: sum(d.kind == k for d in diff) for k in ("same", "changed", "added", "missing")}
    return ReplayReport(
        run_id=run_id, workflow=wf.name, original_status=row.status, replay_status=status,
        same=first is None and stopped is None, first_divergence=first, diff=diff, stopped=stopped,
        policy_hash=pol.hash, original_policy_hash=row.policy_hash, workflow_version=wf.version,
        original_workflow_version=row.workflow_version, error=error, counts=counts, cost_ceiling_usd=row.cost_ceiling_usd,
    )  # fmt: skip


_OUTSIDE_ENDINGS = ("deadline_exceeded", "halted", "cost_ceiling")


def _replay_session(db: Database, row: Any, events: list[store.Event], pol: Policy) -> ReplayReport:
    """A session has no code to run again: its agent lives elsewhere. Each recorded call is proposed
    again, in order, under `pol`, answered from the recording. A call the new policy would let
    through that the session never executed has no recorded result: it shows as proposed (an
    action the agent would have seen differently), and replay goes on with the next call."""
    tools = ToolRegistry([recorded_tool(d, _not_live) for d in row.input.get("tools", [])])
    recording = _Recording(row.id, events)
    by_call = {e.call_id: e.data for e in events if e.kind == "approval" and e.call_id}
    journal = MemoryJournal(db, row.id, [])
    pipeline = CallPipeline(ToolProxy(tools, executor=recording.execute))
    seen: set[str] = set()
    try:
        for e in events:
            if e.kind != "proposal" or not e.call_id or e.call_id in seen:
                continue
            seen.add(e.call_id)
            call = recorded_call(e)
            journal.step, journal.state = e.step, e.state
            scope = CallScope(RunInfo(row.id, e.step, row.tenant), pol, journal)
            try:
                result = pipeline.propose(call, scope)
                a = by_call.get(e.call_id)
                if result.status == "pending_approval" and a is not None and result.decision is not None:
                    journal.approval_applied(call, a["approval_id"], a["approved"], a["by"])
                    pipeline.execute_approved(call, scope, Approval(a["approval_id"], a["approved"], a["by"] or "", None,
                                                                    result.decision))  # fmt: skip
            except ReplayGap:
                continue
    finally:
        pipeline.close()
    original, replayed = actions(events), actions(journal.events())
    diff = _diff(original, replayed)
    first = next((x.step for x in diff if x.kind != "same"), None)
    counts = {k: sum(x.kind == k for x in diff) for k in ("same", "changed", "added", "missing")}
    return ReplayReport(
        run_id=row.id, workflow=row.workflow, original_status=row.status, replay_status=row.status, same=first is None,
        first_divergence=first, diff=diff, stopped=None, policy_hash=pol.hash, original_policy_hash=row.policy_hash,
        workflow_version=row.workflow_version, original_workflow_version=row.workflow_version, error=row.error,
        counts=counts, cost_ceiling_usd=row.cost_ceiling_usd,
    )  # fmt: skip


def _not_live(args: Any) -> Any:
    raise ReplayGap("replay does not call live systems")


def _run(wf: Workflow[Any, Any], ctx: RunContext[Any, Any]) -> tuple[str, str | None]:
    """The replayed run's ending: (status, error). Suspend and ReplayGap go to the caller."""
    try:
        return drive(wf, ctx).status, None
    except ReplayGap:
        raise
    except EndRun as e:
        return e.status, e.error
    except TetherError as e:
        return "failed", str(e)
    except Exception as e:  # noqa: BLE001 - patched code may crash; that is a finding, not a replay failure
        return "failed", f"{type(e).__name__}: {e}"


def _diff(original: list[Action], replayed: list[Action]) -> list[DiffEntry]:
    out: list[DiffEntry] = []
    matcher = difflib.SequenceMatcher(a=[a.key for a in original], b=[a.key for a in replayed], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        olds, news = original[i1:i2], replayed[j1:j2]
        if op == "equal":
            for o, n in zip(olds, news, strict=True):
                if (o.decision, o.status) == (n.decision, n.status):
                    out.append(DiffEntry("same", n.step, o, n))
                else:
                    out.append(DiffEntry("changed", n.step, o, n, f"{o.decision}/{o.status} -> {n.decision}/{n.status}"))
            continue
        for k in range(max(len(olds), len(news))):
            o = olds[k] if k < len(olds) else None
            n = news[k] if k < len(news) else None
            if o and n:
                what = f"{o.tool} {o.args} -> {n.tool} {n.args}" if o.tool != n.tool else f"{o.tool} arguments changed"
                out.append(DiffEntry("changed", n.step, o, n, what))
            elif n:
                out.append(DiffEntry("added", n.step, None, n, f"{n.tool} {n.decision}/{n.status}"))
            elif o:
                out.append(DiffEntry("missing", o.step, o, None, f"{o.tool} no longer proposed"))
    return out
