"""`tether costs`: spend by tenant, workflow, model and day; budgets."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from tether.cli._common import (
    db_option,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
)
from tether.errors import TetherError


def _day(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise TetherError(f"--since must be a day like 2026-11-01, got {value!r}") from None


@click.group(invoke_without_command=True)
@click.option("--since", default=None, metavar="DAY", help="Only spend on or after this day (YYYY-MM-DD, UTC).")
@click.option("--tenant", default=None, help="Only this tenant.")
@db_option
@json_option
@click.pass_context
@one_line_errors
def costs(ctx: click.Context, since: str | None, tenant: str | None, db_url: str | None, as_json: bool) -> None:
    """Model spend by tenant, workflow, model and day (from the cost meter)."""
    if ctx.invoked_subcommand is not None:
        return
    from tether.models.budgets import list_budgets, spend_report
    from tether.record.cachestats import rates

    db = open_db(db_url)
    with db.read() as conn:
        report = spend_report(conn, since=_day(since), tenant=tenant)
        report["budgets"] = list_budgets(conn)
        report["caches"] = rates(conn)  # hit rates of the answer, embedding and retrieval caches, all processes
    if as_json:
        echo_json(report)
        return
    click.echo(f"total ${report['total_usd']:.4f}  ({report['model_calls']} model calls, {report['tokens']} tokens, "
               f"{report['runs_metered']} runs; cache hit rate {report['cache_hit_rate']:.1%})")  # fmt: skip
    if report["cost_per_completed_run_usd"] is not None:
        click.echo(f"per completed run ${report['cost_per_completed_run_usd']:.6f}  ({report['completed_runs']} completed)")
    if report["unpriced_calls"]:
        click.echo(f"unpriced calls: {report['unpriced_calls']} (models missing from the price table; add them with $TETHER_PRICES)")
    for title, key in (("tenant", "by_tenant"), ("workflow", "by_workflow"), ("model", "by_model"), ("day", "by_day"),
                       ("action", "by_action")):  # fmt: skip
        rows: list[dict[str, Any]] = report[key]
        if rows:
            click.echo(f"by {title}:")
            for r in rows:
                click.echo(f"  {r['name'] or '(no action)':<34} ${r['cost_usd']:>10.4f}  {r['calls']:>6} calls  {r['tokens']:>9} tokens")
    click.echo("cache hit rates: " + ", ".join(f"{k} {v['hit_rate']:.1%} of {v['hits'] + v['misses']}" for k, v in report["caches"].items()))
    for b in report["budgets"]:
        click.echo(f"budget {b['scope']} {b['name']} {b['period']}: ${b['spent_usd']:.4f} of ${b['limit_usd']:.4f}")


@costs.command("budget")
@click.argument("scope", type=click.Choice(["tenant", "feature", "action"]))
@click.argument("name")
@click.option("--daily", type=float, default=None, help="Daily limit in USD.")
@click.option("--monthly", type=float, default=None, help="Monthly limit in USD.")
@click.option("--remove", is_flag=True, help="Remove the named budgets instead.")
@db_option
@one_line_errors
def budget(scope: str, name: str, daily: float | None, monthly: float | None, remove: bool, db_url: str | None) -> None:
    """Set a budget for a tenant or a feature (a workflow): new runs are refused once it is spent;
    or for an action (a tool): calls to it are denied once the model calls leading to it spent it."""
    from tether.models.budgets import remove_budget, set_budget

    if daily is None and monthly is None:
        raise TetherError("give --daily USD and/or --monthly USD")
    db = open_db(db_url)
    with db.transaction() as conn:
        for period, usd in (("daily", daily), ("monthly", monthly)):
            if usd is None:
                continue
            if remove:
                remove_budget(conn, scope, name, period)
            else:
                set_budget(conn, scope, name, period, usd)
    click.echo(("removed" if remove else "set") + f" budget for {scope} {name}")
