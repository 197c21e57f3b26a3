"""`tether serve`, `tether keys`, `tether rollout` and `tether kill`: the control plane."""

from __future__ import annotations

import click

from tether.cli._common import (
    db_option,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
)
from tether.orchestration import rollout as ro
from tether.orchestration.runtime import default_user


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65535))
@db_option
@one_line_errors
def serve(host: str, port: int, db_url: str | None) -> None:
    """The REST API (/api/, /openapi.json, /healthz) and the dashboard (/)."""
    import uvicorn

    from tether.server.app import create_app

    app = create_app(open_db(db_url, create=True))
    click.echo(f"tether control plane on http://{host}:{port}/  (API under /api/, spec at /openapi.json)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@click.group(invoke_without_command=True)
@db_option
@json_option
@click.pass_context
@one_line_errors
def keys(ctx: click.Context, db_url: str | None, as_json: bool) -> None:
    """API keys for `tether serve` (roles: operator, approver, auditor, admin)."""
    if ctx.invoked_subcommand:
        return
    from tether.server.keys import list_keys

    rows = list_keys(open_db(db_url))
    if as_json:
        echo_json([k.to_json() for k in rows])
        return
    for k in rows:
        state = f"revoked {k.revoked_at[:19]}" if k.revoked_at else "active"
        click.echo(f"{k.id}  {k.role:<9} {k.name:<20} {k.scope or '':<14} {k.created_at[:19]}  {state}")
    if not rows:
        click.echo("no API keys (tether keys create --role ROLE --name NAME)")


@keys.command(name="create")
@click.option("--role", required=True, type=click.Choice(["operator", "approver", "auditor", "admin"]))
@click.option("--name", required=True, help="Who the key stands for (approvals are decided under this name).")
@click.option("--tools", default=None, help="Approver keys: the tool family they decide, a glob like 'payments.*'.")
@db_option
@json_option
@one_line_errors
def create(role: str, name: str, tools: str | None, db_url: str | None, as_json: bool) -> None:
    """Create a key and print it once (only its hash is kept)."""
    from tether.server.keys import create_key

    key, rec = create_key(open_db(db_url, create=True), name=name, role=role, tools=tools)
    if as_json:
        echo_json({**rec.to_json(), "key": key})
        return
    click.echo(key)
    click.echo(f"{rec.id}: {role} key for {rec.name}{' on ' + rec.scope if rec.scope else ''}; "
               "it is shown only now, store it safely", err=True)  # fmt: skip


@keys.command()
@click.argument("key_id", metavar="KEY_ID")
@db_option
@one_line_errors
def revoke(key_id: str, db_url: str | None) -> None:
    """Revoke a key by its id (key_...)."""
    from tether.server.keys import revoke as do_revoke

    k = do_revoke(open_db(db_url), key_id)
    click.echo(f"{k.id} ({k.role} key for {k.name}) revoked")


def _print(r: ro.Rollout, as_json: bool, extra: str = "") -> None:
    if as_json:
        echo_json(r.to_json())
        return
    state = f"KILLED ({r.kill_reason})" if r.killed else "accepting runs"
    split = (f"{r.percent}% of new runs (by {r.key_field}) to {r.candidate_ref}, the rest to {r.stable_ref}"
             if r.candidate_ref else f"all new runs to {r.stable_ref}")  # fmt: skip
    click.echo(f"{r.workflow}: {state}; {split}{extra}")


_by = click.option("--as", "user", default=None, help="Who makes the change (default: your login name); ledgered.")


@click.group(invoke_without_command=True)
@db_option
@json_option
@click.pass_context
@one_line_errors
def rollout(ctx: click.Context, db_url: str | None, as_json: bool) -> None:
    """Workflow versions: gradual rollout (5% -> 25% -> 100%) and kill switches."""
    if ctx.invoked_subcommand:
        return
    rows = ro.all_rollouts(open_db(db_url))
    if as_json:
        echo_json([r.to_json() for r in rows])
        return
    for r in rows:
        _print(r, False)
    if not rows:
        click.echo("no rollouts or kill switches set (every workflow runs its registered version)")


@rollout.command(name="start")
@click.argument("workflow")
@click.option("--candidate", required=True, help="The new version, module:attribute (a Workflow with the same name).")
@click.option("--steps", default="5,25,100", show_default=True, help="Shares in percent, rising, ending at 100.")
@click.option("--key-field", default=ro.DEFAULT_KEY_FIELD, show_default=True, help="The input field whose hash routes a run.")
@_by
@db_option
@json_option
@one_line_errors
def start(workflow: str, candidate: str, steps: str, key_field: str, user: str | None, db_url: str | None, as_json: bool) -> None:
    """Send the first step's share of new runs to a candidate version."""
    try:
        shares = [int(s) for s in steps.split(",")]
    except ValueError:
        raise click.BadParameter(f"{steps!r} is not a list of whole percents like 5,25,100", param_hint="--steps") from None
    _print(ro.start(open_db(db_url, create=True), workflow, candidate, by=user or default_user(), steps=shares,
                    key_field=key_field), as_json)  # fmt: skip


@rollout.command()
@click.argument("workflow")
@_by
@db_option
@json_option
@one_line_errors
def advance(workflow: str, user: str | None, db_url: str | None, as_json: bool) -> None:
    """The next step of the split."""
    _print(ro.advance(open_db(db_url), workflow, by=user or default_user()), as_json)


@rollout.command()
@click.argument("workflow")
@_by
@db_option
@json_option
@one_line_errors
def promote(workflow: str, user: str | None, db_url: str | None, as_json: bool) -> None:
    """At 100%: the candidate becomes the stable version."""
    _print(ro.promote(open_db(db_url), workflow, by=user or default_user()), as_json)


@rollout.command()
@click.argument("workflow")
@click.option("--reason", default=None)
@_by
@db_option
@json_option
@one_line_errors
def rollback(workflow: str, reason: str | None, user: str | None, db_url: str | None, as_json: bool) -> None:
    """Every new run back on the stable version."""
    _print(ro.rollback(open_db(db_url), workflow, by=user or default_user(), reason=reason), as_json)


@click.command()
@click.argument("workflow")
@click.option("--reason", default=None, help="Why (required to kill); ledgered.")
@click.option("--off", is_flag=True, help="Turn the kill switch off again (new runs start; halted runs stay halted).")
@_by
@db_option
@json_option
@one_line_errors
def kill(workflow: str, reason: str | None, off: bool, user: str | None, db_url: str | None, as_json: bool) -> None:
    """Kill switch: refuse new runs of WORKFLOW now; in-flight runs halt at their next step."""
    db = open_db(db_url, create=True)
    if off:
        _print(ro.restore(db, workflow, by=user or default_user()), as_json)
        return
    r, in_flight = ro.kill(db, workflow, by=user or default_user(), reason=reason or "")
    _print(r, as_json, f"; {in_flight} in-flight run(s) halt at their next step (see `tether runs --status halted`)")
