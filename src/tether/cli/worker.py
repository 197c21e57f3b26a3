"""`tether worker`: run queued runs; with PostgreSQL, many workers share them."""

from __future__ import annotations

import signal
from typing import Any

import click

from tether.cli._common import db_option, one_line_errors, open_db


@click.command()
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(min=1, max=256),
              help="Runs this worker drives at once.")  # fmt: skip
@click.option("--heartbeat", "heartbeat_s", default=1.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between heartbeats.")  # fmt: skip
@click.option("--dead-after", "dead_after_s", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="A worker silent this many seconds is dead; a live worker takes over its runs.")  # fmt: skip
@click.option("--poll", "poll_s", default=0.1, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between looks at the queue when a slot is free.")  # fmt: skip
@db_option
@one_line_errors
def worker(concurrency: int, heartbeat_s: float, dead_after_s: float, poll_s: float, db_url: str | None) -> None:
    """Run queued runs (`tether run --queue`) until stopped with SIGTERM or Ctrl-C."""
    import logging

    from tether.errors import TetherError
    from tether.orchestration.worker import Worker

    if dead_after_s <= heartbeat_s:
        raise TetherError(f"--dead-after ({dead_after_s}s) must be longer than --heartbeat ({heartbeat_s}s)")
    db = open_db(db_url, create=True)
    w = Worker(db, concurrency=concurrency, heartbeat_s=heartbeat_s, dead_after_s=dead_after_s, poll_s=poll_s)

    def stop(_sig: int, _frame: Any) -> None:
        w.stop()

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger("tether.worker").addHandler(handler)
    logging.getLogger("tether.worker").setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"worker {w.worker_id} on {db.label}, concurrency {concurrency}", err=True)
    w.run()
    click.echo(f"worker {w.worker_id} stopped", err=True)
