"""Redaction quality per PII type on the planted corpus, and its cost.

    python bench/redaction.py [--corpus evals/pii_corpus.jsonl]

A planted value counts as found when a finding of the same kind overlaps it;
a finding that overlaps no planted value of its kind is a false alarm.
Also prints the cost of tracing and redaction per governed tool call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.record.redaction import KINDS, scan


def quality(corpus: str) -> None:
    lines = [json.loads(line) for line in Path(corpus).read_text().splitlines()]
    planted, found, hit, alarms = Counter(), Counter(), Counter(), Counter()
    t0 = time.perf_counter()
    for item in lines:
        findings = scan(item["text"])
        for s in item["spans"]:
            planted[s["kind"]] += 1
            if any(f.kind == s["kind"] and f.start < s["end"] and s["start"] < f.end for f in findings):
                hit[s["kind"]] += 1
        for f in findings:
            found[f.kind] += 1
            if not any(f.kind == s["kind"] and f.start < s["end"] and s["start"] < f.end for s in item["spans"]):
                alarms[f.kind] += 1
    per_text_ms = (time.perf_counter() - t0) / len(lines) * 1000
    print(f"redaction on {len(lines)} texts ({sum(planted.values())} planted values), {per_text_ms:.2f} ms per text")
    print(f"  {'kind':<12}{'planted':>8}{'found':>8}{'recall':>9}{'precision':>11}")
    for kind in KINDS:
        if kind == "free_text" or not (planted[kind] or found[kind]):
            continue
        recall = hit[kind] / planted[kind] if planted[kind] else float("nan")
        precision = (found[kind] - alarms[kind]) / found[kind] if found[kind] else float("nan")
        print(f"  {kind:<12}{planted[kind]:>8}{found[kind]:>8}{recall:>9.1%}{precision:>11.1%}")


def overhead(calls: int = 1000) -> None:
    """Governed calls with tracing and redaction on and off, on SQLite."""
    from typing import Annotated, Any

    from tether import (
        Args,
        Database,
        PolicySet,
        ToolCall,
        ToolProxy,
        ToolRegistry,
        tool,
    )
    from tether.orchestration._journal import Journal
    from tether.record import runs as store
    from tether.record.redaction import PII
    from tether.record.tracing import RUN_ID, Tracing
    from tether.types import RunInfo

    class NoteArgs(Args):
        ticket_id: str
        text: Annotated[str, PII("free_text")]

    @tool("helpdesk.note", timeout_s=None)
    def note(ctx: Any, args: NoteArgs) -> dict[str, Any]:
        return {"ok": True}

    policy = PolicySet.from_text("policies: []")
    folder = Path(tempfile.mkdtemp(prefix="tether-redaction-bench-"))
    db = Database(f"sqlite:///{folder / 'b.db'}")
    tracing = Tracing()
    proxy = CallPipeline(ToolProxy(ToolRegistry([note])))
    args = {"ticket_id": "T1", "text": "My card 4111 1111 1111 1111 was charged twice, mail me at jane.doe@example.com"}
    results = {}
    for label, traced, marked in (("plain", False, False), ("traced", True, False), ("traced + redacted", True, True)):
        run_id = f"run_{label.replace(' ', '')}"
        with db.transaction() as conn:
            store.store_policy(conn, policy.hash, "b", policy.text)
            store.insert_run(conn, id=run_id, workflow="b", workflow_ref="b", workflow_version="0", status="running",
                             input={}, started_by="b", tenant="t", policy_hash=policy.hash)  # fmt: skip
        journal = Journal(db, run_id, [])
        samples = []
        for i in range(calls):
            call = ToolCall(call_id=f"1.{i}", tool="helpdesk.note", args=args, proposer="b")
            t0 = time.perf_counter_ns()
            if traced:
                with tracing.tracer.start_as_current_span("execute_tool helpdesk.note", attributes={RUN_ID: run_id}):
                    proxy.propose(call, CallScope(RunInfo(run_id, 1, "t"), policy, journal, None))
            else:
                proxy.propose(call, CallScope(RunInfo(run_id, 1, "t"), policy, journal, None))
            samples.append(time.perf_counter_ns() - t0)
            if not marked:
                journal.db.__dict__["redactor"] = _NoRedaction()
        journal.flush()
        db.__dict__.pop("redactor", None)
        results[label] = statistics.median(samples) / 1000
    base = results["plain"]
    print("per governed call (median, SQLite, durable):")
    for label, us in results.items():
        print(f"  {label:<20}{us:9.1f} us   (+{us - base:.1f} us)")


class _NoRedaction:
    def args(self, schema: object, args: dict) -> dict:
        return dict(args)

    def text(self, text: str) -> str:
        return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="evals/pii_corpus.jsonl")
    opts = ap.parse_args()
    quality(opts.corpus)
    overhead()


if __name__ == "__main__":
    main()
