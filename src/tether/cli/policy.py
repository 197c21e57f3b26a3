"""`tether policy check|explain`."""

from __future__ import annotations

import click

from tether.cli._common import echo_json, json_option, one_line_errors, parse_json_object
from tether.errors import PolicyError
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
@_workflow
@json_option
@one_line_errors
def explain(file: str, tool_name: str, args_json: str, workflow_ref: str | None, as_json: bool) -> None:
    """Print the decision FILE makes for one proposed call."""
    p = load_policy(file)
    args = parse_json_object(args_json, "--args")
    if workflow_ref:
        # The proxy would refuse these before the gate; say so instead of deciding.
        call = ToolCall(call_id="explain", tool=tool_name, args=args, proposer="cli")
        args = ToolProxy(load(workflow_ref).tools).validate(call)[1].model_dump(mode="json")
    d = p.decide(tool_name, args)
    if as_json:
        echo_json({"decision": d.action, **d.model_dump(), "tool": tool_name, "args": args})
        return
    click.echo(d.action)
    click.echo(f"  rules:  {', '.join(d.rules) or '(none: file default)'}")
    if d.matched != d.rules:
        click.echo(f"  also matched: {', '.join(r for r in d.matched if r not in d.rules)}")
    click.echo(f"  reason: {d.reason}")
    click.echo(f"  policy: {file} sha256 {d.policy_hash}")
