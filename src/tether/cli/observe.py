"""`tether purge` (retention) and `tether metrics` (Prometheus exposition)."""

from __future__ import annotations

import os

import click

from tether.cli._common import (
    db_option,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
)


@click.command()
@click.option("--prompts-days", default=lambda: int(os.environ.get("TETHER_PROMPT_RETENTION_DAYS", 30)), show_default="30",
              type=int, help="Keep prompts this long (7-30 days).")  # fmt: skip
@click.option("--journal-days", default=30, show_default=True, type=int, help="Keep raw replay journals of ended runs this long.")
@click.option("--traces-days", default=30, show_default=True, type=int, help="Keep local traces this long.")
@click.option("--observations-days", default=30, show_default=True, type=int, help="Keep the observation log this long.")
@click.option("--forget-tenant", "forget", multiple=True, metavar="TENANT",
              help="Also delete this tenant's memory items, observations and cached answers (repeatable).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Count what would go, delete nothing.")
@db_option
@json_option
@one_line_errors
def purge(prompts_days: int, journal_days: int, traces_days: int, observations_days: int, forget: tuple[str, ...],
          dry_run: bool, db_url: str | None, as_json: bool) -> None:  # fmt: skip
    """Delete what is past its retention (for a scheduler to call); expired cached answers too.
    The ledger is never purged."""
    from tether.record.retention import Retention
    from tether.record.retention import purge as run_purge

    policy = Retention(prompts_days, journal_days, traces_days, observations_days, forget)
    counts = run_purge(open_db(db_url), policy, dry_run=dry_run)
    if as_json:
        echo_json({"dry_run": dry_run, **counts})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb}: {counts['prompts']} prompts, {counts['journal_events']} journal events, {counts['spans']} spans, "
               f"{counts['observations']} observations, {counts['answer_cache']} cached answers, "
               f"{counts['memory_items']} memory items; ledger untouched")  # fmt: skip


@click.command()
@click.option("--eval", "eval_files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Also expose the figures of these eval result files.")  # fmt: skip
@db_option
@one_line_errors
def metrics(eval_files: tuple[str, ...], db_url: str | None) -> None:
    """Print metrics in Prometheus exposition format."""
    from tether.record.metrics import exposition

    click.echo(exposition(open_db(db_url), list(eval_files)).decode(), nl=False)
