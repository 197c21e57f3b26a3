"""`tether demo`: the triage workflow on held-back Banking77 tickets, end to end."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from tether.orchestration.runtime import Runtime
from tether.record.db import Database, timestamp
from tether.record.ledger import Ledger
from tether.record.tables import run_events, runs
from tether.workflows.triage import data, systems
from tether.workflows.triage.flow import confidence_threshold, workflow
from tether.workflows.triage.model import classifier

DEMO_USER = "demo"


@dataclass
class DemoSummary:
    tickets: int
    completed: int
    escalated: int
    awaiting_approval: int
    denied: int
    failed: int
    low_confidence: int
    actions: dict[str, int]
    outcomes: dict[str, int]
    max_steps: int
    ledger_ok: bool
    ledger_entries: int
    wall_s: float
    runs_per_s: float
    model_load_s: float
    batch: str
    cost_usd: float = 0.0  # model spend of these runs (the offline classifier is priced at 0)
    tokens: int = 0  # model tokens (the offline classifier consumes none: it is not a language model)
    pending_approvals: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_demo(
    db: Database,
    *,
    tickets: int = 200,
    seed: int = 7,
    progress: Callable[[int, int], None] | None = None,
) -> DemoSummary:
    systems.Systems(db)
    t0 = time.perf_counter()
    classifier()  # load (or train once and cache) before the clock for runs starts
    model_load_s = time.perf_counter() - t0

    batch = secrets.token_hex(3)
    picked = data.demo_tickets(tickets, seed)
    ids = [f"TKT-{batch}-{i + 1:04d}" for i in range(len(picked))]
    now = timestamp()
    with db.transaction() as conn:  # the helpdesk receives the inbound tickets
        conn.execute(systems.tickets.insert(), [
            {"id": tid, "customer_id": cust, "text": ex.text, "status": "new", "created_at": now, "updated_at": now}
            for tid, (ex, cust) in zip(ids, picked, strict=True)
        ])  # fmt: skip

    runtime = Runtime(db)
    results = []
    start = time.perf_counter()
    try:
        for i, tid in enumerate(ids):
            results.append(runtime.start(workflow, {"ticket_id": tid}, started_by=DEMO_USER))
            if progress:
                progress(i + 1, len(ids))
    finally:
        runtime.close()
    wall = time.perf_counter() - start

    run_ids = [r.run_id for r in results]
    actions, denied_runs, low_conf = _tally(db, run_ids)
    status = Counter(r.status for r in results)
    report = Ledger(db).verify()
    with db.read() as conn:
        cost, tokens = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(runs.c.cost_usd), 0.0),
                                              sa.func.coalesce(sa.func.sum(runs.c.tokens), 0))
                                    .where(runs.c.id.in_(run_ids))).one()  # fmt: skip
    return DemoSummary(
        tickets=len(results),
        completed=status["completed"],
        escalated=status["escalated"],
        awaiting_approval=status["waiting_approval"],
        denied=len(denied_runs),
        failed=sum(n for s, n in status.items() if s not in ("completed", "escalated", "waiting_approval")),
        low_confidence=low_conf,
        actions=dict(sorted(actions.items())),
        outcomes=dict(Counter(r.outcome or r.status for r in results).most_common()),
        max_steps=max((r.steps for r in results), default=0),
        ledger_ok=report.ok,
        ledger_entries=report.entries,
        wall_s=round(wall, 3),
        runs_per_s=round(len(results) / wall, 2) if wall > 0 else 0.0,
        model_load_s=round(model_load_s, 3),
        batch=batch,
        cost_usd=round(float(cost), 6),
        tokens=int(tokens),
        pending_approvals=[r.approval_id for r in results if r.approval_id],
    )


def _tally(db: Database, run_ids: list[str]) -> tuple[Counter[str], set[str], int]:
    """Executed actions by tool, runs with a policy denial, low-confidence escalations."""
    actions: Counter[str] = Counter()
    denied: set[str] = set()
    low = 0
    q = sa.select(run_events.c.run_id, run_events.c.kind, run_events.c.data).where(
        run_events.c.run_id.in_(run_ids), run_events.c.kind.in_(["result", "choice"])
    )
    with db.read() as conn:
        for run_id, kind, ev in conn.execute(q):
            if kind == "choice":
                c = ev["choice"]
                low += c["error"] is None and c["confidence"] < confidence_threshold(c["option"])
            elif ev["status"] == "ok" and workflow.tools.get(ev["tool"]).side_effect:
                actions[ev["tool"]] += 1
            elif ev["status"] == "denied":
                denied.add(run_id)
    return actions, denied, low
