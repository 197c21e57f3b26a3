"""The governed call: one path from a proposed call to a recorded result, in small stages.

    validate -> record proposal -> assess (risk, trust) -> decide -> action budget
             -> [ask a person] -> rate limits -> credential -> execute -> result cap -> record result

Every front door (a workflow's `RunContext` and a `Session` today; the MCP gateway and the
framework adapters are to be built on it) goes through `CallPipeline`. Three entry points instead of mode flags:

- `propose`: a new call, decided afresh; it may end `pending_approval`.
- `execute_approved`: a call a person decided; a rejection ends it, an approval runs it.
- `finish_cleared`: a call decided (and, if asked, approved) whose result was never recorded
  (its process died): it runs as it was cleared then, with no new decision, limit draw or
  budget check, under its own idempotency key.

Each stage takes the call in flight and returns a `ToolResult` to end it there, or None to
go on. The pipeline decides with guardrails and executes with the tool proxy; where records
go is the caller's `CallRecorder` (a run's journal and the ledger).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.errors import InvalidArguments, UnknownTool
from tether.guardrails.limits import RateLimiter, result_too_big
from tether.guardrails.provenance import gate_view
from tether.guardrails.risk import features_for, score
from tether.tools.proxy import ToolProxy
from tether.tools.tool import Tool
from tether.types import Approval, CallRecorder, Decision, RunInfo, ToolCall, ToolResult


@dataclass(frozen=True)
class CallScope:
    """What a call is made in: its run, the policy it is judged by, where it is recorded,
    the dependencies its tool gets (`ctx.deps`), and (`tools`) the names it may call when the
    pipeline's registry holds more (a pipeline shared by sessions with different tools)."""

    run: RunInfo
    policy: Any  # tether.guardrails.loading.Policy
    recorder: CallRecorder
    deps: Any = None
    tools: frozenset[str] | None = None


@dataclass
class _Flight:
    """One call on its way through the stages."""

    call: ToolCall
    scope: CallScope
    tool: Tool | None = None
    parsed: Any = None
    clean: dict[str, Any] = field(default_factory=dict)
    decision: Decision | None = None
    approval: Approval | None = None
    status: str = "ok"
    output: Any = None
    error: str | None = None
    duration_ms: float | None = None

    def end(self, status: str, error: str | None = None) -> ToolResult:
        return ToolResult(call_id=self.call.call_id, tool=self.call.tool, status=status, error=error,  # type: ignore[arg-type]
                          decision=self.decision, approval_id=self.approval.id if self.approval else None)  # fmt: skip


Stage = Callable[["CallPipeline", _Flight], ToolResult | None]


class CallPipeline:
    """Validates, gates, executes and records tool calls through `proxy`.

    `limiter` draws from the policy's rate limits (default: in this process only; a
    `SharedRateLimiter` shares them through the database); `budgets` refuses calls to a tool
    whose action budget is spent (`tether.models.budgets.ActionBudgets`)."""

    def __init__(self, proxy: ToolProxy, *, limiter: Any = None, budgets: Any = None) -> None:
        self.proxy = proxy
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.budgets = budgets

    # -- the three entry points ---------------------------------------------------
    def propose(self, call: ToolCall, scope: CallScope) -> ToolResult:
        """`call.risk_context` feeds the risk score: customer_tier, confidence, novel (bool)."""
        return self._run(_Flight(call, scope), _PROPOSE)

    def execute_approved(self, call: ToolCall, scope: CallScope, approval: Approval) -> ToolResult:
        return self._run(_Flight(call, scope, decision=approval.decision, approval=approval), _APPROVED)

    def finish_cleared(
        self, call: ToolCall, scope: CallScope, decision: Decision, approval: Approval | None = None
    ) -> ToolResult:
        # No limit draw or budget check: a call being finished was counted when it was cleared.
        return self._run(_Flight(call, scope, decision=decision, approval=approval), _CLEARED)

    def close(self) -> None:
        self.proxy.close()

    # -- running the stages -------------------------------------------------------
    def _run(self, f: _Flight, stages: Sequence[Stage]) -> ToolResult:
        for stage in stages:
            ended = stage(self, f)
            if ended is not None:
                if ended.status != "pending_approval":  # a pending call is recorded by its request
                    f.scope.recorder.finished(f.call, ended)
                return ended
        result = ToolResult(call_id=f.call.call_id, tool=f.call.tool, status=f.status, output=f.output,  # type: ignore[arg-type]
                            error=f.error, decision=f.decision, approval_id=f.approval.id if f.approval else None,
                            duration_ms=f.duration_ms)  # fmt: skip
        f.scope.recorder.finished(f.call, result)
        return result


# -- the stages ----------------------------------------------------------------------
def _validate(p: CallPipeline, f: _Flight) -> ToolResult | None:
    try:
        if f.scope.tools is not None and f.call.tool not in f.scope.tools:
            raise UnknownTool(f"unknown tool {f.call.tool!r}")
        f.tool, f.parsed = p.proxy.validate(f.call)
    except (UnknownTool, InvalidArguments) as e:
        f.scope.recorder.proposed(f.call, None, str(e), p.proxy.schema_of(f.call.tool))
        return f.end("invalid", str(e))
    f.clean = f.tool.dump(f.parsed)
    return None


def _record_proposal(p: CallPipeline, f: _Flight) -> ToolResult | None:
    assert f.tool is not None
    f.scope.recorder.proposed(f.call, f.clean, None, f.tool.schema)
    return None


def _decide(p: CallPipeline, f: _Flight) -> ToolResult | None:
    """Risk and trust feed the policy with the call's arguments; an untrusted argument is named."""
    assert f.tool is not None
    rc = f.call.risk_context
    risk = score(features_for(f.tool, f.clean, rc, bool(rc.get("novel"))))
    trust = gate_view(f.call, f.clean)
    context = {"risk": risk, "tenant": f.scope.run.tenant, "principal": f.call.proposer, **trust}
    decision = f.scope.policy.decide(f.tool.name, f.clean, {**context, "facts": dict(f.call.facts)})
    untrusted = [a for a, v in trust["provenance"].items() if v == "untrusted"]
    if untrusted:
        decision = decision.model_copy(update={"untrusted_args": untrusted})
    f.decision = decision
    f.scope.recorder.decided(f.call, decision)
    if decision.action == "deny":
        return f.end("denied", decision.reason)
    return None


def _budget(p: CallPipeline, f: _Flight) -> ToolResult | None:
    """Before a person is asked to approve what could not be paid for, and again after."""
    assert f.tool is not None
    over = p.budgets.refuse(f.tool.name) if p.budgets is not None else None
    return f.end("denied", over) if over else None


def _ask_person(p: CallPipeline, f: _Flight) -> ToolResult | None:
    assert f.decision is not None
    if f.decision.action != "require_human_approval":
        return None
    approval_id = f.scope.recorder.approval_requested(f.call, f.decision)
    return ToolResult(call_id=f.call.call_id, tool=f.call.tool, status="pending_approval", decision=f.decision,
                      approval_id=approval_id)  # fmt: skip


def _apply_approval(p: CallPipeline, f: _Flight) -> ToolResult | None:
    a = f.approval
    assert a is not None
    if a.approved:
        return None
    return f.end("rejected", f"rejected by {a.by}" + (f": {a.reason}" if a.reason else ""))


def _limits(p: CallPipeline, f: _Flight) -> ToolResult | None:
    assert f.tool is not None
    limits = getattr(f.scope.policy, "limits", ())
    if not limits:
        return None
    broken = p.limiter.take(limits, f.tool.name, f.scope.run.tenant, f.scope.run.run_id)
    return f.end("denied", f"rate limit {broken} reached; try later") if broken else None


def _execute(p: CallPipeline, f: _Flight) -> ToolResult | None:
    """Mint the call's credential and run it; the proxy reports a failure as a status."""
    assert f.tool is not None and f.decision is not None
    ctx = p.proxy.context(f.tool, f.call, f.clean, f.decision, f.scope.run, f.scope.deps, f.approval)
    f.status, f.output, f.error, f.duration_ms = p.proxy.execute(f.tool, ctx, f.parsed)
    return None


def _cap_result(p: CallPipeline, f: _Flight) -> ToolResult | None:
    """A result over `max_result_rows` is withheld: nothing over the limit reaches the run or the records."""
    assert f.tool is not None
    limits = getattr(f.scope.policy, "limits", ())
    too_big = result_too_big(limits, f.tool.name, f.output) if limits and f.status == "ok" else None
    if too_big:
        f.status, f.output, f.error = "denied", None, too_big
    return None


_PROPOSE: tuple[Stage, ...] = (_validate, _record_proposal, _decide, _budget, _ask_person, _limits, _execute, _cap_result)
_APPROVED: tuple[Stage, ...] = (_validate, _apply_approval, _budget, _limits, _execute, _cap_result)
_CLEARED: tuple[Stage, ...] = (_validate, _execute, _cap_result)
