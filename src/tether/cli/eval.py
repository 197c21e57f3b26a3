"""`tether eval GOLDEN.jsonl [--gate] [--baseline RESULT.json]`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from tether.cli._common import (
    Progress,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
    write_atomic,
)


@click.command(name="eval")
@click.argument("golden", metavar="GOLDEN.jsonl")
@click.option("--concurrency", "-j", default=1, show_default=True, type=click.IntRange(1, 64), help="Parallel processes.")
@click.option("--gate", is_flag=True, help="Exit 1 when a threshold is missed (or a baseline regression found).")
@click.option("--thresholds", type=click.Path(dir_okay=False), help="YAML of metric: condition (default: the seed's).")
@click.option("--baseline", type=click.Path(dir_okay=False), help="An earlier result JSON to compare with.")
@click.option("--policies", "policy_file", type=click.Path(dir_okay=False), help="Run under this policy file.")
@click.option("--workflow", "workflow_ref", default=None, help="Run every case under this workflow instead.")
@click.option("--out", default=None, help="Write the result JSON here.")
@click.option("--html", "html_out", default=None, help="Write a self-contained HTML report here.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Only the first N cases.")
@click.option("--planner", default=None, help="A planner the workflow's eval hooks provide (retail: oracle, skip_auth, ...).")
@click.option("--db", "db_url", metavar="URL", default=None, help="Also keep the result in this database (for the dashboard).")
@json_option
@one_line_errors
def eval_(golden: str, concurrency: int, gate: bool, thresholds: str | None, baseline: str | None,
          policy_file: str | None, workflow_ref: str | None, out: str | None, html_out: str | None,
          limit: int | None, planner: str | None, db_url: str | None, as_json: bool) -> None:  # fmt: skip
    """Run a golden set and score actions and final state.

    GOLDEN is a JSONL golden set, or a task file the workflow named by --workflow imports
    (the retail workflow reads τ²-bench task lists)."""
    from tether.evals.golden import GoldenError, check_cases, load_suite
    from tether.evals.metrics import aggregate, apply_gates, compare, load_gates
    from tether.evals.report import html_report, terminal
    from tether.evals.runner import run_cases
    from tether.guardrails.loading import load_policy

    cases = load_suite(golden, workflow_ref)[:limit]
    gates = load_gates(thresholds)  # a bad thresholds file fails before any case runs
    policy = load_policy(policy_file) if policy_file else None
    check_cases(cases, workflow_ref)  # unknown workflows and tools fail before any case runs
    if planner is not None:
        from tether.orchestration.workflow import load

        offered = tuple(getattr(load(workflow_ref or cases[0].workflow).evals, "planners", ()))
        if planner not in offered:
            raise GoldenError(f"unknown planner {planner!r} (this workflow offers: {', '.join(offered) or 'none'})")
    store = open_db(db_url, create=True) if db_url else None  # so does a bad --db

    start = time.perf_counter()
    results = run_cases(cases, concurrency=concurrency, policy=policy, workflow=workflow_ref,
                        progress=Progress("eval cases", enabled=not as_json), planner=planner)
    result = aggregate(results, source=Path(golden).name)
    result.wall_s = round(time.perf_counter() - start, 3)
    result.cases_per_s = round(len(results) / result.wall_s, 2) if result.wall_s else 0.0
    if baseline:
        compare(result, baseline)
    apply_gates(result, gates)  # reported either way; only --gate changes the exit code
    data = result.to_json()
    if store is not None:
        from tether.evals.stored import save_result

        save_result(store, data)
    if out:
        write_atomic(out, json.dumps(data, indent=1).encode())
    if html_out:
        write_atomic(html_out, html_report(result).encode())
    if as_json:
        echo_json(data)
    else:
        click.echo(terminal(result))
    if gate and not result.gate_passed:
        sys.exit(1)
