"""Deciding an approval and resuming its run: one path for the CLI and the API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.guardrails.approvals import ApprovalInbox, ApprovalRequest
from tether.orchestration.runtime import RunResult, Runtime
from tether.orchestration.session import is_session
from tether.orchestration.workflow import load
from tether.record import runs as store
from tether.record.db import Database


@dataclass(frozen=True)
class Decided:
    approval: ApprovalRequest
    run: RunResult | None  # None while more votes are needed, or when the run was not resumed
    note: str | None = None  # why a decided run was not resumed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"approval": self.approval.to_json(), "run": self.run.__dict__ if self.run else None}
        if self.note:
            out["note"] = self.note
        return out


def decide_and_resume(
    db: Database,
    approval_id: str,
    *,
    approve: bool,
    by: str,
    reason: str | None = None,
    check: Callable[[ApprovalRequest], None] | None = None,
    runtime: Runtime | None = None,
) -> Decided:
    """Record `by`'s vote (segregation of duties is the inbox's); once the request is
    decided, resume its run on the code of the version it started with. `check` may
    refuse the request before anything is written."""
    inbox = ApprovalInbox(db)
    pending = inbox.get(approval_id)
    if check is not None:
        check(pending)
    with db.read() as conn:
        ref = store.get_run(conn, pending.run_id).workflow_ref
    if is_session(ref):  # the call waits in its session: session.wait / resume_call carries it out
        req = inbox.decide(approval_id, approve=approve, by=by, reason=reason)
        note = None if req.status == "pending" else f"session {req.run_id} carries the call out when it resumes it"
        return Decided(req, None, note)
    wf = load(ref)  # fails before anything is decided
    req = inbox.decide(approval_id, approve=approve, by=by, reason=reason)
    if req.status == "pending":  # more approvers needed: the run keeps waiting
        return Decided(req, None)
    with db.read() as conn:
        started_on = store.get_run(conn, req.run_id).workflow_version
    if started_on != wf.version:  # the decision stands; the run waits for code of its version (or --migrate)
        return Decided(req, None, f"run {req.run_id} not resumed: it started on version {started_on}, the code here is "
                                  f"{wf.version}; `tether runs resume {req.run_id} --migrate` re-runs it on this code")  # fmt: skip
    rt = runtime or Runtime(db)
    try:
        return Decided(req, rt.resume(req.run_id, wf))
    finally:
        if runtime is None:
            rt.close()
