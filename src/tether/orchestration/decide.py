"""Deciding an approval and resuming its run: one path for the CLI and the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tether.guardrails.approvals import ApprovalInbox, ApprovalRequest
from tether.orchestration.runtime import RunResult, Runtime
from tether.orchestration.workflow import load
from tether.record import runs as store
from tether.record.db import Database


def decide_and_resume(
    db: Database,
    approval_id: str,
    *,
    approve: bool,
    by: str,
    reason: str | None = None,
    check: Callable[[ApprovalRequest], None] | None = None,
    runtime: Runtime | None = None,
) -> tuple[ApprovalRequest, RunResult | None]:
    """Record `by`'s vote (segregation of duties is the inbox's); once the request is
    decided, resume its run. `check` may refuse the request before anything is written.
    Returns the request and the run's result (None while more votes are needed)."""
    inbox = ApprovalInbox(db)
    pending = inbox.get(approval_id)
    if check is not None:
        check(pending)
    with db.read() as conn:
        wf = load(store.get_run(conn, pending.run_id).workflow_ref)  # fails before anything is decided
    req = inbox.decide(approval_id, approve=approve, by=by, reason=reason)
    if req.status == "pending":  # more approvers needed: the run keeps waiting
        return req, None
    own = runtime is None
    rt: Any = runtime or Runtime(db)
    try:
        return req, rt.resume(req.run_id, wf)
    finally:
        if own:
            rt.close()
