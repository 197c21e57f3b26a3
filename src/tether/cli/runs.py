"""`tether run` and `tether runs [show RUN] [stats]`."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import click

from tether.cli._common import (
    db_option,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
    parse_json_object,
)
from tether.guardrails.loading import load_policy
from tether.orchestration import admission
from tether.orchestration.client import Client
from tether.orchestration.runtime import FAILED_STATUSES, Runtime
from tether.orchestration.workflow import load
from tether.record import runs as store
from tether.record import tracing


def report(r: Any, as_json: bool) -> None:
    """Print a run's result; a run that failed exits 1."""
    if as_json:
        echo_json(r.__dict__)
    else:
        click.echo(result_line(r))
    if r.status in FAILED_STATUSES:
        sys.exit(1)


def result_line(r: Any) -> str:
    extra = f" approval {r.approval_id}" if r.approval_id else ""
    extra += f" until {r.wake_at}" if getattr(r, "wake_at", None) else ""
    why = f" ({r.error})" if r.error else ""
    return f"{r.run_id} {r.status} {r.outcome or ''} after {r.steps} steps{extra}{why}".replace("  ", " ")


@click.command()
@click.argument("workflow_ref", metavar="WORKFLOW")
@click.option("--input", "input_json", required=True, help="The run's input as a JSON object.")
@click.option("--as", "user", default=None, help="Who starts the run (default: your login name).")
@click.option("--tenant", default="default", show_default=True)
@click.option("--policies", "policy_file", type=click.Path(dir_okay=False), help="Use this policy file instead of the workflow's.")
@click.option("--queue", "queued", is_flag=True, help="Queue the run for `tether worker` processes instead of running it here.")
@db_option
@json_option
@one_line_errors
def run(workflow_ref: str, input_json: str, user: str | None, tenant: str, policy_file: str | None,
        queued: bool, db_url: str | None, as_json: bool) -> None:  # fmt: skip
    """Start one run of WORKFLOW (a registered name or module:attribute)."""
    wf = load(workflow_ref)
    data = parse_json_object(input_json, "--input")
    admission.parse(wf, data)  # bad input fails before the database is touched (admitted in full below)
    policy = load_policy(policy_file) if policy_file else None  # so does a bad policy file
    # Either way the run is admitted by `admission.admit`: routed by a rollout under way, its policy
    # linted, refused if the workflow is killed or a budget spent, before anything is written.
    with Client(open_db(db_url, create=True), policy=policy) as client:
        if queued:
            run_id = client.queue(wf, data, started_by=user, tenant=tenant)
            echo_json({"run_id": run_id, "status": "queued"}) if as_json else click.echo(f"{run_id} queued")
            return
        r = client.start(wf, data, started_by=user, tenant=tenant)
    report(r, as_json)


@click.group(invoke_without_command=True)
@click.option("--status", default=None, help="Only runs with this status.")
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@db_option
@json_option
@click.pass_context
@one_line_errors
def runs(ctx: click.Context, status: str | None, workflow: str | None, limit: int, db_url: str | None,
         as_json: bool) -> None:  # fmt: skip
    """List runs, newest first."""
    if ctx.invoked_subcommand:
        return
    with open_db(db_url).read() as conn:
        rows = store.list_runs(conn, status=status, workflow=workflow, limit=limit)
    cols = ("id", "workflow", "status", "outcome", "steps", "started_by", "created_at")
    if as_json:
        echo_json([{c: getattr(r, c) for c in cols} for r in rows])
        return
    for r in rows:
        click.echo(f"{r.id}  {r.created_at[:19]}  {r.workflow:<16} {r.status:<17} {r.steps:>2} steps  {r.outcome or ''}")


@runs.command()
@click.argument("run_id", metavar="RUN")
@click.option("--trace", "show_trace", is_flag=True, help="Show the run's spans (from the local trace store).")
@db_option
@json_option
@one_line_errors
def show(run_id: str, show_trace: bool, db_url: str | None, as_json: bool) -> None:
    """One run: its input, status and every recorded step (or its trace)."""
    with open_db(db_url).read() as conn:
        row = store.get_run(conn, run_id)
        events = store.load_events(conn, run_id)
        spans = tracing.load(conn, run_id) if show_trace else []
    if show_trace:
        if as_json:
            echo_json(spans)
            return
        depth: dict[str | None, int] = {}
        for sp in spans:
            d = depth.get(sp["parent_span_id"], -1) + 1
            depth[sp["span_id"]] = d
            ms = (sp["end_ns"] - sp["start_ns"]) / 1e6
            keys = ("tether.policy.decision", "tether.call.status", "tether.decision.option", "gen_ai.usage.input_tokens")
            extra = " ".join(f"{k.split('.')[-1]}={sp['attributes'][k]}" for k in keys if k in sp["attributes"])
            click.echo(f"{'  ' * d}{sp['name']}  {ms:.2f} ms  {sp['status']}  {extra}".rstrip())
        if not spans:
            click.echo(f"no spans stored for {run_id} (traces went to an exporter, or TETHER_TRACE_STORE=off)")
        else:
            click.echo(f"trace {spans[0]['trace_id']}, {len(spans)} spans")
        return
    head = {c: getattr(row, c) for c in ("id", "workflow", "workflow_version", "status", "outcome", "error", "steps",
                                         "started_by", "tenant", "policy_hash", "cost_usd", "cost_ceiling_usd", "tokens", "created_at", "updated_at",
                                         "wake_at", "driver", "input")}  # fmt: skip
    by_step: dict[int, float] = {}
    for e in events:
        if e.kind == "choice" and "cost" in e.data:
            by_step[e.step] = round(by_step.get(e.step, 0.0) + e.data["cost"]["cost_usd"], 8)
    if as_json:
        echo_json({**head, "cost_by_step": by_step, "events": [e.__dict__ for e in events]})
        return
    for k, v in head.items():
        click.echo(f"{k:>16}: {v}")
    click.echo("")
    for e in events:
        click.echo(f"  {e.seq:>3} step {e.step:>2} {e.state:<10} {e.kind:<18} {_describe(e)}")


def _describe(e: store.Event) -> str:
    d = e.data
    match e.kind:
        case "enter":
            return ""
        case "choice":
            c = d["choice"]
            cost = f" ${d['cost']['cost_usd']:.6f}" if "cost" in d else ""
            return (f"{d['point']} -> {c['option']} ({c['confidence']:.2f}, {c['model']}{cost})"
                    + (f" error: {c['error']}" if c.get("error") else ""))  # fmt: skip
        case "proposal":
            return f"{d['tool']} {d['args']}" + (f" INVALID: {d['error']}" if d.get("error") else "")
        case "decision":
            return f"{d['action']} rules={d['rules']}"
        case "approval_requested":
            return d["approval_id"]
        case "approval":
            return f"{d['approval_id']} {'approved' if d['approved'] else 'denied'} by {d['by']}"
        case "result":
            return f"{d['tool']} {d['status']}" + (f": {d['error']}" if d.get("error") else "")
        case "timer":
            return f"until {d['wake_at']}"
        case "timer_fired":
            return f"at {d['at']}"
        case "end":
            return f"{d['status']} {d.get('outcome') or ''} {d.get('error') or ''}".strip()
    return str(d)


@runs.command()
@click.argument("run_id", metavar="RUN")
@click.option("--stranded", is_flag=True,
              help="Also re-drive a run left running or interrupted by a process that died (make sure none drives it).")  # fmt: skip
@click.option("--migrate", is_flag=True,
              help="Resume a run started on another version of the workflow's code by re-running its journal "
                   "against this code; refused, leaving the run as it is, if the code makes other calls.")  # fmt: skip
@click.option("--queue", "queued", is_flag=True, help="Queue the resumption for `tether worker` processes.")
@db_option
@json_option
@one_line_errors
def resume(run_id: str, stranded: bool, migrate: bool, queued: bool, db_url: str | None, as_json: bool) -> None:
    """Re-drive a paused run whose approval was decided (e.g. after the decider's process died)."""
    with Client(open_db(db_url)) as client:
        if queued:
            segment = client.queue_resume(run_id, stranded=stranded, migrate=migrate)
            echo_json({"run_id": run_id, "status": "queued", "segment": segment}) if as_json else click.echo(f"{run_id} queued")
            return
        r = client.resume(run_id, stranded=stranded, migrate=migrate)
    report(r, as_json)


@runs.command()
@click.option("--queue", "queued", is_flag=True, help="Queue their resumption for `tether worker` processes.")
@db_option
@json_option
@one_line_errors
def wake(queued: bool, db_url: str | None, as_json: bool) -> None:
    """Resume the runs whose timers are due (for a scheduler; workers also do this at every beat)."""
    db = open_db(db_url)
    if queued:
        from tether.orchestration import engine

        client = engine.open_client(db)
        try:
            n = engine.Engine(db, "wake-cli").wake_timers(client)
        finally:
            client.destroy()
        echo_json({"queued": n}) if as_json else click.echo(f"{n} runs queued")
        return
    runtime = Runtime(db)
    try:
        woken = runtime.wake_due()
    finally:
        runtime.close()
    if as_json:
        echo_json([r.__dict__ for r in woken])
        return
    for r in woken:
        click.echo(result_line(r))
    click.echo(f"{len(woken)} runs woken", err=True)


@runs.command()
@click.argument("run_id", metavar="RUN")
@click.option("--as", "user", required=True, help="Who cancels; kept in the ledger.")
@click.option("--reason", default=None, help="Why; kept in the ledger.")
@db_option
@json_option
@one_line_errors
def cancel(run_id: str, user: str, reason: str | None, db_url: str | None, as_json: bool) -> None:
    """Stop a run waiting for approval (or interrupted): withdraw its requests and undo its effects."""
    with Client(open_db(db_url)) as client:
        r = client.cancel(run_id, by=user, reason=reason)
    report(r, as_json)


@runs.command()
@db_option
@json_option
@one_line_errors
def stats(db_url: str | None, as_json: bool) -> None:
    """Summary figures over all runs."""
    with open_db(db_url).read() as conn:
        rows = store.list_runs(conn)
        traceable, total = tracing.traceability(conn)
    by_status = Counter(r.status for r in rows)
    by_workflow = Counter(r.workflow for r in rows)
    steps = sorted(r.steps for r in rows)
    out = {
        "runs": len(rows),
        "traceable": traceable,
        "traceable_share": round(traceable / total, 4) if total else None,
        "by_status": dict(by_status.most_common()),
        "by_workflow": dict(by_workflow.most_common()),
        "max_steps": steps[-1] if steps else 0,
        "mean_steps": round(sum(steps) / len(steps), 2) if steps else 0,
    }
    if as_json:
        echo_json(out)
        return
    click.echo(f"runs: {out['runs']}  max steps: {out['max_steps']}  mean steps: {out['mean_steps']}")
    share = f"{out['traceable_share']:.1%}" if out["traceable_share"] is not None else "n/a"
    click.echo(f"traceable end to end: {traceable} of {total} ({share})")
    for s, n in by_status.most_common():
        click.echo(f"  {s:<18} {n}")
