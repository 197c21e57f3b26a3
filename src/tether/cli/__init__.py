"""The `tether` command line. Each command group lives in its own module."""

from __future__ import annotations

import click

from tether.cli.approvals import approvals
from tether.cli.demo import demo
from tether.cli.eval import eval_
from tether.cli.ledger import ledger
from tether.cli.policy import policy
from tether.cli.replay import replay
from tether.cli.runs import run, runs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tether")
def cli() -> None:
    """tether: run LLM agent workflows with bounded autonomy."""


for command in (demo, run, runs, approvals, policy, ledger, replay, eval_):
    cli.add_command(command)


def main() -> None:
    cli()
