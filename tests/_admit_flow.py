"""Two versions of one small workflow, for the admission and Client tests: a run says which one it ran
in its outcome, and a refund over $100 waits for a person (the policy of tests/_flows.py)."""

from __future__ import annotations

from typing import Any

from _flows import POLICY, TOOLS, World
from pydantic import BaseModel, Field

from tether import End, RunContext, Workflow


class Ticket(BaseModel):
    ticket_id: str | None = Field(default=None, pattern=r"^[A-Z0-9-]+$")
    amount_usd: float = 50.0


def _workflow(ref: str) -> Workflow[Ticket, World]:
    return Workflow("admit_flow", input=Ticket, tools=TOOLS, policy=POLICY, deps=lambda db: World(), ref=ref)


stable = _workflow("_admit_flow:stable")
candidate = _workflow("_admit_flow:candidate")


@stable.state(initial=True, goes_to=[])
def go(run: RunContext[Ticket, World]) -> Any:
    r = run.call("payments.refund", {"transaction_id": run.input.ticket_id or "T0", "amount_usd": run.input.amount_usd})
    return End("completed", "stable") if r.ok else End("escalated", f"refund {r.status}")


@candidate.state(initial=True, goes_to=[])
def go_on_the_candidate(run: RunContext[Ticket, World]) -> Any:
    r = run.call("payments.refund", {"transaction_id": run.input.ticket_id or "T0", "amount_usd": run.input.amount_usd})
    return End("completed", "candidate") if r.ok else End("escalated", f"refund {r.status}")
