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
@click.option("--drain", "drain_s", default=10, show_default=True, type=click.IntRange(min=0),
              help="On stop, seconds the runs in progress get to reach a pause or an end; then the process exits.")  # fmt: skip
@db_option
@one_line_errors
def worker(concurrency: int, heartbeat_s: float, dead_after_s: float, poll_s: float, drain_s: int, db_url: str | None) -> None:
    """Run queued runs (`tether run --queue`) until stopped with SIGTERM or Ctrl-C."""
    import logging
    import os

    from tether.errors import TetherError
    from tether.orchestration import engine
    from tether.orchestration.worker import DRAIN_EXIT, Worker

    if dead_after_s <= heartbeat_s:
        raise TetherError(f"--dead-after ({dead_after_s}s) must be longer than --heartbeat ({heartbeat_s}s)")
    engine.max_recoveries()  # a bad $TETHER_MAX_RECOVERIES fails here, before the worker is registered
    db = open_db(db_url, create=True)
    w = Worker(db, concurrency=concurrency, heartbeat_s=heartbeat_s, dead_after_s=dead_after_s, poll_s=poll_s,
               drain_s=drain_s)  # fmt: skip

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
    if engine.active():
        # Runs still going after the drain belong to the live workers now (this worker's row is gone);
        # the engine's threads would drive them on here, so the process ends as if killed.
        click.echo(f"worker {w.worker_id} stopped with {engine.active()} runs still going after {drain_s}s; "
                   "exiting so live workers take them over", err=True)  # fmt: skip
        os._exit(DRAIN_EXIT)
    click.echo(f"worker {w.worker_id} stopped", err=True)
