"""Overhead of one governed tool call against calling the tool function directly.

Governed = JSON Schema + pydantic validation, the policy decision, the proposal
and decision written durably (SQLite WAL, synchronous=FULL) before the tool
runs, execution under a timeout, and the result written durably after.

Three front doors are compared: a workflow's `run.call` (provenance, loop check, the
journal's deferred result write), a `Session.call` (the same governed call, plus a commit
of the result before the agent sees it) and the bare `CallPipeline`.

    python bench/governed_call.py [--calls 2000] [--db sqlite:///path]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tether import (
    Args,
    CallPipeline,
    CallScope,
    Database,
    End,
    PolicySet,
    Runtime,
    Session,
    Tool,
    ToolCall,
    ToolContext,
    ToolProxy,
    ToolRegistry,
    Workflow,
    tool,
)
from tether.orchestration._journal import Journal
from tether.record import runs as store
from tether.tools.tool import Grant
from tether.types import RunInfo

POLICY = PolicySet.from_text("""
policies:
  - {name: refund_requires_approval, if: {tool: "payments.refund", amount_usd: "> 100"}, then: {action: require_human_approval}}
  - {name: no_bulk_export, if: {tool: "crm.export", rows: "> 1000"}, then: {action: deny}}
  - {name: no_delete_in_v1, if: {tool: "*.*delete*"}, then: {action: deny}}
""")


class RefundArgs(Args):
    transaction_id: str
    amount_usd: float
    reason: str


def _refund(ctx: ToolContext[None], args: RefundArgs) -> dict[str, Any]:
    return {"refund_id": "rf_" + args.transaction_id, "amount_usd": args.amount_usd}


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return s[len(s) // 2] / 1000, s[min(len(s) - 1, int(len(s) * 0.99))] / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--db", default=None)
    opts = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="tether-bench-")
    db = Database(opts.db or f"sqlite:///{Path(folder) / 'bench.db'}")
    args = {"transaction_id": "X000101", "amount_usd": 42.5, "reason": "duplicate charge"}

    results = {}
    for timeout in (10.0, None):
        t = tool("payments.refund", timeout_s=timeout)(_refund)
        proxy = ToolProxy(ToolRegistry([t]))
        pipeline = CallPipeline(proxy)
        run_id = f"run_bench_{timeout}"
        with db.transaction() as conn:
            store.store_policy(conn, POLICY.hash, "bench", POLICY.text)
            store.insert_run(conn, id=run_id, workflow="bench", workflow_ref="bench", workflow_version="0",
                             status="running", input={}, started_by="bench", tenant="t", policy_hash=POLICY.hash)  # fmt: skip
        journal = Journal(db, run_id, [])
        info = RunInfo(run_id, 1, "t")
        samples = []
        for i in range(opts.calls):
            call = ToolCall(call_id=f"1.{i}", tool="payments.refund", args=args, proposer="bench")
            t0 = time.perf_counter_ns()
            r = pipeline.propose(call, CallScope(info, POLICY, journal, None))
            samples.append(time.perf_counter_ns() - t0)
            assert r.ok
        proxy.close()
        results[timeout] = percentiles(samples)

    ctx = ToolContext(deps=None, run_id="r", step=1, call_id="1", tenant="t", grant=Grant("1", "payments.refund", "", ()))
    parsed = RefundArgs.model_validate(args)
    direct = []
    for _ in range(opts.calls):
        t0 = time.perf_counter_ns()
        _refund(ctx, parsed)
        direct.append(time.perf_counter_ns() - t0)
    d50, d99 = percentiles(direct)

    print(f"governed tool call, {opts.calls} calls each, database {db.label}")
    print(f"  direct function call          p50 {d50:9.2f} us   p99 {d99:9.2f} us")
    for timeout, label in ((10.0, "governed (timeout thread)"), (None, "governed (no timeout)")):
        p50, p99 = results[timeout]
        print(f"  {label:<29} p50 {p50:9.1f} us   p99 {p99:9.1f} us   overhead p50 {p50 - d50:9.1f} us")
    # How much of that is the durable writes: the same calls with a no-op recorder.
    t = tool("payments.refund", timeout_s=None)(_refund)
    pipeline = CallPipeline(ToolProxy(ToolRegistry([t])))

    class NoRecord:
        def proposed(self, *a: Any) -> None: ...
        def decided(self, *a: Any) -> None: ...
        def approval_requested(self, *a: Any) -> str: return ""
        def finished(self, *a: Any) -> None: ...

    mem = []
    for i in range(opts.calls):
        call = ToolCall(call_id=f"1.{i}", tool="payments.refund", args=args, proposer="bench")
        t0 = time.perf_counter_ns()
        pipeline.propose(call, CallScope(RunInfo("r", 1, "t"), POLICY, NoRecord(), None))
        mem.append(time.perf_counter_ns() - t0)
    m50, m99 = percentiles(mem)
    print(f"  validation + policy only      p50 {m50:9.1f} us   p99 {m99:9.1f} us   (no records written)")
    w50, w99 = _workflow_calls(db, opts.calls, args)
    s50, s99 = _session_calls(db, opts.calls, args)
    print(f"  workflow run.call             p50 {w50:9.1f} us   p99 {w99:9.1f} us   overhead p50 {w50 - d50:9.1f} us")
    print(f"  Session.call                  p50 {s50:9.1f} us   p99 {s99:9.1f} us   overhead p50 {s50 - d50:9.1f} us")
    print(f"  session / workflow call at p50: {s50 / w50:.2f}")
    print(f"  durable records are {results[None][0] / m50:.0f}x the in-memory checks at p50")


class _NoInput(BaseModel):
    pass


def _workflow_calls(db: Database, calls: int, args: dict[str, Any]) -> tuple[float, float]:
    """`run.call` from a workflow's state: each call's own arguments (a repeated call ends the run)."""
    t = tool("payments.refund", timeout_s=None)(_refund)
    samples: list[int] = []
    wf = Workflow("bench_calls", input=_NoInput, tools=[t], policy=POLICY, max_calls_per_step=calls + 1)

    @wf.state(initial=True)
    def go(run: Any) -> End:
        for i in range(calls):
            t0 = time.perf_counter_ns()
            r = run.call("payments.refund", {**args, "transaction_id": f"X{i:06d}"})
            samples.append(time.perf_counter_ns() - t0)
            assert r.ok
        return End("completed")

    rt = Runtime(db)
    assert rt.start(wf, {}).status == "completed"
    rt.close()
    return percentiles(samples)


def _session_calls(db: Database, calls: int, args: dict[str, Any]) -> tuple[float, float]:
    def refund(transaction_id: str, amount_usd: float, reason: str) -> dict[str, Any]:
        return {"refund_id": "rf_" + transaction_id, "amount_usd": amount_usd}

    t = Tool.from_function(refund, name="payments.refund", timeout_s=None)
    samples: list[int] = []
    with Session.open(db, tools=[t], policy=POLICY, principal="bench", name="bench_session") as session:
        for i in range(calls):
            t0 = time.perf_counter_ns()
            r = session.call("payments.refund", {**args, "transaction_id": f"X{i:06d}"})
            samples.append(time.perf_counter_ns() - t0)
            assert r.ok
    return percentiles(samples)


if __name__ == "__main__":
    main()
