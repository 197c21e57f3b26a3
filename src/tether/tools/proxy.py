"""The tool proxy: the one path from a proposed call to a side effect.

    validate (JSON Schema) -> gate (policy) -> [approval] -> execute (timeout) -> record

The proxy does not know where records go; the caller hands it a `CallRecorder`
(the run's journal and the ledger). `decided` must be durable when it returns:
the decision is on disk before the side effect starts.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema
import pydantic_core
from pydantic import BaseModel, ValidationError

from tether.errors import InvalidArguments, Retryable, UnknownTool
from tether.guardrails.limits import RateLimiter, result_too_big
from tether.guardrails.policy import Decision
from tether.guardrails.risk import features_for, score
from tether.tools.calls import CallStatus, ToolCall, ToolResult
from tether.tools.registry import ToolRegistry
from tether.tools.secrets import EnvSecrets, scrub
from tether.tools.tool import Grant, Tool, ToolContext


class CallRecorder(Protocol):
    def proposed(
        self, call: ToolCall, args: dict[str, Any] | None, error: str | None, schema: dict[str, Any] | None = None
    ) -> None: ...

    def decided(self, call: ToolCall, decision: Decision) -> None: ...

    def approval_requested(self, call: ToolCall, decision: Decision) -> str: ...

    def finished(self, call: ToolCall, result: ToolResult) -> None: ...


@dataclass(frozen=True)
class Approval:
    """A human's answer to an approval request, as the proxy needs it."""

    id: str
    approved: bool
    by: str
    reason: str | None
    decision: Decision


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    step: int
    tenant: str


def _plain(value: Any) -> Any:
    """Plain JSON values (datetimes and decimals as text, models dumped); NaN refused."""
    out = pydantic_core.to_jsonable_python(value)
    json.dumps(out, allow_nan=False)  # raises ValueError on NaN/inf, TypeError on anything odd
    return out


def _where(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return f"argument {path!r}: " if path else ""


def _trust(call: ToolCall, clean: dict[str, Any]) -> dict[str, Any]:
    """The gate's view of where the arguments came from; untraced arguments are untrusted."""
    if call.provenance is None:
        traced = {name: "untrusted" for name in clean}
    else:  # an argument the caller left out holds the schema's default: the tool author's value
        traced = {name: call.provenance.get(name, {}).get("trust", "trusted") for name in clean}
    return {"trusted": all(v == "trusted" for v in traced.values()), "provenance": traced}


Outcome = tuple[CallStatus, Any, str | None, float]  # status, output, error, duration in ms
Executor = Callable[[Tool, ToolContext[Any], BaseModel], Outcome]


class ToolProxy:
    """Validates, gates, executes and records tool calls.

    `executor` replaces how an authorised call is carried out; replay uses it to
    answer from a recording instead of touching live systems.
    """

    def __init__(
        self, registry: ToolRegistry, *, max_workers: int = 8, executor: Executor | None = None, credentials: Any = None,
        secrets: Any = None, limiter: Any = None, budgets: Any = None,
    ) -> None:
        self.registry = registry
        self.credentials = credentials  # mints a transaction-scoped token for every authorised call
        self._limiter = limiter if limiter is not None else RateLimiter()  # SharedRateLimiter across processes
        self.secrets = secrets if secrets is not None else EnvSecrets()
        self.budgets = budgets  # tether.models.budgets.ActionBudgets: a spent action budget denies the call
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tether-tool")
        self._executor: Executor = executor or self._execute
        self._sleep: Callable[[float], None] = time.sleep  # tests replace the clock and the dice
        self._random: Callable[[], float] = random.random

    def validate(self, call: ToolCall) -> tuple[Tool, BaseModel]:
        """The tool and its parsed arguments, or UnknownTool / InvalidArguments."""
        t = self.registry.get(call.tool)
        error = jsonschema.exceptions.best_match(t._validator.iter_errors(call.args))
        if error is not None:
            raise InvalidArguments(f"invalid arguments for {t.name}: {_where(error)}{error.message}")
        try:
            return t, t.args_model.model_validate(call.args)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidArguments(f"invalid arguments for {t.name}: argument {where!r}: {first['msg']}") from None

    def call(
        self,
        call: ToolCall,
        *,
        policy: Any,  # tether.guardrails.loading.Policy
        recorder: CallRecorder,
        deps: Any,
        run: RunInfo,
        approval: Approval | None = None,
        decided: Decision | None = None,
    ) -> ToolResult:
        """`call.risk_context` feeds the risk score: customer_tier, confidence, novel (bool).

        `approval` executes a call a person decided; `decided` executes one already decided
        (allowed, or approved with `approval` naming who) whose result was never recorded: it
        is finished as it was cleared then, without a new decision, limit draw or budget check."""
        try:
            t, args = self.validate(call)
        except (UnknownTool, InvalidArguments) as e:
            schema = self.registry.get(call.tool).schema if call.tool in self.registry else None
            recorder.proposed(call, None, str(e), schema)
            return self._finish(recorder, call, status="invalid", error=str(e))
        clean = args.model_dump(mode="json")

        if decided is not None:
            decision = decided
        elif approval is None:
            recorder.proposed(call, clean, None, t.schema)
            rc = call.risk_context
            risk = score(features_for(t, clean, rc, bool(rc.get("novel"))))
            trust = _trust(call, clean)
            context = {"risk": risk, "tenant": run.tenant, "principal": call.proposer, **trust}
            decision = policy.decide(t.name, clean, {**context, "facts": dict(call.facts)})
            untrusted = [a for a, v in trust["provenance"].items() if v == "untrusted"]
            if untrusted:
                decision = decision.model_copy(update={"untrusted_args": untrusted})
            recorder.decided(call, decision)
            if decision.action == "deny":
                return self._finish(recorder, call, status="denied", error=decision.reason, decision=decision)
            over = self.budgets.refuse(t.name) if self.budgets is not None else None
            if over:  # before a human is asked to approve what could not be paid for
                return self._finish(recorder, call, status="denied", error=over, decision=decision)
            if decision.action == "require_human_approval":
                approval_id = recorder.approval_requested(call, decision)
                return ToolResult(
                    call_id=call.call_id,
                    tool=call.tool,
                    status="pending_approval",
                    decision=decision,
                    approval_id=approval_id,
                )
        else:
            decision = approval.decision
            if not approval.approved:
                why = f"rejected by {approval.by}" + (f": {approval.reason}" if approval.reason else "")
                return self._finish(
                    recorder, call, status="rejected", error=why, decision=decision, approval_id=approval.id
                )
            over = self.budgets.refuse(t.name) if self.budgets is not None else None
            if over:  # spent while the approval waited
                return self._finish(recorder, call, status="denied", error=over, decision=decision, approval_id=approval.id)

        limits = getattr(policy, "limits", ())
        # A call being finished drew from its limits when it first ran: it is not counted twice.
        broken = self._limiter.take(limits, t.name, run.tenant, run.run_id) if limits and decided is None else None
        if broken:
            return self._finish(recorder, call, status="denied", error=f"rate limit {broken} reached; try later",
                                decision=decision, approval_id=approval.id if approval else None)  # fmt: skip
        token, target = None, ""
        if self.credentials is not None:
            target = "" if t.target is None else str(clean.get(t.target))
            token = self.credentials.mint(tool=t.name, target=target, run_id=run.run_id, step=run.step, call_id=call.call_id)
        grant = Grant(
            call_id=call.call_id,
            tool=t.name,
            policy_hash=decision.policy_hash,
            rules=tuple(decision.rules),
            approval_id=approval.id if approval else None,
            credential=token,
            target=target,
            approved_by=approval.by if approval else None,
        )
        ctx = ToolContext(deps=deps, run_id=run.run_id, step=run.step, call_id=call.call_id, tenant=run.tenant,
                          grant=grant, verifier=self.credentials, secrets=self.secrets, facts=call.facts)  # fmt: skip
        status, output, error, ms = self._executor(t, ctx, args)
        too_big = result_too_big(limits, t.name, output) if limits and status == "ok" else None
        if too_big:  # the result is withheld: nothing over the limit reaches the run or the records
            status, output, error = "denied", None, too_big
        return self._finish(
            recorder,
            call,
            status=status,
            output=output,
            error=error,
            decision=decision,
            approval_id=approval.id if approval else None,
            duration_ms=ms,
        )

    def _execute(self, t: Tool, ctx: ToolContext[Any], args: BaseModel) -> Outcome:
        """Run the tool, again after a retryable failure while its retry policy allows.

        Every attempt carries the same idempotency key, so a system of record that
        saw an earlier attempt's effect does not apply it twice."""
        attempt = 1
        start = time.perf_counter()
        while True:
            status, output, error, retryable = self._attempt(t, ctx, args)
            if status == "ok" or not retryable or attempt >= t.retry.attempts:
                if attempt > 1:
                    error = error and f"{error} (after {attempt} attempts)"
                return status, output, error, (time.perf_counter() - start) * 1000
            pause = t.retry.delay(attempt, self._random)
            self._sleep(pause)
            attempt += 1
            if ctx.grant.credential is not None and self.credentials is not None:  # a credential is good for one use
                fresh = self.credentials.mint(tool=t.name, target=ctx.grant.target, run_id=ctx.run_id, step=ctx.step,
                                              call_id=ctx.call_id)  # fmt: skip
                ctx = dataclasses.replace(ctx, grant=dataclasses.replace(ctx.grant, credential=fresh))

    def _attempt(self, t: Tool, ctx: ToolContext[Any], args: BaseModel) -> tuple[CallStatus, Any, str | None, bool]:
        """(status, output, error, worth retrying)."""
        try:
            if t.timeout_s is None:
                out = t._fn(ctx, args)
            else:
                # A timed-out thread cannot be killed; it is abandoned and its
                # late result discarded. Idempotency keys guard any late effect.
                out = self._pool.submit(t._fn, ctx, args).result(timeout=t.timeout_s)
        except cf.TimeoutError:
            return "timeout", None, f"{t.name} did not finish within {t.timeout_s:g}s", t.retry.timeouts
        except Exception as e:  # noqa: BLE001 - a tool's failure is a result, not a crash
            retryable = isinstance(e, (Retryable, *t.retry.on))
            return "error", None, scrub(f"{type(e).__name__}: {e}"), retryable
        try:
            return "ok", _plain(out), None, False
        except (TypeError, ValueError) as e:
            # The effect happened but its output cannot be recorded: say so rather than crash.
            return "error", None, f"{t.name} returned output that is not JSON ({e})", False

    @staticmethod
    def _finish(recorder: CallRecorder, call: ToolCall, **fields: Any) -> ToolResult:
        result = ToolResult(call_id=call.call_id, tool=call.tool, **fields)
        recorder.finished(call, result)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
