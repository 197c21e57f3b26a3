"""`tether demo`: the support-triage reference workflow on bundled tickets."""

from __future__ import annotations

import sys

import click

from tether.cli._common import (
    Progress,
    db_option,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
)


@click.command()
@click.option("--tickets", default=200, show_default=True, type=click.IntRange(1, 2000), help="How many tickets.")
@click.option("--seed", default=7, show_default=True, help="Which tickets (same seed, same tickets).")
@db_option
@json_option
@one_line_errors
def demo(tickets: int, seed: int, db_url: str | None, as_json: bool) -> None:
    """Triage held-back Banking77 tickets end to end on the embedded default."""
    from tether.workflows.triage.demo import run_demo

    db = open_db(db_url, create=True)
    if not as_json:
        click.echo("loading the offline intent classifier (trained once, then cached)...", err=True)
    s = run_demo(db, tickets=tickets, seed=seed, progress=Progress("triaging tickets", enabled=not as_json))
    if as_json:
        echo_json(s.to_json())
        return
    w = 22
    click.echo("")
    click.echo("tether demo: support-ticket triage on Banking77 (held-back messages)")
    click.echo(f"{'tickets':<{w}}{s.tickets}")
    click.echo(f"{'completed':<{w}}{s.completed}")
    click.echo(f"{'escalated to a human':<{w}}{s.escalated}  ({s.low_confidence} below the confidence threshold)")
    click.echo(f"{'awaiting approval':<{w}}{s.awaiting_approval}")
    click.echo(f"{'denied by policy':<{w}}{s.denied}")
    if s.failed:
        click.echo(f"{'failed':<{w}}{s.failed}")
    click.echo(f"{'max steps in a run':<{w}}{s.max_steps}")
    click.echo("actions taken:")
    for tool, n in s.actions.items():
        click.echo(f"  {tool:<{w - 2}}{n}")
    click.echo(f"{'model spend':<{w}}${s.cost_usd:.4f}  ({s.tokens} tokens)")
    click.echo(f"{'ledger':<{w}}{'verified' if s.ledger_ok else 'BROKEN'} ({s.ledger_entries} entries)")
    click.echo(f"{'wall time':<{w}}{s.wall_s:.2f} s  ({s.runs_per_s:.1f} runs/s; model load {s.model_load_s:.2f} s)")
    if s.pending_approvals:
        click.echo("")
        click.echo(f"waiting for a human: tether approvals   then   tether approvals approve {s.pending_approvals[0]} --as YOU")
    if not s.ledger_ok:
        sys.exit(1)
