"""The tool proxy: carries out an authorised call, and nothing else.

    validate (JSON Schema) -> credential (transaction-scoped) -> execute (timeout, retries)

It decides nothing. The governed call (`tether.orchestration.pipeline`) asks the gate
first and hands the proxy only calls the policy (and, where asked, a person) cleared.
`executor` replaces how a call is carried out; replay answers from a recording with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

from tether.errors import Retryable
from tether.record.canonical import plain_json
from tether.tools.registry import ToolRegistry
from tether.tools.secrets import EnvSecrets, scrub
from tether.tools.tool import Grant, Tool, ToolContext
from tether.types import Approval, CallStatus, Decision, RunInfo, ToolCall

Outcome = tuple[CallStatus, Any, str | None, float]  # status, output, error, duration in ms
Executor = Callable[[Tool, ToolContext[Any], Any], Outcome]

__all__ = ["Executor", "Outcome", "ToolProxy"]


class ToolProxy:
    """Validates and executes the tools of one registry, with credentials and secrets."""

    def __init__(
        self, registry: ToolRegistry, *, max_workers: int = 8, executor: Executor | None = None, credentials: Any = None,
        secrets: Any = None,
    ) -> None:  # fmt: skip
        self.registry = registry
        self.credentials = credentials  # mints a transaction-scoped token for every authorised call
        self.secrets = secrets if secrets is not None else EnvSecrets()
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tether-tool")
        self._executor: Executor = executor or self._execute
        self._sleep: Callable[[float], None] = time.sleep  # tests replace the clock and the dice
        self._random: Callable[[], float] = random.random

    def validate(self, call: ToolCall) -> tuple[Tool, Any]:
        """The tool and its parsed arguments, or UnknownTool / InvalidArguments."""
        t = self.registry.get(call.tool)
        return t, t.validate(call.args)

    def schema_of(self, name: str) -> dict[str, Any] | None:
        return self.registry.get(name).schema if name in self.registry else None

    def context(
        self, t: Tool, call: ToolCall, clean: dict[str, Any], decision: Decision, run: RunInfo, deps: Any,
        approval: Approval | None,
    ) -> ToolContext[Any]:  # fmt: skip
        """What the tool gets for a cleared call: the grant, a fresh credential bound to its target."""
        token, target = None, ""
        if self.credentials is not None:
            target = "" if t.target is None else str(clean.get(t.target))
            token = self.credentials.mint(tool=t.name, target=target, run_id=run.run_id, step=run.step, call_id=call.call_id)
        grant = Grant(call_id=call.call_id, tool=t.name, policy_hash=decision.policy_hash, rules=tuple(decision.rules),
                      approval_id=approval.id if approval else None, credential=token, target=target,
                      approved_by=approval.by if approval else None)  # fmt: skip
        return ToolContext(deps=deps, run_id=run.run_id, step=run.step, call_id=call.call_id, tenant=run.tenant,
                           grant=grant, verifier=self.credentials, secrets=self.secrets, facts=call.facts)  # fmt: skip

    def execute(self, t: Tool, ctx: ToolContext[Any], parsed: Any) -> Outcome:
        return self._executor(t, ctx, parsed)

    def _execute(self, t: Tool, ctx: ToolContext[Any], args: Any) -> Outcome:
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

    def _attempt(self, t: Tool, ctx: ToolContext[Any], args: Any) -> tuple[CallStatus, Any, str | None, bool]:
        """(status, output, error, worth retrying)."""
        try:
            if t.timeout_s is None:
                out = t.execute(ctx, args)
            else:
                # A timed-out thread cannot be killed; it is abandoned and its
                # late result discarded. Idempotency keys guard any late effect.
                out = self._pool.submit(t.execute, ctx, args).result(timeout=t.timeout_s)
        except cf.TimeoutError:
            return "timeout", None, f"{t.name} did not finish within {t.timeout_s:g}s", t.retry.timeouts
        except (Exception, asyncio.CancelledError) as e:  # noqa: BLE001 - a tool's failure is a result, not a crash
            retryable = isinstance(e, (Retryable, *t.retry.on))
            return "error", None, scrub(f"{type(e).__name__}: {e}"), retryable
        try:
            return "ok", plain_json(out), None, False
        except (TypeError, ValueError) as e:
            # The effect happened but its output cannot be recorded: say so rather than crash.
            return "error", None, f"{t.name} returned output that is not JSON ({e})", False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

