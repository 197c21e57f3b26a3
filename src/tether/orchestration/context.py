"""RunContext: what a state function gets. The only doors to models and tools."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic

from opentelemetry import trace
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from tether.errors import NonDeterminismError, WorkflowError
from tether.guardrails import approvals
from tether.guardrails.provenance import Origin, Provenance, Trust, learn_result
from tether.models.base import CallContext, Choice, DecisionRequest, Model, call_context
from tether.orchestration import spans
from tether.orchestration._journal import Journal
from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.orchestration.workflow import DepsT, InputT
from tether.record.canonical import digest
from tether.record.tracing import RUN_ID
from tether.tools.tool import Tool, idempotency_key
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


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EndRun(BaseException):
    """The runtime ends the run (budget, loop) whatever the state code wanted."""

    def __init__(self, status: str, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class RunContext(Generic[InputT, DepsT]):
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
        approval_source: Callable[[ToolCall, Decision], Approval | None] | None = None,
        tracer: Any = None,
        history: Callable[[str, str], bool] | None = None,
        deadline: float | None = None,  # time.monotonic() past which the run ends deadline_exceeded
        meter: Any = None,  # tether.models.meter.RunMeter: prices calls, enforces the run's cost ceiling
        clock: Callable[[], dt.datetime] | None = utcnow,  # None: replay, where timers fire as recorded
        timer_source: Callable[[], bool] | None = None,  # replay: did the recorded run's next timer fire?
        timer_due: str | None = None,  # a wake-up queued for this due time: that timer fires now
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
        self._approval_source = approval_source  # replay answers approvals from the recording
        self._tracer = tracer  # None: no spans (replay)
        self._history = history  # (tenant, tool) -> never executed for this tenant before?
        self._meter = meter
        self._ops_in_step = 0
        self._seen_calls: set[str] = set()
        self._reads: set[str] = set()  # keys of read-only calls since the last side effect
        self._ended: EndRun | None = None  # once the runtime ends a run, every further door stays shut
        self._deadline = deadline
        self._clock = clock
        self._timer_source = timer_source
        self._timer_due = timer_due
        self.in_flight: list[str] = []  # calls compensate() found decided but never finished
        # Replay finishes only the calls the recorded run finished (it cannot call live systems).
        self.finishable: set[str] | None = None
        self.provenance = Provenance()
        fields = input.model_dump(mode="json") if isinstance(input, BaseModel) else {"input": input}
        for name, value in (fields.items() if isinstance(fields, dict) else ()):
            trust: Trust = "trusted" if name in workflow.trusted_input else "untrusted"
            self.provenance.add(value, "input", trust)

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
        recorded = self._journal.replayed(op)
        if recorded:
            if recorded[0].data["state"] != state:
                raise NonDeterminismError(
                    f"step {step}: the run recorded state {recorded[0].data['state']!r}, the code now enters {state!r}"
                )
            return
        self._journal.add("enter", op, {"state": state})

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
        recorded = self._journal.replayed(op)
        if recorded:
            ev = recorded[0]
            if ev.kind != "choice" or ev.data["point"] != point or ev.data["request_digest"] != request_digest:
                raise NonDeterminismError(f"op {op}: the recorded run did not ask the model {point!r} with this input")
            return self._learn_choice(Choice.model_validate(ev.data["choice"]))
        self._check_nothing_skipped(op)
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
        self._store_prompt(op, request, choice)
        return self._learn_choice(choice)

    def _learn_choice(self, choice: Choice) -> Choice:
        # The option is bounded by the offer; the values a model writes are not.
        self.provenance.add(choice.args, f"model:{choice.model}", "untrusted")
        return choice

    def label(self, value: Any, source: str, trust: Trust = "untrusted") -> None:
        """Label a value that entered the run by another door than a tool (retrieved text, a file),
        so calls built from it are judged by where it came from."""
        self.provenance.add(value, source, trust)

    def _store_prompt(self, op: str, request: DecisionRequest, choice: Choice) -> None:
        """What the model was asked and answered, redacted, for the short-retention prompt store."""
        red = self._journal.db.redactor
        observation = {k: red.text(v) if isinstance(v, str) else v for k, v in request.observation.items()}
        args = choice.args
        if choice.option in self.workflow.tools:
            args = red.args(self.workflow.tools.get(choice.option).schema, args)
        elif args:  # free-form arguments (a plan, say) have no schema marks: scan their text
            args = _scan_strings(red, args)
        self._journal.add_prompt(
            op, request.point, choice.model,
            {"options": request.options, "observation": observation, "instructions": red.text(request.instructions)},
            {"option": choice.option, "args": args, "confidence": choice.confidence,
             "usage": choice.usage.model_dump(), "error": red.text(choice.error) if choice.error else None},
        )  # fmt: skip

    def _span(self, name: str, attributes: dict[str, Any]) -> Any:
        if self._tracer is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        attrs = {RUN_ID: self.id, "tether.step": self.step, "tether.state": self.state, **attributes}
        return self._tracer.start_as_current_span(name, attributes=attrs, record_exception=False)

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
        recorded = self._journal.replayed(op)
        if recorded:
            done = self._replay_call(call, recorded)
            if done is not None:
                return done
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
        result = self._propose(call, risk, self._info())
        self._after(call, result)
        return result

    def _propose(self, call: ToolCall, risk: Mapping[str, Any] | None, info: RunInfo) -> ToolResult:
        t = self.workflow.tools.get(call.tool) if call.tool in self.workflow.tools else None
        origins = self.provenance.assess(call.args, t.schema if t else None, call.proposer)
        call = call.model_copy(update={"provenance": {name: o.as_dict() for name, o in origins.items()}})
        recorded = self._journal.replayed(call.call_id)
        if recorded:
            done = self._replay_call(call, recorded, info)
            if done is not None:
                return self._learn_result(t, origins, done)
        if not call.call_id.startswith("undo:"):
            self._check_nothing_skipped(call.call_id)
        call = call.model_copy(update={"risk_context": {**(risk or {}), "novel": self._novel(call.tool)}})
        return self._learn_result(t, origins, self._call_live(call, info))

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
        recorded = self._journal.replayed(op)
        if recorded:
            if recorded[0].kind != "timer":
                raise NonDeterminismError(f"op {op}: the run recorded {recorded[0].kind}, the code now waits on a timer")
            if any(e.kind == "timer_fired" for e in recorded):
                return
            wake_at = recorded[0].data["wake_at"]
        else:
            self._check_nothing_skipped(op)
            now = self._clock() if self._clock is not None else utcnow()
            wake_at = wake(now).astimezone(dt.UTC).isoformat(timespec="microseconds")
            self._journal.add("timer", op, {"wake_at": wake_at})
        if self._clock is None:  # replay: the timer fires where the recorded run's did
            fired, at = bool(self._timer_source and self._timer_source()), wake_at
        else:
            now = self._clock()
            fired = now >= dt.datetime.fromisoformat(wake_at) or wake_at == self._timer_due
            at = now.isoformat(timespec="microseconds")
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
        """Undo the run's effects, newest first, each with its tool's declared compensation.

        Every compensation is a governed call (validated, decided, ledgered) with a
        stable id `undo:<call>` and the idempotency key of the step it undoes, so a
        resumed or replayed run answers it from the journal instead of repeating it.

        A call that was cleared (allowed or approved) but has no recorded result (the
        process died while it ran) is first finished under its own idempotency key: the
        system of record answers with what it did, or does it now, so it can be undone."""
        # Cleared calls that finishing could not bring to an ok result: they may have happened and
        # cannot be undone without their output; they are named, never passed over silently.
        self.in_flight = self._finish_in_flight()
        events = self._journal.call_events()
        results = [e for e in events if e.kind == "result" and e.data["status"] == "ok" and not str(e.call_id).startswith("undo:")]
        undone = []
        for ev in reversed(results):
            t = self.workflow.tools.get(ev.data["tool"]) if ev.data["tool"] in self.workflow.tools else None
            if t is None or t.compensate is None:
                continue
            proposal = next(e for e in self._journal.replayed(ev.call_id or "") if e.kind == "proposal")
            name, make_args = t.compensate
            try:
                args = make_args(dict(proposal.data["args"]), ev.data["output"],
                                 idempotency_key(self.id, proposal.step, ev.call_id or ""))
            except Exception as e:  # noqa: BLE001 - a broken compensation is reported, the others still run
                undone.append(ToolResult(call_id=f"undo:{ev.call_id}", tool=name, status="invalid",
                                         error=f"compensation arguments for {t.name} failed: {type(e).__name__}: {e}"))  # fmt: skip
                continue
            # The undo is judged on what the code had established for the call it undoes.
            call = ToolCall(call_id=f"undo:{ev.call_id}", tool=name, args=args, proposer=f"compensation:{self.workflow.name}",
                            facts=dict(proposal.data.get("facts") or {}))  # fmt: skip
            undone.append(self._propose(call, None, RunInfo(run_id=self.id, step=proposal.step, tenant=self.tenant)))
        return undone

    def _finish_in_flight(self) -> list[str]:
        """Finish every cleared call that has no result and can be undone; returns by name those
        that may have happened and will not be undone. A call without a compensation is never
        finished here: stopping a run must not make an effect it may never have made."""
        unsure: list[str] = []
        events = self._journal.call_events()
        finished = {e.call_id for e in events if e.kind == "result"}
        by_call: dict[str, list[Any]] = {}
        for e in events:
            if e.call_id and e.call_id not in finished and not e.call_id.startswith("undo:"):
                by_call.setdefault(e.call_id, []).append(e)
        for call_id, evs in by_call.items():
            proposal = next((e for e in reversed(evs) if e.kind == "proposal"), None)
            decision = next((e for e in reversed(evs) if e.kind == "decision"), None)
            applied = next((e for e in reversed(evs) if e.kind == "approval"), None)
            if proposal is None or decision is None or (self.finishable is not None and call_id not in self.finishable):
                continue
            d = Decision.model_validate(decision.data)
            approval = None
            if applied is not None and applied.data["approved"]:
                approval = Approval(applied.data["approval_id"], True, applied.data["by"] or "", None, d)
            elif d.action != "allow":
                continue  # never cleared: nothing can have happened
            name = f"{proposal.data['tool']} ({call_id})"
            t = self.workflow.tools.get(proposal.data["tool"]) if proposal.data["tool"] in self.workflow.tools else None
            if t is not None and not t.side_effect:
                continue  # a read changed nothing
            if t is None or t.compensate is None:
                unsure.append(name)
                continue
            p = proposal.data
            call = ToolCall(call_id=call_id, tool=p["tool"], args=dict(p["args"]), proposer=p["proposer"],
                            facts=dict(p.get("facts") or {}), risk_context=dict(p.get("risk_context") or {}))  # fmt: skip
            info = RunInfo(run_id=self.id, step=proposal.step, tenant=self.tenant)  # the key of the step it ran in
            with self._tool_span(call) as span:  # as decided then: no new decision, limit draw or budget check
                result = self._pipeline.finish_cleared(call, self._scope(info), d, approval)
                self._end_tool_span(span, result)
            if not result.ok:
                unsure.append(name)
        return unsure

    def _learn_result(self, t: Tool | None, origins: Mapping[str, Origin], result: ToolResult) -> ToolResult:
        learn_result(self.provenance, t, origins, result)
        return result

    def _call_live(self, call: ToolCall, info: RunInfo) -> ToolResult:
        with self._tool_span(call) as span:
            result = self._pipeline.propose(call, self._scope(info))
            if result.status == "pending_approval":
                approval = self._approval_source(call, result.decision) if self._approval_source and result.decision else None
                if approval is None:
                    self._end_tool_span(span, result)
                    raise Suspend(result.approval_id or "")
                self._journal.approval_applied(call, approval.id, approval.approved, approval.by)
                result = self._pipeline.execute_approved(call, self._scope(info), approval)
            self._end_tool_span(span, result)
        return result

    def _novel(self, tool: str) -> bool:
        return self._history(self.tenant, tool) if self._history else False

    def _tool_span(self, call: ToolCall) -> Any:
        return self._span(spans.tool_span_name(call), spans.tool_attributes(call))

    def _end_tool_span(self, span: Any, result: ToolResult, wait_s: float | None = None) -> None:
        spans.finish_tool_span(span, result, self._journal.db.redactor, wait_s)

    def _scope(self, info: RunInfo) -> CallScope:
        return CallScope(run=info, policy=self._policy, recorder=self._journal, deps=self._deps)

    def _info(self) -> RunInfo:
        return RunInfo(run_id=self.id, step=self.step, tenant=self.tenant)

    def _check_loop(self, call: ToolCall) -> None:
        key = digest([call.tool, call.args])
        if key in self._seen_calls:
            raise self._end("loop_detected", f"repeated identical call {call.tool}({call.args}) at op {call.call_id}")
        self._seen_calls.add(key)

    def _after(self, call: ToolCall, result: ToolResult) -> None:
        """A read repeated after a change is a new question, not a loop: once a side effect
        happened, earlier reads may be asked again (a repeated change still ends the run)."""
        tools = self.workflow.tools
        if result.ok and call.tool in tools and tools.get(call.tool).side_effect:
            self._seen_calls -= self._reads
            self._reads = set()
        elif call.tool in tools and not tools.get(call.tool).side_effect:
            self._reads.add(digest([call.tool, call.args]))

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



def _scan_strings(red: Any, value: Any) -> Any:
    if isinstance(value, str):
        return red.text(value)
    if isinstance(value, dict):
        return {k: _scan_strings(red, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scan_strings(red, v) for v in value]
    return value


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()
