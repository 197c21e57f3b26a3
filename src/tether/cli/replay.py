"""`tether replay RUN [--policies FILE] [--workflow MODULE:NAME] [--save-case FILE]`."""

from __future__ import annotations

import sys

import click

from tether.cli._common import (
    db_option,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
)
from tether.guardrails.loading import load_policy
from tether.orchestration.replay import Action
from tether.orchestration.replay import replay as replay_run
from tether.orchestration.workflow import load

DIFFERENT = 3  # exit code when the replay took other actions (1 stays for errors)
_MARK = {"same": "=", "changed": "~", "added": "+", "missing": "-"}


def _act(a: Action | None) -> str:
    return f"{a.tool} {a.decision or 'refused'}/{a.status}" if a else ""


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--policies", "policy_file", type=click.Path(dir_okay=False), help="Replay under this policy file.")
@click.option("--workflow", "workflow_ref", help="Replay under this workflow code (module:attribute).")
@click.option("--save-case", "case_file", type=click.Path(dir_okay=False),
              help="Append the run, its actions and final state, to this golden-set file.")  # fmt: skip
@db_option
@json_option
@one_line_errors
def replay(run_id: str, policy_file: str | None, workflow_ref: str | None, case_file: str | None,
           db_url: str | None, as_json: bool) -> None:  # fmt: skip
    """Re-execute RUN against its recording and diff its actions (exit 3 when they differ)."""
    db = open_db(db_url)
    policy = load_policy(policy_file) if policy_file else None
    wf = load(workflow_ref) if workflow_ref else None
    report = replay_run(db, run_id, workflow=wf, policy=policy)
    if case_file:
        from tether.evals.golden import append_case, case_from_run

        append_case(case_file, case_from_run(db, run_id))
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(f"replay of {run_id} ({report.workflow})")
        click.echo(f"  policy {report.policy_hash[:12]} (recorded {report.original_policy_hash[:12]}), "
                   f"code {report.workflow_version} (recorded {report.original_workflow_version})")  # fmt: skip
        click.echo(f"  status: recorded {report.original_status}, replayed {report.replay_status}")
        if report.cost_ceiling_usd is not None:
            click.echo(f"  cost ceiling: ${report.cost_ceiling_usd:.4f} (recorded with the run)")
        for d in report.diff:
            line = f"  {_MARK[d.kind]} step {d.step:>2}  "
            if d.kind == "same":
                line += _act(d.replayed)
            elif d.kind == "changed":
                line += f"{_act(d.original)}  ->  {_act(d.replayed)}  ({d.what})"
            else:
                line += _act(d.replayed or d.original)
            click.echo(line)
        if report.stopped:
            click.echo(f"  stopped: {report.stopped}")
        if report.error:
            click.echo(f"  replay ended with: {report.error}")
        verdict = "same actions" if report.same else f"diverged at step {report.first_divergence}"
        counts = ", ".join(f"{n} {k}" for k, n in report.counts.items() if n)
        click.echo(f"{verdict} ({counts or 'no actions'})")
        if case_file:
            click.echo(f"appended the run to {case_file}", err=True)
    if not report.same:
        sys.exit(DIFFERENT)
