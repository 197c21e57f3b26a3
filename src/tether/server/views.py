"""What the API reads: runs with filters, a run's timeline, workflows, policies, evals, costs."""

from __future__ import annotations

import datetime as dt
from importlib.metadata import entry_points
from typing import Any

import sqlalchemy as sa

from tether.errors import RunNotFound
from tether.guardrails.approvals import ApprovalRequest
from tether.models.budgets import spend_report
from tether.orchestration import rollout
from tether.record import runs as store
from tether.record import tracing
from tether.record.db import Database
from tether.record.ledger import Ledger
from tether.record.tables import (
    approvals,
    eval_results,
    model_calls,
    policies,
    runs,
)

RUN_COLUMNS = ("id", "workflow", "workflow_version", "workflow_ref", "status", "outcome", "steps", "started_by",
               "tenant", "state", "error", "trace_id", "created_at", "updated_at", "wake_at", "driver")  # fmt: skip


def run_json(row: Any) -> dict[str, Any]:
    return {c: getattr(row, c) for c in RUN_COLUMNS}


def list_runs(db: Database, *, status: str | None = None, workflow: str | None = None, tenant: str | None = None,
              started_by: str | None = None, since: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:  # fmt: skip
    q = sa.select(*(runs.c[c] for c in RUN_COLUMNS))
    for col, value in (("status", status), ("workflow", workflow), ("tenant", tenant), ("started_by", started_by)):
        if value:
            q = q.where(runs.c[col] == value)
    if since:
        q = q.where(runs.c.created_at >= since)
    with db.read() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(q.subquery())).scalar() or 0
        rows = conn.execute(q.order_by(runs.c.created_at.desc(), runs.c.id).limit(limit).offset(offset)).all()
    return {"total": total, "runs": [run_json(r) for r in rows]}


def timeline(db: Database, run_id: str) -> dict[str, Any]:
    """Everything about one run: its row, journal, approvals, ledger entries, trace and cost."""
    with db.read() as conn:
        row = store.get_run(conn, run_id)
        events = store.load_events(conn, run_id)
        reqs = [ApprovalRequest.from_row(r, row.started_by).to_json()
                for r in conn.execute(sa.select(approvals).where(approvals.c.run_id == run_id).order_by(approvals.c.requested_at))]  # fmt: skip
        span_rows = tracing.load(conn, run_id)
    entries = [e.to_json() for e in Ledger(db).entries(run_id)]
    with db.read() as conn:
        calls = conn.execute(sa.select(model_calls).where(model_calls.c.run_id == run_id).order_by(model_calls.c.id)).all()
    cost = {"usd": round(float(row.cost_usd or 0), 6), "ceiling_usd": row.cost_ceiling_usd, "input_tokens": sum(c.input_tokens for c in calls),
            "output_tokens": sum(c.output_tokens for c in calls), "model_calls": len(calls),
            "calls": [{"call_id": c.call_id, "step": c.step, "model": c.model, "usd": c.cost_usd,
                       "input_tokens": c.input_tokens, "output_tokens": c.output_tokens, "cached": c.cached} for c in calls]}  # fmt: skip
    return {
        "run": {**run_json(row), "input": row.input, "policy_hash": row.policy_hash, "cost_ceiling_usd": row.cost_ceiling_usd},
        "events": [e.__dict__ for e in events],
        "approvals": reqs,
        "ledger": entries,
        "trace": {"trace_id": row.trace_id, "root_span_id": row.root_span_id, "spans": [
            {k: s[k] for k in ("span_id", "parent_span_id", "name", "status", "start_ns", "end_ns")} for s in span_rows]},
        "cost": cost,
    }  # fmt: skip


def workflows(db: Database) -> list[dict[str, Any]]:
    """Registered workflows and every version that ran, with its rollout and kill switch."""
    by_name: dict[str, dict[str, Any]] = {}
    for ep in entry_points(group="tether.workflows"):
        by_name[ep.name] = {"name": ep.name, "registered": ep.value, "versions": [], "rollout": None}
    with db.read() as conn:
        q = (sa.select(runs.c.workflow, runs.c.workflow_version, runs.c.workflow_ref, sa.func.count().label("runs"),
                       sa.func.min(runs.c.created_at).label("first"), sa.func.max(runs.c.created_at).label("last"))
             .group_by(runs.c.workflow, runs.c.workflow_version, runs.c.workflow_ref).order_by(sa.text("first")))  # fmt: skip
        for r in conn.execute(q):
            w = by_name.setdefault(r.workflow, {"name": r.workflow, "registered": None, "versions": [], "rollout": None})
            w["versions"].append({"version": r.workflow_version, "ref": r.workflow_ref, "runs": r.runs,
                                  "first_run": r.first, "last_run": r.last})  # fmt: skip
    for r in rollout.all_rollouts(db):
        w = by_name.setdefault(r.workflow, {"name": r.workflow, "registered": None, "versions": [], "rollout": None})
        w["rollout"] = r.to_json()
    return sorted(by_name.values(), key=lambda w: w["name"])


def rollout_refs(db: Database) -> set[str]:
    """The module:attribute versions rollouts name (the only ones the API will import to start a run)."""
    return {ref for r in rollout.all_rollouts(db) for ref in (r.stable_ref, r.candidate_ref) if ref}


def policy_versions(db: Database) -> list[dict[str, Any]]:
    with db.read() as conn:
        used = dict(conn.execute(sa.select(runs.c.policy_hash, sa.func.count()).group_by(runs.c.policy_hash)).all())
        rows = conn.execute(sa.select(policies.c.hash, policies.c.source, policies.c.created_at)
                            .order_by(policies.c.source, policies.c.created_at)).all()  # fmt: skip
    return [{"hash": r.hash, "source": r.source, "created_at": r.created_at, "runs": used.get(r.hash, 0)} for r in rows]


def policy(db: Database, policy_hash: str) -> dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(sa.select(policies).where(policies.c.hash == policy_hash)).first()
    if row is None:
        raise RunNotFound(f"no policy version with hash {policy_hash!r}")
    return {"hash": row.hash, "source": row.source, "created_at": row.created_at, "content": row.content}


EVAL_METRICS = ("task_success", "routing_accuracy", "unsafe_action_rate", "policy_violation_rate", "escalation_rate",
                "cost_per_task_usd", "steps_per_task", "latency_p95_ms")  # fmt: skip


def eval_list(db: Database) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(sa.select(eval_results).order_by(eval_results.c.created_at.desc()).limit(100)).all()
    return [{"id": r.id, "source": r.source, "created_at": r.created_at, "cases": r.summary.get("cases"),
             "gate_passed": r.summary.get("gate_passed"), **{m: r.summary.get(m) for m in EVAL_METRICS}} for r in rows]  # fmt: skip


def eval_result(db: Database, eval_id: int) -> dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(sa.select(eval_results).where(eval_results.c.id == eval_id)).first()
    if row is None:
        raise RunNotFound(f"no eval result with id {eval_id}")
    return {"id": row.id, "source": row.source, "created_at": row.created_at, **row.summary}


def costs(db: Database, days: int = 30) -> dict[str, Any]:
    """Model spend and tokens by day, tenant, workflow and model, from the cost meter's records."""
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).date().isoformat()
    with db.read() as conn:
        report = spend_report(conn, since=since)

    def rows(key: str, label: str) -> list[dict[str, Any]]:
        ordered = sorted(report[key], key=lambda r: r["name"])
        return [{label: r["name"], "usd": r["cost_usd"], "tokens": r["tokens"], "model_calls": r["calls"]} for r in ordered]

    available = report["total_usd"] > 0 or report["tokens"] > 0  # the offline model is metered at $0 and no tokens
    return {
        "available": available,
        "message": None if available else "no cost data (the models that ran reported no spend or tokens)",
        "days": days,
        "by_day": rows("by_day", "day"),
        "by_tenant": rows("by_tenant", "tenant"),
        "by_workflow": rows("by_workflow", "workflow"),
        "by_model": rows("by_model", "model"),
        "total_usd": report["total_usd"],
        "cache_hit_rate": report["cache_hit_rate"],
    }


def _rounded(v: dict[str, float]) -> dict[str, float]:
    return {**v, "usd": round(v["usd"], 6)}
