"""Human approval of gated calls, with segregation of duties.

A request is created (inside the run's transaction) when the gate answers
require_human_approval. A person decides it; neither the person who started
the run nor the component that proposed the call may approve it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from tether.errors import (
    ApprovalConflict,
    ApprovalError,
    ApprovalForbidden,
    ApprovalNotFound,
)
from tether.guardrails.identity import principal, refuse_look_alike, same_principal
from tether.guardrails.policy import ApprovalTier, Decision
from tether.record import ledger
from tether.record.db import Database, timestamp
from tether.record.tables import approval_votes, approvals, approvers, runs

ApprovalStatus = Literal["pending", "approved", "denied", "expired", "withdrawn"]


@dataclass(frozen=True)
class ApprovalRequest:
    """One call waiting for people: the proposed call, the rule that asked, who must decide, votes so far."""

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
    required: int = 1
    role: str | None = None
    expires_at: str | None = None
    on_expiry: str = "deny"
    escalate_to: str | None = None
    risk: float | None = None
    votes: int = 0
    untrusted_args: list[str] = field(default_factory=list)  # traced to untrusted sources

    @classmethod
    def from_row(cls, row: Any, started_by: str | None = None, votes: int = 0) -> ApprovalRequest:
        return cls(
            row.id, row.run_id, row.call_id, row.step, row.tool, row.args, row.rules, row.policy_hash,
            row.proposer, row.status, row.requested_at, row.decided_by, row.decided_at, row.reason, started_by,
            row.required, row.role, row.expires_at, row.on_expiry, row.escalate_to, row.risk, votes,
            list(row.untrusted_args or []),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _key(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold().strip()




def request(
    conn: sa.Connection, *, run_id: str, call_id: str, step: int, tool: str, args: dict[str, Any],
    decision: Decision, proposer: str,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """Create a pending request inside the caller's transaction.

    Returns its id and the body of its ledger entry, which the caller appends in
    order after the proposal and decision it belongs to."""
    approval_id = "apr_" + secrets.token_hex(6)
    tier = decision.approval or ApprovalTier()
    now = dt.datetime.now(dt.UTC)
    expires = (now + dt.timedelta(seconds=tier.expires_in_s)).isoformat(timespec="microseconds") if tier.expires_in_s else None
    conn.execute(
        approvals.insert().values(
            id=approval_id, run_id=run_id, call_id=call_id, step=step, tool=tool, args=args,
            rules=decision.rules, policy_hash=decision.policy_hash, proposer=proposer,
            status="pending", requested_at=now.isoformat(timespec="microseconds"), required=tier.required,
            role=tier.role, expires_at=expires, on_expiry=tier.on_expiry, escalate_to=tier.escalate_to, risk=decision.risk,
            untrusted_args=decision.untrusted_args or None,
        )  # fmt: skip
    )
    body = {"approval_id": approval_id, "call_id": call_id, "tool": tool, "rules": decision.rules,
            "policy_hash": decision.policy_hash, "proposer": proposer, "required": tier.required, "role": tier.role,
            "expires_at": expires, "risk": decision.risk, "untrusted_args": decision.untrusted_args}  # fmt: skip
    return approval_id, body


def withdraw(conn: sa.Connection, run_id: str, by: str, reason: str = "run cancelled") -> list[str]:
    """Withdraw a stopped run's pending requests (inside the caller's transaction); their ids."""
    # An undo's own request stays: withdrawing it would leave the effect in place.
    ids = list(conn.execute(sa.select(approvals.c.id).where(approvals.c.run_id == run_id, approvals.c.status == "pending",
                                                            approvals.c.call_id.not_like("undo:%"))).scalars())  # fmt: skip
    if ids:
        conn.execute(approvals.update().where(approvals.c.id.in_(ids)).values(
            status="withdrawn", decided_by=by, decided_at=_iso(dt.datetime.now(dt.UTC)), reason=reason))  # fmt: skip
    return ids


def for_call(conn: sa.Connection, run_id: str, call_id: str) -> ApprovalRequest | None:
    row = conn.execute(
        sa.select(approvals)
        .where(approvals.c.run_id == run_id, approvals.c.call_id == call_id)
        .order_by(approvals.c.requested_at.desc())
    ).first()
    return ApprovalRequest.from_row(row) if row else None


_VOTES = (
    sa.select(sa.func.count()).where(approval_votes.c.approval_id == approvals.c.id, approval_votes.c.approve.is_(True))
    .scalar_subquery().label("votes")
)  # fmt: skip


class ApprovalInbox:
    """The approval inbox: pending requests, votes with segregation of duties, expiry."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, status: ApprovalStatus | None = "pending") -> Sequence[ApprovalRequest]:
        q = (
            sa.select(approvals, runs.c.started_by, _VOTES)
            .join(runs, runs.c.id == approvals.c.run_id)
            .order_by(approvals.c.requested_at)
        )
        if status:
            q = q.where(approvals.c.status == status)
        with self.db.read() as conn:
            return [ApprovalRequest.from_row(r, r.started_by, r.votes) for r in conn.execute(q)]

    def get(self, approval_id: str) -> ApprovalRequest:
        with self.db.read() as conn:
            return self._get(conn, approval_id)

    def current(self, approval_id: str, now: dt.datetime | None = None) -> ApprovalRequest:
        """The request as it stands now: if its time ran out, expired (or escalated) first, and
        ledgered as `expire` does, so a caller waiting on it never waits past its expiry."""
        with self.db.transaction() as conn:
            return _expire(conn, self._get(conn, approval_id), now or dt.datetime.now(dt.UTC))

    @staticmethod
    def _get(conn: sa.Connection, approval_id: str) -> ApprovalRequest:
        row = conn.execute(
            sa.select(approvals, runs.c.started_by, _VOTES)
            .join(runs, runs.c.id == approvals.c.run_id)
            .where(approvals.c.id == approval_id)
        ).first()
        if row is None:
            raise ApprovalNotFound(f"no approval request with id {approval_id!r}")
        return ApprovalRequest.from_row(row, row.started_by, row.votes)

    def decide(self, approval_id: str, *, approve: bool, by: str, reason: str | None = None,
               now: dt.datetime | None = None) -> ApprovalRequest:  # fmt: skip
        """Record one person's vote. A deny vote decides at once; approvals need as many
        distinct approvers as the rule asked for, with its role. Refuses self-approval,
        the proposer, a second vote by the same person, and votes on expired requests."""
        by = principal(by)
        now = now or dt.datetime.now(dt.UTC)
        with self.db.transaction() as conn:
            req = self._get(conn, approval_id)
            req = _expire(conn, req, now)
            if req.status != "pending":
                who = f" by {req.decided_by}" if req.decided_by else ""
                raise ApprovalConflict(f"approval {approval_id} was already {req.status}{who}")
            if same_principal(by, req.started_by):
                raise ApprovalForbidden(f"{by} started run {req.run_id} and cannot decide its approvals")
            if same_principal(by, req.proposer):
                raise ApprovalForbidden(f"{by} proposed this call and cannot approve it")
            if req.role and not _holds_role(conn, by, req.role, req.tool):
                raise ApprovalForbidden(f"{by} does not hold role {req.role!r} for {req.tool}")
            earlier = conn.execute(sa.select(approval_votes.c.voter).where(approval_votes.c.approval_id == approval_id)).scalars()
            if any(same_principal(by, v) for v in earlier):  # a look-alike name is the same person: one slot
                raise ApprovalConflict(f"{by} already voted on approval {approval_id}")
            try:
                conn.execute(approval_votes.insert().values(approval_id=approval_id, voter_key=_key(by), voter=by,
                                                            approve=approve, reason=reason, voted_at=_iso(now)))  # fmt: skip
            except sa.exc.IntegrityError:
                raise ApprovalConflict(f"{by} already voted on approval {approval_id}") from None
            yes = conn.execute(sa.select(sa.func.count()).select_from(approval_votes).where(
                approval_votes.c.approval_id == approval_id, approval_votes.c.approve.is_(True))).scalar() or 0  # fmt: skip
            ledger.append(conn, "approval_vote",
                          {"approval_id": approval_id, "call_id": req.call_id, "tool": req.tool, "approved": approve,
                           "by": by, "reason": self.db.redactor.text(reason) if reason else None,
                           "votes": yes, "required": req.required}, run_id=req.run_id)  # fmt: skip
            status: ApprovalStatus | None = "denied" if not approve else "approved" if yes >= req.required else None
            if status:
                res = conn.execute(
                    approvals.update()
                    .where(approvals.c.id == approval_id, approvals.c.status == "pending")
                    .values(status=status, decided_by=by, decided_at=_iso(now), reason=reason)
                )
                if res.rowcount != 1:  # another decider won the race
                    raise ApprovalConflict(f"approval {approval_id} was decided by someone else meanwhile")
                ledger.append(conn, "approval_decided",
                              {"approval_id": approval_id, "call_id": req.call_id, "tool": req.tool,
                               "approved": status == "approved", "by": by, "votes": yes}, run_id=req.run_id)  # fmt: skip
        return self.get(approval_id)

    def expire(self, now: dt.datetime | None = None) -> list[ApprovalRequest]:
        """Apply expiry to every pending request past its time (for a scheduler). Returns those changed."""
        now = now or dt.datetime.now(dt.UTC)
        changed = []
        with self.db.transaction() as conn:
            rows = conn.execute(sa.select(approvals.c.id).where(approvals.c.status == "pending",
                                                                approvals.c.expires_at < _iso(now))).scalars().all()  # fmt: skip
            for approval_id in rows:
                before = self._get(conn, approval_id)
                after = _expire(conn, before, now)
                if (after.status, after.role) != (before.status, before.role):
                    changed.append(after)
        return changed


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="microseconds")


def _expire(conn: sa.Connection, req: ApprovalRequest, now: dt.datetime) -> ApprovalRequest:
    """A pending request past its time: denied (`expired`), or handed to the escalation role."""
    if req.status != "pending" or not req.expires_at or dt.datetime.fromisoformat(req.expires_at) > now:
        return req
    if req.on_expiry == "escalate" and req.escalate_to and req.role != req.escalate_to:
        window = dt.datetime.fromisoformat(req.expires_at) - dt.datetime.fromisoformat(req.requested_at)
        expires = _iso(now + window)
        conn.execute(approvals.update().where(approvals.c.id == req.id).values(role=req.escalate_to, expires_at=expires))
        ledger.append(conn, "approval_escalated", {"approval_id": req.id, "call_id": req.call_id, "tool": req.tool,
                                                   "from_role": req.role, "to_role": req.escalate_to, "expires_at": expires},
                      run_id=req.run_id)  # fmt: skip
        return dataclasses.replace(req, role=req.escalate_to, expires_at=expires)
    conn.execute(approvals.update().where(approvals.c.id == req.id, approvals.c.status == "pending")
                 .values(status="expired", decided_at=_iso(now), reason="expired without a decision"))  # fmt: skip
    ledger.append(conn, "approval_expired", {"approval_id": req.id, "call_id": req.call_id, "tool": req.tool,
                                             "expired_at": req.expires_at}, run_id=req.run_id)  # fmt: skip
    return dataclasses.replace(req, status="expired", decided_at=_iso(now), reason="expired without a decision")


def _holds_role(conn: sa.Connection, name: str, role: str, tool: str) -> bool:
    rows = conn.execute(sa.select(approvers.c.tools).where(approvers.c.name_key == _key(name), approvers.c.role == role))
    return any(fnmatch.fnmatchcase(tool, glob) for (glob,) in rows)


def add_approver(db: Database, name: str, role: str, tools: str) -> None:
    """Give `name` the approver role `role` for tools matching the glob `tools` (ledgered)."""
    name = principal(name)
    if not role.strip() or not tools.strip():
        raise ApprovalError("an approver needs a role and a tool glob like 'payments.*'")
    with db.transaction() as conn:
        refuse_look_alike(conn, name)
        try:
            conn.execute(approvers.insert().values(name_key=_key(name), role=role, name=name, tools=tools, created_at=timestamp()))
        except sa.exc.IntegrityError:
            raise ApprovalConflict(f"{name} already holds role {role!r}") from None
        ledger.append(conn, "approver_added", {"name": name, "role": role, "tools": tools})


def list_approvers(db: Database) -> list[dict[str, str]]:
    with db.read() as conn:
        return [{"name": r.name, "role": r.role, "tools": r.tools, "since": r.created_at}
                for r in conn.execute(sa.select(approvers).order_by(approvers.c.role, approvers.c.name))]  # fmt: skip
