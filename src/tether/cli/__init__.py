"""The `tether` command line. Each command group lives in its own module."""

from __future__ import annotations

import sys

import click

from tether.cli.approvals import approvals, approvers
from tether.cli.costs import costs
from tether.cli.demo import demo
from tether.cli.eval import eval_
from tether.cli.ledger import ledger
from tether.cli.observe import metrics, purge
from tether.cli.policy import policy
from tether.cli.replay import replay
from tether.cli.runs import run, runs
from tether.cli.serve import keys, kill, rollout, serve
from tether.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tether")
def cli() -> None:
    """tether: run LLM agent workflows with bounded autonomy."""


for command in (demo, run, runs, approvals, approvers, policy, ledger, replay, eval_, purge, metrics,
                serve, keys, rollout, kill, costs, worker):
    cli.add_command(command)


def main() -> None:
    """The console script: click's usage errors become one `error: ...` line too."""
    try:
        cli.main(prog_name="tether", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
    except click.UsageError as e:
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        click.echo(f"error: {e.format_message()}{where}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(1)
