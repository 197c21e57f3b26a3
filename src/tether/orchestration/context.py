"""RunContext: what a state function gets. The only doors to models and tools.

The author-facing methods (`choose`, `act`, `call`, `label`, `sleep`, `wait_until`) are
thin: a tool call goes through the governed call (`CallPipeline`) as a session's does;
replay memoisation happens in one place (`_replayed_or_live`); undoing effects is
`compensation.Undo`; live-or-replayed differences (clock, timers, approvals, novelty,
tracer) are the `environment`'s; span and prompt-store shapes are `spans` and `prompts`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from tether.errors import NonDeterminismError, WorkflowError
from tether.guardrails import approvals
from tether.guardrails.provenance import Origin, Provenance, Trust, learn_result
from tether.models.base import CallContext, Choice, DecisionRequest, Model, call_context
from tether.orchestration import spans
from tether.orchestration._journal import Journal
from tether.orchestration.compensation import Undo
from tether.orchestration.environment import Environment, Live
from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.orchestration.prompts import prompt_record
from tether.orchestration.workflow import DepsT, InputT
from tether.record.canonical import digest
from tether.record.tracing import RUN_ID
from tether.tools.tool import Tool
from tether.types import Approval, Decision, RunInfo, ToolCall, ToolResult

if TYPE_CHECKING:
    from tether.orchestration.workflow import Workflow


# Both derive from BaseException so an `except Exception` in state code cannot
# swallow a pause or the end of a run.
class Suspend(BaseException):
    """The run waits for a human; it will be re-driven from its journal."""

    def __init__(self, approval_id: str) -> None:
        super().__init__(approval_id)
        self.approval_id = approval_id


class Sleep(Suspend):
    """The run waits for a time; it holds no process and is resumed from the database when due."""

    def __init__(self, wake_at: str) -> None:
        super().__init__("")
        self.wake_at = wake_at


_FIRED = "fired"  # a timer the journal shows fired: the code goes on past it
T = TypeVar("T")


class EndRun(BaseException):
    """The runtime ends the run (budget, loop) whatever the state code wanted."""

    def __init__(self, status: str, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class RunContext(Generic[InputT, DepsT]):
    """What a workflow's state function gets: the run's input and data, and the only doors to models and tools."""

    def __init__(
        self,
        *,
        run_id: str,
        workflow: Workflow[InputT, DepsT],
        input: InputT,
        tenant: str,
        started_by: str,
        journal: Journal,
        pipeline: CallPipeline,
        policy: Any,  # tether.guardrails.loading.Policy
        deps: DepsT,
        model: Callable[[], Model],
        env: Environment | None = None,  # live (default) or replayed
        deadline: float | None = None,  # time.monotonic() past which the run ends deadline_exceeded
        meter: Any = None,  # tether.models.meter.RunMeter: prices calls, enforces the run's cost ceiling
    ) -> None:
        self.id = run_id
        self.workflow = workflow
        self.input = input
        self.tenant = tenant
        self.started_by = started_by
        self._deps = deps  # for the tools only: state code reaches the world through `call`
        self.data: dict[str, Any] = {}  # state carried between states, rebuilt on replay
        self._journal = journal
        self._pipeline = pipeline
        self._policy = policy
        self._model = model
        self._env: Environment = env or Live()
        self._meter = meter
        self._ops_in_step = 0
        self._seen_calls: set[str] = set()
        self._ended: EndRun | None = None  # once the runtime ends a run, every further door stays shut
        self._deadline = deadline
        self.in_flight: list[str] = []  # calls compensate() found decided but never finished
        # Replay finishes only the calls the recorded run finished (it cannot call live systems).
        self.finishable: set[str] | None = None
        self.provenance = Provenance()
        fields = input.model_dump(mode="json") if isinstance(input, BaseModel) else {"input": input}
        for name, value in (fields.items() if isinstance(fields, dict) else ()):
            trust: Trust = "trusted" if name in workflow.trusted_input else "untrusted"
            # A trusted field is trusted as itself: a ticket id vouches for a `ticket_id` argument only.
            self.provenance.add(value, "input", trust, scope=name if trust == "trusted" else None)

    @property
    def state(self) -> str:
        return self._journal.state

    @property
    def step(self) -> int:
        return self._journal.step

    # -- called by the runner -------------------------------------------------
    def _check_deadline(self) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise self._end("deadline_exceeded", f"the run used up its {self.workflow.deadline_s:g}s deadline in {self.state!r}")

    def _enter(self, state: str, step: int) -> None:
        self._journal.state, self._journal.step, self._ops_in_step = state, step, 0
        self._check_deadline()
        op = str(step)

        def replayed(recorded: list[Any]) -> bool:
            if recorded[0].data["state"] != state:
                raise NonDeterminismError(
                    f"step {step}: the run recorded state {recorded[0].data['state']!r}, the code now enters {state!r}"
                )
            return True

        self._replayed_or_live(op, replayed, lambda: self._journal.add("enter", op, {"state": state}), guard=False)

    def _end(self, status: str, error: str) -> EndRun:
        self._ended = self._ended or EndRun(status, error)
        return self._ended

    def _next_op(self) -> str:
        if self._ended:
            raise self._ended
        self._check_deadline()
        if self._ops_in_step >= self.workflow.max_calls_per_step:
            raise self._end(
                "budget_exhausted",
                f"state {self.state!r} made more than {self.workflow.max_calls_per_step} calls in one step",
            )
        self._ops_in_step += 1
        return f"{self.step}.{self._ops_in_step}"

    def _replayed_or_live(self, op: str, replayed: Callable[[list[Any]], T | None], live: Callable[[], T], *,
                          guard: bool = True) -> T:  # fmt: skip
        """The one place replay memoisation happens. An op the journal holds is answered by
        `replayed` (None: run it live after all, as a call decided but never finished); any other
        op runs `live`, after checking (`guard`) that the code passed over no recorded op."""
        recorded = self._journal.replayed(op)
        if recorded:
            out = replayed(recorded)
            if out is not None:
                return out
        if guard:
            self._check_nothing_skipped(op)
        return live()

    # -- the model door -------------------------------------------------------
    def choose(
        self,
        point: str,
        options: Sequence[str],
        observation: Mapping[str, Any],
        *,
        instructions: str = "",
        schemas: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Choice:
        """Ask the model to pick one of `options`. Tool-name options come with their schemas;
        `schemas` gives other options arguments of a shape (a plan), which providers ask for
        by tool calling and validate before the answer comes back."""
        op = self._next_op()
        tools = [self.workflow.tools.get(o).spec() for o in options if o in self.workflow.tools]
        tools += [{"name": o, "description": f"Answer {o!r} with arguments of this shape.", "parameters": dict(schema)}
                  for o, schema in (schemas or {}).items() if o in options and o not in self.workflow.tools]  # fmt: skip
        request = DecisionRequest(
            point=point,
            options=list(options),
            tools=tools,
            observation=dict(observation),
            instructions=instructions,
        )
        request_digest = digest(request)

        def replayed(recorded: list[Any]) -> Choice:
            ev = recorded[0]
            if ev.kind != "choice" or ev.data["point"] != point or ev.data["request_digest"] != request_digest:
                raise NonDeterminismError(f"op {op}: the recorded run did not ask the model {point!r} with this input")
            return Choice.model_validate(ev.data["choice"])

        return self._learn_choice(self._replayed_or_live(op, replayed, lambda: self._ask_live(op, request)))

    def _ask_live(self, op: str, request: DecisionRequest) -> Choice:
        point, request_digest = request.point, digest(request)
        if self._meter is not None:
            why = self._meter.check(self._model(), request)
            if why:
                raise self._end("cost_ceiling", why)
        cost = None
        with self._span("chat", {"gen_ai.operation.name": "chat", "tether.decision.point": point,
                                 "tether.decision.options": len(request.options)}) as span:  # fmt: skip
            with call_context(CallContext(tenant=self.tenant, run_id=self.id, workflow=self.workflow.name,
                                          policy_hash=getattr(self._policy, "hash", ""))):  # fmt: skip
                choice = self._ask(request)
            if self._meter is not None:
                cost = self._meter.charge(choice)
            span.update_name(f"chat {choice.model}")
            span.set_attributes({
                "gen_ai.request.model": choice.model, "gen_ai.response.model": choice.model,
                "gen_ai.usage.input_tokens": choice.usage.input_tokens,
                "gen_ai.usage.output_tokens": choice.usage.output_tokens,
                "tether.decision.option": choice.option or "", "tether.decision.confidence": choice.confidence,
                "tether.cost.usd": cost["cost_usd"] if cost else 0.0,
            })  # fmt: skip
            if choice.error:
                span.set_status(StatusCode.ERROR, self._journal.db.redactor.text(choice.error)[:300])
        data = {"point": point, "request_digest": request_digest, "choice": choice.model_dump()}
        if cost is not None:
            data["cost"] = cost
            self._journal.add_costs(op, self.tenant, self.workflow.name, cost["calls"])
            self._journal.set_run_values(cost_usd=round(self._meter.spent, 8), tokens=self._meter.tokens)
        self._journal.add("choice", op, data)
        asked, answered = prompt_record(self._journal.db.redactor, self.workflow.tools, request, choice)
        self._journal.add_prompt(op, request.point, choice.model, asked, answered)
        return choice

    def _learn_choice(self, choice: Choice) -> Choice:
        # The option is bounded by the offer; the values a model writes are not.
        self.provenance.add(choice.args, f"model:{choice.model}", "untrusted")
        return choice

    def label(self, value: Any, source: str, trust: Trust = "untrusted") -> None:
        """Label a value that entered the run by another door than a tool (retrieved text, a file),
        so calls built from it are judged by where it came from."""
        self.provenance.add(value, source, trust)

    def _span(self, name: str, attributes: dict[str, Any]) -> Any:
        if self._env.tracer is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        attrs = {RUN_ID: self.id, "tether.step": self.step, "tether.state": self.state, **attributes}
        return self._env.tracer.start_as_current_span(name, attributes=attrs, record_exception=False)

    def _ask(self, request: DecisionRequest) -> Choice:
        model = self._model()
        try:
            choice = model.choose(request)
        except Exception as e:  # noqa: BLE001 - a failing model is a refused choice, not a crash
            return Choice(point=request.point, option=None, confidence=0.0, model=model.name,
                          error=f"model failed: {type(e).__name__}: {e}")  # fmt: skip
        if choice.option not in request.options:
            return choice.model_copy(
                update={"error": f"model chose {choice.option!r}, not one of the {len(request.options)} options offered"}
            )
        return choice

    # -- the tool door --------------------------------------------------------
    def act(self, choice: Choice) -> ToolResult:
        """Propose the tool call a model chose; it goes through the proxy like any other.

        A refused choice (an option that was not offered, a failed model) is recorded
        as an invalid proposal and never reaches the proxy."""
        if not choice.ok:
            return self._refuse(choice)
        return self.call(choice.option or "", choice.args, proposer=f"model:{choice.model}",
                         risk={"confidence": choice.confidence})  # fmt: skip

    def _refuse(self, choice: Choice) -> ToolResult:
        op = self._next_op()
        call = ToolCall(call_id=op, tool=choice.option or "(none)", args=dict(choice.args), proposer=f"model:{choice.model}")
        return self._replayed_or_live(op, lambda recorded: self._replay_call(call, recorded),
                                      lambda: self._refuse_live(call, choice), guard=False)  # fmt: skip

    def _refuse_live(self, call: ToolCall, choice: Choice) -> ToolResult:
        op = call.call_id
        error = f"refused: {choice.error or 'no option chosen'}"
        with self._tool_span(call) as span:
            self._journal.proposed(call, None, error)
            result = ToolResult(call_id=op, tool=call.tool, status="invalid", error=error)
            self._journal.finished(call, result)
            self._end_tool_span(span, result)
        return result

    def call(
        self,
        tool: str,
        args: Mapping[str, Any] | BaseModel,
        *,
        proposer: str | None = None,
        risk: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> ToolResult:
        """Propose a tool call through the proxy. `risk` adds features to its risk score:
        `customer_tier` (standard, premium, metal) and `confidence` (of the choice behind it).
        `facts` are what this workflow's code established from earlier results (never what a
        model said): policies test them as `facts.NAME`, the tool reads them as `ctx.facts`."""
        op = self._next_op()
        plain = args.model_dump(mode="json") if isinstance(args, BaseModel) else dict(args)
        call = ToolCall(call_id=op, tool=tool, args=plain, proposer=proposer or f"workflow:{self.workflow.name}",
                        facts=dict(facts or {}))  # fmt: skip
        self._check_loop(call)
        return self._propose(call, risk, self._info())

    def _propose(self, call: ToolCall, risk: Mapping[str, Any] | None, info: RunInfo) -> ToolResult:
        t = self.workflow.tools.get(call.tool) if call.tool in self.workflow.tools else None
        origins = self.provenance.assess(call.args, t.schema if t else None, call.proposer)
        call = call.model_copy(update={"provenance": {name: o.as_dict() for name, o in origins.items()}})

        def live() -> ToolResult:
            novel = self._env.novel(self.tenant, call.tool)
            return self._call_live(call.model_copy(update={"risk_context": {**(risk or {}), "novel": novel}}), info)

        result = self._replayed_or_live(call.call_id, lambda recorded: self._replay_call(call, recorded, info), live,
                                        guard=not call.call_id.startswith("undo:"))  # fmt: skip
        return self._learn_result(t, origins, result)

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` without holding a process: the run pauses as `waiting_timer` and is
        resumed from the database once due (by any worker, or `tether runs wake`). Code after
        it runs once the time has come; a run re-driven later passes it at once."""
        if not (isinstance(seconds, int | float) and 0 <= seconds < 10 * 365 * 86400):
            raise WorkflowError(f"sleep takes 0 to 10 years in seconds, got {seconds!r}")
        self._timer(lambda now: now + dt.timedelta(seconds=seconds))

    def wait_until(self, when: dt.datetime) -> None:
        """Wait until `when` (timezone-aware) without holding a process; see `sleep`."""
        if when.tzinfo is None:
            raise WorkflowError("wait_until needs a timezone-aware datetime (say, with tzinfo=datetime.UTC)")
        self._timer(lambda now: when)

    def _timer(self, wake: Callable[[dt.datetime], dt.datetime]) -> None:
        op = self._next_op()

        def replayed(recorded: list[Any]) -> str:
            if recorded[0].kind != "timer":
                raise NonDeterminismError(f"op {op}: the run recorded {recorded[0].kind}, the code now waits on a timer")
            return _FIRED if any(e.kind == "timer_fired" for e in recorded) else str(recorded[0].data["wake_at"])

        def live() -> str:
            wake_at = wake(self._env.now()).astimezone(dt.UTC).isoformat(timespec="microseconds")
            self._journal.add("timer", op, {"wake_at": wake_at})
            return wake_at

        wake_at = self._replayed_or_live(op, replayed, live)
        if wake_at == _FIRED:
            return
        fired, at = self._env.timer_fired(wake_at)
        if fired:
            self._journal.add("timer_fired", op, {"at": at})
            return
        raise Sleep(wake_at)

    def _check_nothing_skipped(self, op: str) -> None:
        """Before anything live: code that passed over a recorded choice or call is not the code
        that made this run (changed code under --migrate), and must not act on its behalf."""
        skipped = self._journal.skipped()
        if skipped:
            raise NonDeterminismError(f"op {op}: the code goes on without the recorded op {skipped[0]}")

    def compensate(self) -> list[ToolResult]:
        """Undo the run's effects, newest first (see `compensation.Undo`); calls that may have
        happened and cannot be undone are left in `in_flight`, by name."""
        undo = Undo(self._journal, self.workflow.tools, self.workflow.name, self.id, self.tenant,
                    propose=lambda call, info: self._propose(call, None, info), finish=self._finish_cleared,
                    finishable=self.finishable)  # fmt: skip
        undone, self.in_flight = undo.run()
        return undone

    def _finish_cleared(self, call: ToolCall, info: RunInfo, decision: Decision, approval: Approval | None) -> ToolResult:
        with self._tool_span(call) as span:  # as decided then: no new decision, limit draw or budget check
            result = self._pipeline.finish_cleared(call, self._scope(info), decision, approval)
            self._end_tool_span(span, result)
        return result

    def _learn_result(self, t: Tool | None, origins: Mapping[str, Origin], result: ToolResult) -> ToolResult:
        learn_result(self.provenance, t, origins, result)
        return result

    def _call_live(self, call: ToolCall, info: RunInfo) -> ToolResult:
        with self._tool_span(call) as span:
            result = self._pipeline.propose(call, self._scope(info))
            if result.status == "pending_approval":
                approval = self._env.approval(call, result.decision) if result.decision else None
                if approval is None:
                    self._end_tool_span(span, result)
                    raise Suspend(result.approval_id or "")
                self._journal.approval_applied(call, approval.id, approval.approved, approval.by)
                result = self._pipeline.execute_approved(call, self._scope(info), approval)
            self._end_tool_span(span, result)
        return result

    def _tool_span(self, call: ToolCall) -> Any:
        return self._span(spans.tool_span_name(call), spans.tool_attributes(call))

    def _end_tool_span(self, span: Any, result: ToolResult, wait_s: float | None = None) -> None:
        spans.finish_tool_span(span, result, self._journal.db.redactor, wait_s)

    def _scope(self, info: RunInfo) -> CallScope:
        return CallScope(run=info, policy=self._policy, recorder=self._journal, deps=self._deps)

    def _info(self) -> RunInfo:
        return RunInfo(run_id=self.id, step=self.step, tenant=self.tenant)

    def _check_loop(self, call: ToolCall) -> None:
        """A repeated identical change ends the run; a repeated read does not (reading again after a
        refused change is normal; the step and call budgets still bound a run that only reads)."""
        tools = self.workflow.tools
        if call.tool in tools and not tools.get(call.tool).side_effect:
            return
        key = digest([call.tool, call.args])
        if key in self._seen_calls:
            raise self._end("loop_detected", f"repeated identical call {call.tool}({call.args}) at op {call.call_id}")
        self._seen_calls.add(key)

    def _replay_call(self, call: ToolCall, recorded: list[Any], info: RunInfo | None = None) -> ToolResult | None:
        """The recorded result, the run resumed past an approval, or None to run live."""
        first = recorded[0]
        if first.kind != "proposal" or first.data["tool"] != call.tool or first.data["proposer"] != call.proposer:
            raise NonDeterminismError(
                f"op {call.call_id}: the run recorded {first.kind} {first.data.get('tool')!r}, the code now calls {call.tool!r}"
            )
        if first.data["sent_digest"] != digest(call.args):
            raise NonDeterminismError(f"op {call.call_id}: {call.tool} is now called with different arguments")
        by_kind = {e.kind: e for e in recorded}
        if "result" in by_kind:
            return ToolResult.model_validate(by_kind["result"].data)
        decision_ev = by_kind.get("decision")
        if decision_ev is None or decision_ev.data["action"] != "require_human_approval":
            return None  # decided but never finished (the process died): run it again
        with self._journal.db.read() as conn:
            req = approvals.for_call(conn, self.id, call.call_id)
        if req is None or req.status == "pending":
            raise Suspend(req.id if req else "")
        approved = req.status == "approved"
        by = req.decided_by or ("expiry" if req.status == "expired" else "")
        self._journal.approval_applied(call, req.id, approved, by)
        approval = Approval(req.id, approved, by, req.reason, Decision.model_validate(decision_ev.data))
        with self._tool_span(call) as span:
            result = self._pipeline.execute_approved(call, self._scope(info or self._info()), approval)
            self._end_tool_span(span, result, wait_s=_seconds_between(req.requested_at, req.decided_at))
        return result



def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()
