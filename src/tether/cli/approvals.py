"""`tether approvals [approve|deny ID --as USER]`: the approval inbox."""

from __future__ import annotations

import click

from tether.cli._common import (
    db_option,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
)
from tether.cli.runs import result_line
from tether.guardrails.approvals import ApprovalInbox, add_approver, list_approvers
from tether.orchestration.client import Client
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
        untrusted = f"  UNTRUSTED={','.join(r.untrusted_args)}" if r.untrusted_args else ""
        click.echo(f"{r.id}  {r.requested_at[:19]}  {r.tool} {r.args}  rules={r.rules}  run={r.run_id} "
                   f"started_by={r.started_by}{decided}{untrusted}")  # fmt: skip


def _decide(approval_id: str, approve: bool, user: str, reason: str | None, db_url: str | None, as_json: bool) -> None:
    with Client(open_db(db_url)) as client:
        d = client.decide(approval_id, approve=approve, by=user, reason=reason)
    req = d.approval
    if as_json:
        echo_json(d.to_json())
    elif req.status == "pending":  # more approvers needed: the run keeps waiting
        click.echo(f"{req.id} vote recorded: {req.votes} of {req.required} approvals"
                   + (f" (role {req.role})" if req.role else ""))  # fmt: skip
    else:
        click.echo(f"{req.id} {req.status} by {req.decided_by}")
        click.echo(d.note or result_line(d.run))


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


@approvals.command()
@db_option
@json_option
@one_line_errors
def expire(db_url: str | None, as_json: bool) -> None:
    """Apply expiry to requests past their time (for a scheduler); resume the runs they end."""
    db = open_db(db_url)
    changed = ApprovalInbox(db).expire()
    out = []
    runtime = Runtime(db)
    try:
        for req in changed:
            run = None
            if req.status == "expired":
                with db.read() as conn:
                    run = runtime.resume(req.run_id, load(store.get_run(conn, req.run_id).workflow_ref)).__dict__
            out.append({"approval": req.id, "status": req.status, "role": req.role, "run": run})
    finally:
        runtime.close()
    if as_json:
        echo_json(out)
        return
    for o in out:
        what = f"escalated to role {o['role']}" if o["status"] == "pending" else "expired"
        click.echo(f"{o['approval']} {what}" + (f"; {o['run']['run_id']} {o['run']['status']}" if o["run"] else ""))
    if not out:
        click.echo("nothing expired")


@click.group(invoke_without_command=True)
@db_option
@json_option
@click.pass_context
@one_line_errors
def approvers(ctx: click.Context, db_url: str | None, as_json: bool) -> None:
    """Who may approve which tools, by role."""
    if ctx.invoked_subcommand:
        return
    rows = list_approvers(open_db(db_url))
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<20} {r['role']:<24} {r['tools']}")
    if not rows:
        click.echo("no approvers with roles (rules without a role accept anyone but the run's starter and proposer)")


@approvers.command(name="add")
@click.argument("name")
@click.option("--role", required=True, help="The role, as rules name it (then: {role: ...}).")
@click.option("--tools", required=True, help="The tool family the role covers, a glob like 'payments.*'.")
@db_option
@one_line_errors
def add(name: str, role: str, tools: str, db_url: str | None) -> None:
    """Give NAME an approver role for a tool family."""
    add_approver(open_db(db_url, create=True), name, role, tools)
    click.echo(f"{name} holds {role} for {tools}")
