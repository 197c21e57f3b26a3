"""Prometheus exposition of what the database holds: runs, tool calls, approvals, models, evals."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from tether.record.db import Database, pgvector_ready
from tether.record.tables import approvals, model_calls, run_events, runs
from tether.record.tracing import traceability

_WAIT_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class _FromDatabase:
    def __init__(self, db: Database, eval_files: list[str]) -> None:
        self.db = db
        self.eval_files = eval_files

    def collect(self) -> Iterator[Metric]:
        with self.db.read() as conn:
            yield from self._runs(conn)
            yield from self._calls(conn)
            yield from self._approvals(conn)
            yield from self._caches(conn)
        yield from self._evals()

    def _runs(self, conn: sa.Connection) -> Iterator[Metric]:
        g = GaugeMetricFamily("tether_runs", "Runs by workflow and status", labels=["workflow", "status"])
        for wf, status, n in conn.execute(sa.select(runs.c.workflow, runs.c.status, sa.func.count()).group_by(runs.c.workflow, runs.c.status)):
            g.add_metric([wf, status], n)
        yield g
        ok, total = traceability(conn)
        yield GaugeMetricFamily("tether_runs_traceable_ratio", "Share of runs traceable end to end", value=ok / total if total else 0.0)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        timers = runs.c.status == "waiting_timer"
        due = conn.execute(sa.select(sa.func.count()).where(timers, runs.c.wake_at <= now)).scalar() or 0
        stuck = conn.execute(sa.select(sa.func.count()).where(timers, runs.c.wake_at.is_(None))).scalar() or 0
        yield GaugeMetricFamily("tether_timers_due", "Runs whose timer is due and not yet resumed", value=due)
        yield GaugeMetricFamily("tether_timers_not_woken", "Runs left waiting after their wake-ups failed (need a person)",
                                value=stuck)  # fmt: skip

    def _calls(self, conn: sa.Connection) -> Iterator[Metric]:
        calls: dict[tuple[str, str], list[str]] = {}  # (run, call) -> [tool, decision, status]
        tokens: Counter[tuple[str, str]] = Counter()
        q = sa.select(run_events.c.run_id, run_events.c.call_id, run_events.c.kind, run_events.c.data).where(
            run_events.c.kind.in_(["proposal", "decision", "result", "choice"]))  # fmt: skip
        for run_id, call_id, kind, data in conn.execute(q):
            if kind == "proposal":
                calls.setdefault((run_id, call_id), [data["tool"], "none", "proposed"])
            elif kind == "decision" and (run_id, call_id) in calls:
                calls[(run_id, call_id)][1:] = [data["action"], "pending_approval" if data["action"] == "require_human_approval" else "decided"]
            elif kind == "result" and (run_id, call_id) in calls:
                calls[(run_id, call_id)][2] = data["status"]
            elif kind == "choice":
                c = data["choice"]
                tokens[(c["model"], "input")] += c["usage"]["input_tokens"]
                tokens[(c["model"], "output")] += c["usage"]["output_tokens"]
        c = CounterMetricFamily("tether_tool_calls", "Tool calls by tool, policy decision and result",
                                labels=["tool", "decision", "status"])  # fmt: skip
        results = Counter(tuple(v) for v in calls.values())
        for (tool, decision, status), n in sorted(results.items()):
            c.add_metric([tool, decision, status], n)
        yield c
        t = CounterMetricFamily("tether_model_tokens", "Model tokens by model and direction", labels=["model", "direction"])
        for (model, direction), n in sorted(tokens.items()):
            t.add_metric([model, direction], n)
        yield t
        cost = CounterMetricFamily("tether_model_cost_usd", "Model spend in USD (cost meter)", labels=["model"])
        cached = CounterMetricFamily("tether_model_calls", "Model calls by model and whether the answer cache answered",
                                     labels=["model", "cached"])  # fmt: skip
        spend: Counter[str] = Counter()
        for model, hit, n, usd in conn.execute(sa.select(model_calls.c.model, model_calls.c.cached, sa.func.count(),
                                                         sa.func.sum(model_calls.c.cost_usd)).group_by(model_calls.c.model, model_calls.c.cached)):  # fmt: skip
            cached.add_metric([model, "true" if hit else "false"], n)
            spend[model] += float(usd or 0.0)
        for model, usd in sorted(spend.items()):
            cost.add_metric([model], usd)
        yield cost
        yield cached
        total, hits = conn.execute(sa.select(sa.func.count(), sa.func.sum(sa.case((model_calls.c.cached, 1), else_=0)))).one()
        yield GaugeMetricFamily("tether_answer_cache_hit_ratio", "Share of model calls answered from the answer cache",
                                value=(hits or 0) / total if total else 0.0)  # fmt: skip

    def _approvals(self, conn: sa.Connection) -> Iterator[Metric]:
        waits = []
        pending = Counter()
        for status, requested, decided in conn.execute(sa.select(approvals.c.status, approvals.c.requested_at, approvals.c.decided_at)):
            if decided:
                waits.append((dt.datetime.fromisoformat(decided) - dt.datetime.fromisoformat(requested)).total_seconds())
            pending[status] += 1
        h = HistogramMetricFamily("tether_approval_wait_seconds", "Time from approval request to decision")
        buckets = [(str(b), sum(w <= b for w in waits)) for b in _WAIT_BUCKETS] + [("+Inf", len(waits))]
        h.add_metric([], buckets, sum_value=sum(waits))
        yield h
        g = GaugeMetricFamily("tether_approvals", "Approval requests by status", labels=["status"])
        for status, n in sorted(pending.items()):
            g.add_metric([status], n)
        yield g

    def _caches(self, conn: sa.Connection) -> Iterator[Metric]:
        from tether.record.cachestats import rates

        found = rates(conn)
        lookups = CounterMetricFamily("tether_cache_lookups", "Cache lookups by cache (answer, embedding, retrieval) and result, "
                                      "over every process using this database", labels=["cache", "result"])  # fmt: skip
        ratio = GaugeMetricFamily("tether_cache_hit_ratio", "Share of lookups each cache answered", labels=["cache"])
        for cache, r in found.items():
            lookups.add_metric([cache, "hit"], r["hits"])
            lookups.add_metric([cache, "miss"], r["misses"])
            ratio.add_metric([cache], r["hit_rate"])
        yield lookups
        yield ratio
        backend = GaugeMetricFamily("tether_vector_store_backend", "The vector store's backend on this database (1: in use)",
                                    labels=["backend"])  # fmt: skip
        pg = pgvector_ready(self.db)
        backend.add_metric(["pgvector"], 1.0 if pg else 0.0)
        backend.add_metric(["numpy"], 0.0 if pg else 1.0)
        yield backend

    def _evals(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("tether_eval_score", "Eval figures from result files", labels=["source", "metric"])
        for path in self.eval_files:
            data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
            for metric in ("task_success", "routing_accuracy", "unsafe_action_rate", "policy_violation_rate",
                           "escalation_rate", "cost_per_task_usd"):  # fmt: skip
                if isinstance(data.get(metric), (int, float)):
                    g.add_metric([data.get("source") or Path(path).name, metric], float(data[metric]))
        yield g


def exposition(db: Database, eval_files: list[str] | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FromDatabase(db, eval_files or []))  # type: ignore[arg-type]
    return generate_latest(registry)
