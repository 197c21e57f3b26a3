"""Human approval of gated calls, with segregation of duties.

A request is created (inside the run's transaction) when the gate answers
require_human_approval. A person decides it; neither the person who started
the run nor the component that proposed the call may approve it.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from tether.errors import ApprovalError
from tether.guardrails.policy import Decision
from tether.record import ledger
from tether.record.db import Database, timestamp
from tether.record.tables import approvals, runs

ApprovalStatus = Literal["pending", "approved", "denied"]


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    run_id: str
    call_id: str
    step: int
    tool: str
    args: dict[str, Any]
    rules: list[str]
    policy_hash: str
    proposer: str
    status: ApprovalStatus
    requested_at: str
    decided_by: str | None
    decided_at: str | None
    reason: str | None
    started_by: str | None = None

    @classmethod
    def from_row(cls, row: Any, started_by: str | None = None) -> ApprovalRequest:
        return cls(
            row.id, row.run_id, row.call_id, row.step, row.tool, row.args, row.rules, row.policy_hash,
            row.proposer, row.status, row.requested_at, row.decided_by, row.decided_at, row.reason, started_by,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def principal(name: str) -> str:
    """A person's or component's name as given, refused when it could pass for someone else.

    Names are compared by `same_principal`: Unicode-normalised (NFKC) and
    case-folded, so `DEMO` or a full-width `ｄｅｍｏ` is the same person as `demo`.
    """
    cleaned = name.strip()
    if not cleaned:
        raise ApprovalError("a name is required (--as USER)")
    bad = [c for c in cleaned if unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")]
    if bad:
        raise ApprovalError(f"name {cleaned!r} contains invisible or control characters")
    if len(cleaned) > 200:
        raise ApprovalError("a name is at most 200 characters")
    return cleaned


def _key(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold().strip()


def same_principal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and _key(a) == _key(b)


def request(
    conn: sa.Connection, *, run_id: str, call_id: str, step: int, tool: str, args: dict[str, Any],
    decision: Decision, proposer: str,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """Create a pending request inside the caller's transaction.

    Returns its id and the body of its ledger entry, which the caller appends in
    order after the proposal and decision it belongs to."""
    approval_id = "apr_" + secrets.token_hex(6)
    conn.execute(
        approvals.insert().values(
            id=approval_id, run_id=run_id, call_id=call_id, step=step, tool=tool, args=args,
            rules=decision.rules, policy_hash=decision.policy_hash, proposer=proposer,
            status="pending", requested_at=timestamp(),
        )  # fmt: skip
    )
    body = {"approval_id": approval_id, "call_id": call_id, "tool": tool, "rules": decision.rules,
            "policy_hash": decision.policy_hash, "proposer": proposer}  # fmt: skip
    return approval_id, body


def for_call(conn: sa.Connection, run_id: str, call_id: str) -> ApprovalRequest | None:
    row = conn.execute(
        sa.select(approvals)
        .where(approvals.c.run_id == run_id, approvals.c.call_id == call_id)
        .order_by(approvals.c.requested_at.desc())
    ).first()
    return ApprovalRequest.from_row(row) if row else None


class ApprovalInbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, status: ApprovalStatus | None = "pending") -> Sequence[ApprovalRequest]:
        q = (
            sa.select(approvals, runs.c.started_by)
            .join(runs, runs.c.id == approvals.c.run_id)
            .order_by(approvals.c.requested_at)
        )
        if status:
            q = q.where(approvals.c.status == status)
        with self.db.read() as conn:
            return [ApprovalRequest.from_row(r, r.started_by) for r in conn.execute(q)]

    def get(self, approval_id: str) -> ApprovalRequest:
        with self.db.read() as conn:
            return self._get(conn, approval_id)

    @staticmethod
    def _get(conn: sa.Connection, approval_id: str) -> ApprovalRequest:
        row = conn.execute(
            sa.select(approvals, runs.c.started_by)
            .join(runs, runs.c.id == approvals.c.run_id)
            .where(approvals.c.id == approval_id)
        ).first()
        if row is None:
            raise ApprovalError(f"no approval request with id {approval_id!r}")
        return ApprovalRequest.from_row(row, row.started_by)

    def decide(self, approval_id: str, *, approve: bool, by: str, reason: str | None = None) -> ApprovalRequest:
        """Record one person's decision. Refuses self-approval and double decisions."""
        by = principal(by)
        with self.db.transaction() as conn:
            req = self._get(conn, approval_id)
            if req.status != "pending":
                raise ApprovalError(f"approval {approval_id} was already {req.status} by {req.decided_by}")
            if same_principal(by, req.started_by):
                raise ApprovalError(f"{by} started run {req.run_id} and cannot decide its approvals")
            if same_principal(by, req.proposer):
                raise ApprovalError(f"{by} proposed this call and cannot approve it")
            status: ApprovalStatus = "approved" if approve else "denied"
            now = timestamp()
            res = conn.execute(
                approvals.update()
                .where(approvals.c.id == approval_id, approvals.c.status == "pending")
                .values(status=status, decided_by=by, decided_at=now, reason=reason)
            )
            if res.rowcount != 1:  # another decider won the race
                raise ApprovalError(f"approval {approval_id} was decided by someone else meanwhile")
            ledger.append(
                conn,
                "approval_decided",
                {"approval_id": approval_id, "call_id": req.call_id, "tool": req.tool, "approved": approve,
                 "by": by, "reason": reason},  # fmt: skip
                run_id=req.run_id,
            )
        return self.get(approval_id)
