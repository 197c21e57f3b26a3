"""`tether worker`: a process that runs queued runs and takes over those of dead workers.

Each worker beats a heartbeat into the `workers` table. At every beat it asks
the engine which workers own unfinished runs; an owner with no fresh beat
(killed, stopped, or never seen) is dead, and the first live worker to claim
its row asks the engine to recover its runs, which go back on a queue for
every live worker. A worker that finds itself declared dead (it was paused
longer than `dead_after_s`) exits at once, as if killed: its runs are already
being driven elsewhere.

A run that kills its worker every time it is driven (a poison run: say, it runs
the process out of memory) is dead-lettered by the engine after
$TETHER_MAX_RECOVERIES starts (20); a live worker then marks it `interrupted`
with the reason, so it neither looks driven for ever nor kills more workers.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tether.errors import RunNotFound
from tether.orchestration import engine as _engine
from tether.orchestration.engine import Engine
from tether.record import ledger
from tether.record import runs as store
from tether.record.db import Database, timestamp
from tether.record.tables import workers

log = logging.getLogger("tether.worker")
DECLARED_DEAD_EXIT = 75
DRAIN_EXIT = 76  # stopped with runs still going after the drain: they are taken over elsewhere


def new_worker_id() -> str:
    return f"w-{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Worker:
    db: Database
    concurrency: int = 4
    heartbeat_s: float = 1.0
    dead_after_s: float = 5.0
    drain_s: int = 10  # on stop, seconds the running runs get to reach a pause or an end
    poll_s: float = 0.1  # how often the queue is polled for runs when this worker has a free slot
    worker_id: str = field(default_factory=new_worker_id)
    taken_over: list[tuple[str, int]] = field(default_factory=list)  # (dead worker, runs recovered)
    retired: set[str] = field(default_factory=set)  # poisoned engine workflows already dealt with

    def __post_init__(self) -> None:
        self.engine = Engine(self.db, self.worker_id, self.concurrency, self.poll_s)
        self._client: Any = None  # queues the resumption of runs whose timers are due
        self.stopped = threading.Event()

    def run(self) -> None:
        """Work until `stop()` is called."""
        with self.db.transaction() as conn:
            conn.execute(workers.insert().values(id=self.worker_id, host=socket.gethostname()[:200], pid=os.getpid(),
                                                 concurrency=self.concurrency, started_at=timestamp(),
                                                 heartbeat=time.time()))  # fmt: skip
        self.engine.launch()
        try:
            while not self.stopped.is_set():
                if not self.beat():
                    log.error("worker %s was declared dead by another worker; exiting", self.worker_id)
                    os._exit(DECLARED_DEAD_EXIT)  # as if killed: no run may go on here
                self.take_over()
                self.stopped.wait(self.heartbeat_s)
        finally:
            if self._client is not None:
                self._client.destroy()
            self.engine.shutdown(self.drain_s)
            with self.db.transaction() as conn:  # runs still unfinished are now a dead worker's: taken over
                conn.execute(workers.delete().where(workers.c.id == self.worker_id, workers.c.recovered_by.is_(None)))

    def stop(self) -> None:
        self.stopped.set()

    def beat(self) -> bool:
        with self.db.transaction() as conn:
            res = conn.execute(workers.update().where(workers.c.id == self.worker_id, workers.c.recovered_by.is_(None))
                               .values(heartbeat=time.time()))  # fmt: skip
        return res.rowcount == 1

    def take_over(self) -> None:
        """Recover the runs of every owner of unfinished runs whose heartbeat stopped (one live worker wins each)."""
        now = time.time()
        with self.db.read() as conn:
            beats = dict(conn.execute(sa.select(workers.c.id, workers.c.heartbeat)).all())
        live = {w for w, hb in beats.items() if hb >= now - self.dead_after_s}
        for owner in sorted(self.engine.pending_owners() - live - {self.worker_id}):
            if not self._claim(owner, beats.get(owner)):
                continue
            n = self.engine.recover(owner)
            self.taken_over.append((owner, n))
            log.warning("took over %d runs of dead worker %s", n, owner)
        with self.db.transaction() as conn:  # forget workers long gone
            conn.execute(workers.delete().where(workers.c.heartbeat < now - 10 * self.dead_after_s))
        self.retire_poisoned()
        if self._client is None:
            self._client = _engine.open_client(self.db)
        self.engine.wake_timers(self._client)

    def retire_poisoned(self) -> None:
        """Mark `interrupted` the runs whose engine workflow was dead-lettered while it held them."""
        for segment in self.engine.poisoned():
            if segment in self.retired:
                continue
            run_id = _engine.run_of(segment)
            with self.db.transaction() as conn:
                try:
                    row = store.get_run(conn, run_id)
                except RunNotFound:  # killed before its start was written: nothing to mark
                    row = None
                if row is not None and row.status == "running" and store.driver_label(row.driver) == f"engine:{segment}":
                    if store.claim_run(conn, run_id, "running", "interrupted", driver=None, from_driver=row.driver):
                        why = (f"its worker died each of the {_engine.max_recoveries()} times it was driven (a poison run); "
                               "workers no longer retry it. `tether runs resume RUN --stranded` re-drives it here")  # fmt: skip
                        store.update_run(conn, run_id, error=why)
                        ledger.append(conn, "run_interrupted", {"reason": why}, run_id=run_id)
                        log.error("run %s retired: %s", run_id, why)
            self.retired.add(segment)

    def _claim(self, owner: str, last: float | None) -> bool:
        # Claimed against the beat we read: a rival claimer or a revived worker changes it and we lose.
        # A claimer that dies before recovering leaves a row that goes stale again, so it is claimed again.
        try:
            with self.db.transaction() as conn:
                if last is None:
                    conn.execute(workers.insert().values(id=owner, host="?", pid=0, concurrency=0, started_at=timestamp(),
                                                         heartbeat=time.time(), recovered_by=self.worker_id))  # fmt: skip
                    return True
                return conn.execute(workers.update().where(workers.c.id == owner, workers.c.heartbeat == last)
                                    .values(recovered_by=self.worker_id, heartbeat=time.time())).rowcount == 1  # fmt: skip
        except sa.exc.IntegrityError:  # another worker inserted it first
            return False
