"""`tether policy check|explain`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tether.cli._common import (
    db_option,
    echo_json,
    json_option,
    one_line_errors,
    open_db,
    parse_json_object,
)
from tether.errors import PolicyError
from tether.guardrails._yaml import CoreLoader
from tether.guardrails.loading import load_policy
from tether.orchestration.workflow import load
from tether.tools.calls import ToolCall
from tether.tools.proxy import ToolProxy


@click.group()
def policy() -> None:
    """Load, lint and explain policy files."""


_workflow = click.option("--workflow", "workflow_ref", default=None,
                         help="Also check rules and calls against this workflow's tools.")  # fmt: skip


@policy.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_workflow
@click.option("--strict", is_flag=True, help="With --workflow: rules that can never match are errors.")
@one_line_errors
def check(file: str, workflow_ref: str | None, strict: bool) -> None:
    """Load and lint FILE; exit non-zero on the first problem."""
    p = load_policy(file)
    if workflow_ref:
        errors, warnings = p.lint({t.name: t.schema for t in load(workflow_ref).tools})
        if errors or (warnings and strict):
            raise PolicyError((errors + warnings)[0])
        for msg in warnings:
            click.echo(f"warning: {msg}", err=True)
    click.echo(f"{file}: ok ({len(p.rules)} rules, default {p.default}, sha256 {p.hash[:12]})")


@policy.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--tool", "tool_name", required=True, help="Tool name, e.g. payments.refund.")
@click.option("--args", "args_json", default="{}", show_default=True, help="The call's arguments as a JSON object.")
@click.option("--facts", "facts_json", default=None, help="Facts the workflow established for the call, as a JSON object.")
@_workflow
@json_option
@one_line_errors
def explain(file: str, tool_name: str, args_json: str, facts_json: str | None, workflow_ref: str | None, as_json: bool) -> None:
    """Print the decision FILE makes for one proposed call."""
    p = load_policy(file)
    args = parse_json_object(args_json, "--args")
    context = {"facts": parse_json_object(facts_json, "--facts")} if facts_json is not None else None
    if workflow_ref:
        # The proxy would refuse these before the gate; say so instead of deciding.
        call = ToolCall(call_id="explain", tool=tool_name, args=args, proposer="cli")
        args = ToolProxy(load(workflow_ref).tools).validate(call)[1].model_dump(mode="json")
    d = p.decide(tool_name, args, context)
    if as_json:
        echo_json({"decision": d.action, **d.model_dump(), "tool": tool_name, "args": args})
        return
    click.echo(d.action)
    click.echo(f"  rules:  {', '.join(d.rules) or '(none: file default)'}")
    if d.matched != d.rules:
        click.echo(f"  also matched: {', '.join(r for r in d.matched if r not in d.rules)}")
    click.echo(f"  reason: {d.reason}")
    click.echo(f"  policy: {file} sha256 {d.policy_hash}")


@policy.command(name="test")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("cases_file", metavar="CASES.yaml", type=click.Path(dir_okay=False))
@json_option
@one_line_errors
def test_(file: str, cases_file: str, as_json: bool) -> None:
    """Run table-driven policy tests: each case a tool, args, principal (risk, facts) and the decision it must get."""
    import yaml

    p = load_policy(file)
    try:
        cases = yaml.load(Path(cases_file).read_text(encoding="utf-8"), Loader=CoreLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise PolicyError(f"{cases_file}: cases file not found") from None
    except yaml.YAMLError as e:
        raise PolicyError(f"{cases_file}: malformed YAML ({str(e).splitlines()[0]})") from None
    if isinstance(cases, dict):
        cases = cases.get("cases")
    if not isinstance(cases, list) or not cases:
        raise PolicyError(f"{cases_file}: expected a list of cases (or cases: [...])")
    failures, results = [], []
    for i, case in enumerate(cases, 1):
        if not isinstance(case, dict) or "tool" not in case or "expect" not in case:
            raise PolicyError(f"{cases_file}: case {i} needs at least tool and expect")
        name = str(case.get("name", f"case {i}"))
        context = {"principal": case.get("principal", "tester"), "tenant": case.get("tenant", "default")}
        if case.get("risk") is not None:
            context["risk"] = case["risk"]
        if case.get("facts") is not None:
            context["facts"] = case["facts"]
        d = p.decide(str(case["tool"]), case.get("args") or {}, context)
        ok = d.action == case["expect"] and (not case.get("rules") or sorted(case["rules"]) == sorted(d.rules))
        results.append({"name": name, "expected": case["expect"], "got": d.action, "rules": d.rules, "passed": ok})
        if not ok:
            failures.append(f"{name}: expected {case['expect']}, got {d.action} ({', '.join(d.rules) or d.reason})")
    if as_json:
        echo_json({"cases": len(results), "failed": len(failures), "results": results})
    else:
        for f in failures:
            click.echo(f"FAIL {f}", err=True)
        click.echo(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    if failures:
        sys.exit(1)


@policy.command()
@click.option("--share", default=0.07, show_default=True, type=click.FloatRange(0.001, 0.999, min_open=False),
              help="Share of calls to send to people.")  # fmt: skip
@click.option("--workflow", "workflow_name", default=None, help="Only calls of this workflow's runs.")
@click.option("--tools", "tool_glob", default="*", show_default=True, help="Only calls of tools matching this glob.")
@db_option
@json_option
@one_line_errors
def calibrate(share: float, workflow_name: str | None, tool_glob: str, db_url: str | None, as_json: bool) -> None:
    """From recorded runs, the risk threshold that sends SHARE of calls to people."""
    import fnmatch

    import sqlalchemy as sa

    from tether.guardrails.risk import calibrate as pick
    from tether.record.tables import run_events, runs

    q = sa.select(run_events.c.data, run_events.c.call_id, run_events.c.run_id).where(run_events.c.kind == "decision")
    if workflow_name:
        q = q.join(runs, runs.c.id == run_events.c.run_id).where(runs.c.workflow == workflow_name)
    with open_db(db_url).read() as conn:
        tools = {(r.run_id, r.call_id): r.data["tool"] for r in conn.execute(
            sa.select(run_events.c.run_id, run_events.c.call_id, run_events.c.data).where(run_events.c.kind == "proposal"))}  # fmt: skip
        scores = [r.data["risk"] for r in conn.execute(q)
                  if r.data.get("risk") is not None and fnmatch.fnmatchcase(tools.get((r.run_id, r.call_id), ""), tool_glob)]  # fmt: skip
    try:
        threshold, sent = pick(scores, share)
    except ValueError as e:
        raise PolicyError(str(e)) from None
    out = {"calls": len(scores), "target_share": share, "threshold": threshold, "share_sent": round(sent, 4),
           "rule": {"name": "risk_calibrated", "if": {"tool": tool_glob, "risk": f">= {threshold}"},
                    "then": {"action": "require_human_approval"}}}  # fmt: skip
    if as_json:
        echo_json(out)
        return
    click.echo(f"{len(scores)} recorded calls; risk >= {threshold} sends {sent:.1%} of them to people (target {share:.1%})")
    click.echo(f"rule:\n  - name: risk_calibrated\n    if: {{tool: \"{tool_glob}\", risk: \">= {threshold}\"}}\n"
               "    then: {action: require_human_approval}")  # fmt: skip
