"""Eval hooks for the triage workflow: case setup, final state, observed route."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tether.record.db import timestamp
from tether.workflows.triage import systems
from tether.workflows.triage.systems import Systems


class TriageEvals:
    def setup(self, deps: Systems, setup: dict[str, Any]) -> None:
        """`setup.tickets`: inbound tickets to put in the helpdesk ([{id, customer_id, text}])."""
        now = timestamp()
        rows = [{"id": t["id"], "customer_id": t["customer_id"], "text": t["text"], "status": "new",
                 "created_at": now, "updated_at": now} for t in setup.get("tickets", [])]  # fmt: skip
        if rows:
            with deps.db.transaction() as conn:
                conn.execute(systems.tickets.insert(), rows)

    def setup_from_run(self, deps: Systems, run_input: dict[str, Any]) -> dict[str, Any]:
        ticket_id = run_input.get("ticket_id")
        if not ticket_id or run_input.get("text"):
            return {}  # the run opened its own ticket from its input
        t = deps.get_ticket(ticket_id)
        return {"tickets": [{"id": t["ticket_id"], "customer_id": t["customer_id"], "text": t["text"]}]}

    def final_state(self, deps: Systems, case: dict[str, Any]) -> dict[str, Any]:
        """The case's ticket, the refunds made for it, and its customer's card statuses."""
        ticket_id = case["input"].get("ticket_id")
        if not ticket_id:
            return {}
        with deps.db.read() as conn:
            row = conn.execute(sa.select(systems.tickets).where(systems.tickets.c.id == ticket_id)).first()
            if row is None:
                return {"ticket": None}
            tags = sorted(conn.execute(sa.select(systems.ticket_tags.c.tag).where(systems.ticket_tags.c.ticket_id == ticket_id)).scalars())
            refunds = [{"transaction_id": r.transaction_id, "amount_usd": r.amount_cents / 100}
                       for r in conn.execute(sa.select(systems.refunds).where(systems.refunds.c.ticket_id == ticket_id)
                                             .order_by(systems.refunds.c.created_at))]  # fmt: skip
            cards = {r.id: r.status for r in conn.execute(sa.select(systems.cards).where(systems.cards.c.customer_id == row.customer_id))}
            replies = [r.template for r in conn.execute(
                sa.select(systems.replies.c.template).where(systems.replies.c.ticket_id == ticket_id, systems.replies.c.internal.is_(False))
            )]  # fmt: skip
            issues = conn.execute(sa.select(sa.func.count()).select_from(systems.issues).where(systems.issues.c.ticket_id == ticket_id)).scalar()
            customer_status = conn.execute(sa.select(systems.customers.c.status).where(systems.customers.c.id == row.customer_id)).scalar()
        return {
            "ticket": {"status": row.status, "queue": row.queue, "priority": row.priority, "tags": tags, "replies": replies},
            "refunds": refunds,
            "cards": cards,
            "issues": issues,
            "customer": {"status": customer_status},
        }

    def observed_route(self, actions: list[Any], status: str) -> str | None:
        """The queue the agent routed to; `human_review` when it escalated without routing."""
        for a in reversed(actions):
            if a.tool == "helpdesk.route" and a.status == "ok":
                return str(a.args["queue"])
        escalated = any(a.tool == "helpdesk.escalate" and a.status == "ok" for a in actions)
        return "human_review" if escalated else None
