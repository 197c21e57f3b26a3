"""Retries with backoff and jitter, per-run deadlines."""

from __future__ import annotations

import time
from typing import Any

import pytest
from _flows import POLICY, Empty, Job, Note, World

from tether import Database, End, Ledger, RunContext, Runtime, Workflow, tool
from tether.errors import Retryable, ToolError
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
    proxy = rt._proxy(wf)
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
