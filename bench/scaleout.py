"""Scale-out figures: runs/s with 1, 2, 4 workers; takeover time of a dead worker; durability cost per step.

    python bench/scaleout.py [--runs 80] [--workers 1,2,4] [--db sqlite|postgresql|both]

Prints one JSON line per measurement. Runs are triage runs on held-back tickets;
workers are `tether worker` processes (concurrency 4, queue polled every 0.1 s). Throughput is timed
after each worker has loaded its model (warm-up runs first).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
from crash import enqueue_all, prepare, start_worker  # noqa: E402
from pgtemp import TempPostgres  # noqa: E402

from tether.orchestration import engine  # noqa: E402
from tether.orchestration.runtime import Runtime  # noqa: E402
from tether.record.db import Database, _install_sqlite_pragmas  # noqa: E402
from tether.record.tables import workers as workers_table  # noqa: E402
from tether.workflows.triage.flow import workflow  # noqa: E402


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def throughput(url: str, n_workers: int, runs: int, log: Path) -> dict[str, Any]:
    db = Database(url)
    tickets = prepare(db, runs + 2 * n_workers, seed=5)
    procs = [start_worker(url, 4, 0.0, log) for _ in range(n_workers)]
    try:
        warm = enqueue_all(db, tickets[: 2 * n_workers])
        engine.wait(db, warm, 120)
        t0 = time.perf_counter()
        ids = enqueue_all(db, tickets[2 * n_workers :])
        st = engine.wait(db, ids, 600)
        wall = time.perf_counter() - t0
    finally:
        _stop(procs)
    settled = sum(s != "queued" and s != "running" for s in st.values())
    return {"measure": "throughput", "db": db.url.get_backend_name(), "workers": n_workers, "runs": runs,
            "settled": settled, "wall_s": round(wall, 2), "runs_per_s": round(runs / wall, 2)}  # fmt: skip


def takeover(url: str, log: Path, dead_after: float = 3.0) -> dict[str, Any]:
    """Kill a worker in the middle of its runs; time until a live worker has them and until they end."""
    db = Database(url)
    tickets = prepare(db, 12, seed=6)
    procs = [start_worker(url, 3, 0.5, log) for _ in range(2)]
    client = engine.open_client(db)
    try:
        warm = enqueue_all(db, tickets[:4])
        engine.wait(db, warm, 120)
        ids = enqueue_all(db, tickets[4:])
        while True:  # wait until worker 0 drives some runs
            mine = _pending_of(client, db, procs[0].pid)
            if mine:
                break
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        procs[0].wait()
        dead = next(iter(mine.values()))
        while any(w.workflow_id in mine and w.executor_id == dead
                  for w in client.list_workflows(status="PENDING", load_input=False, load_output=False)):  # fmt: skip
            time.sleep(0.05)
        recovered = time.perf_counter() - killed
        engine.wait(db, list(mine), 120)
        ended = time.perf_counter() - killed
        engine.wait(db, ids, 120)
    finally:
        client.destroy()
        _stop(procs)
    return {"measure": "takeover", "db": db.url.get_backend_name(), "dead_after_s": dead_after, "heartbeat_s": 0.5,
            "runs_of_dead_worker": len(mine), "recovered_after_s": round(recovered, 2), "ended_after_s": round(ended, 2)}  # fmt: skip


def _pending_of(client: Any, db: Database, pid: int) -> dict[str, str]:
    with db.read() as conn:
        ids = set(conn.execute(sa.select(workers_table.c.id).where(workers_table.c.pid == pid)).scalars())
    return {w.workflow_id: w.executor_id for w in client.list_workflows(status="PENDING", load_input=False, load_output=False)
            if w.executor_id in ids}  # fmt: skip


class MemoryDatabase(Database):
    """tether's schema in one in-memory SQLite connection shared by this process's threads:
    the same code with nothing written to disk, the baseline for the cost of durability."""

    def __init__(self) -> None:
        self.url = sa.make_url("sqlite://")
        self.engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False})
        _install_sqlite_pragmas(self.engine)
        self._migrate(True)


def per_step(url: str, runs: int) -> dict[str, Any]:
    """Direct runs in this process: cost per state-machine step of writing the journal to `url`."""
    db = MemoryDatabase() if url == "sqlite://" else Database(url)
    tickets = prepare(db, runs + 3, seed=8)
    rt = Runtime(db)
    for t in tickets[:3]:  # warm-up: model, caches
        rt.start(workflow, {"ticket_id": t}, started_by="intake")
    t0 = time.perf_counter()
    steps = sum(rt.start(workflow, {"ticket_id": t}, started_by="intake").steps for t in tickets[3:])
    wall = time.perf_counter() - t0
    rt.close()
    name = "sqlite-memory" if url == "sqlite://" else db.url.get_backend_name()
    return {"measure": "per_step", "db": name, "runs": runs, "steps": steps, "ms_per_step": round(1000 * wall / steps, 3),
            "ms_per_run": round(1000 * wall / runs, 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=80)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    args = ap.parse_args(argv)
    pg = TempPostgres().start() if args.db != "sqlite" else None
    try:
        with tempfile.TemporaryDirectory(prefix="tether-scale-") as tmp:
            log = Path(tmp) / "workers.log"
            k = 0

            def fresh(which: str) -> str:
                nonlocal k
                k += 1
                return f"sqlite:///{tmp}/s{k}.db" if which == "sqlite" else pg.create_db(f"s{k}")  # type: ignore[union-attr]

            targets = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
            print(json.dumps(per_step("sqlite://", args.runs)), flush=True)
            for which in targets:
                print(json.dumps(per_step(fresh(which), args.runs)), flush=True)
            for which in targets:
                for n in (int(x) for x in args.workers.split(",")):
                    print(json.dumps(throughput(fresh(which), n, args.runs, log)), flush=True)
                print(json.dumps(takeover(fresh(which), log)), flush=True)
    finally:
        if pg:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
