"""`tether approvals [approve|deny ID --as USER]`: the approval inbox."""

from __future__ import annotations

import click

from tether.cli._common import db_option, echo_json, json_option, one_line_errors, open_db
from tether.cli.runs import result_line
from tether.guardrails.approvals import ApprovalInbox
from tether.orchestration.runtime import Runtime
from tether.orchestration.workflow import load
from tether.record import runs as store


@click.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Include decided requests.")
@db_option
@json_option
@click.pass_context
@one_line_errors
def approvals(ctx: click.Context, show_all: bool, db_url: str | None, as_json: bool) -> None:
    """List approval requests (pending ones unless --all)."""
    if ctx.invoked_subcommand:
        return
    reqs = ApprovalInbox(open_db(db_url)).list(None if show_all else "pending")
    if as_json:
        echo_json([r.to_json() for r in reqs])
        return
    if not reqs:
        click.echo("no pending approvals" if not show_all else "no approval requests")
    for r in reqs:
        decided = f" {r.status} by {r.decided_by}" if r.decided_by else ""
        click.echo(f"{r.id}  {r.requested_at[:19]}  {r.tool} {r.args}  rules={r.rules}  run={r.run_id} "
                   f"started_by={r.started_by}{decided}")  # fmt: skip


def _decide(approval_id: str, approve: bool, user: str, reason: str | None, db_url: str | None, as_json: bool) -> None:
    db = open_db(db_url)
    inbox = ApprovalInbox(db)
    pending = inbox.get(approval_id)
    with db.read() as conn:
        wf = load(store.get_run(conn, pending.run_id).workflow_ref)  # fails before anything is decided
    req = inbox.decide(approval_id, approve=approve, by=user, reason=reason)
    runtime = Runtime(db)
    try:
        result = runtime.resume(req.run_id, wf)
    finally:
        runtime.close()
    if as_json:
        echo_json({"approval": req.to_json(), "run": result.__dict__})
        return
    click.echo(f"{req.id} {req.status} by {req.decided_by}")
    click.echo(result_line(result))


_user = click.option("--as", "user", required=True, help="Who decides (must not be who started the run).")
_reason = click.option("--reason", default=None, help="Why; kept in the ledger.")


@approvals.command()
@click.argument("approval_id", metavar="ID")
@_user
@_reason
@db_option
@json_option
@one_line_errors
def approve(approval_id: str, user: str, reason: str | None, db_url: str | None, as_json: bool) -> None:
    """Approve a waiting call; its run resumes."""
    _decide(approval_id, True, user, reason, db_url, as_json)


@approvals.command()
@click.argument("approval_id", metavar="ID")
@_user
@_reason
@db_option
@json_option
@one_line_errors
def deny(approval_id: str, user: str, reason: str | None, db_url: str | None, as_json: bool) -> None:
    """Deny a waiting call; its run goes on without it."""
    _decide(approval_id, False, user, reason, db_url, as_json)
