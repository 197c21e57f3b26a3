"""Durable timers at scale: a worker's heartbeat while it wakes many due runs, and time to wake them.

    .venv/bin/python bench/timers.py [--due 4000] [--seconds 20]

`--due` runs of a workflow that sleeps are made due at once (copies of one paused
run's row and journal, on a file SQLite database), then one `tether worker` (in this process,
heartbeat 1 s, declared dead after 5 s) wakes and drives them. Prints the largest
gap between its heartbeats (peers declare a worker dead past --dead-after, so this
must stay well under 5 s), how many runs it finished in `--seconds`, and the cost
of one wake-up scan per due run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import sqlalchemy as sa  # noqa: E402
from _timer_flow import nap  # noqa: E402

from tether import Database, Runtime  # noqa: E402
from tether.orchestration import engine  # noqa: E402
from tether.orchestration.worker import Worker  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--due", type=int, default=4000)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tether-timers-") as tmp:
        db = Database(f"sqlite:///{tmp}/t.db")
        first = Runtime(db).start(nap, {"seconds": 0.01})
        with db.transaction() as conn:
            row = conn.execute(sa.text("select * from runs where id = :i"), {"i": first.run_id}).mappings().one()
            cols = list(row.keys())
            conn.execute(sa.text(f"insert into runs ({','.join(cols)}) values ({','.join(':' + c for c in cols)})"),
                         [dict(row, id=f"run_{i:08d}") for i in range(args.due - 1)])  # fmt: skip
            events = conn.execute(sa.text("select * from run_events where run_id = :i"), {"i": first.run_id}).mappings().all()
            ecols = list(events[0].keys())
            conn.execute(sa.text(f"insert into run_events ({','.join(ecols)}) values ({','.join(':' + c for c in ecols)})"),
                         [dict(e, run_id=f"run_{i:08d}") for i in range(args.due - 1) for e in events])  # fmt: skip
        time.sleep(0.05)
        client = engine.open_client(db)
        try:
            scan = engine.Engine(db, "bench")
            t0 = time.perf_counter()
            queued = scan.wake_timers(client)  # one beat's scan: at most WAKE_PER_BEAT runs
            scan_ms = (time.perf_counter() - t0) * 1000
        finally:
            client.destroy()
        w = Worker(db, concurrency=4, heartbeat_s=1.0, dead_after_s=5.0, drain_s=0)
        t = threading.Thread(target=w.run)
        t.start()
        beats: list[float] = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            with db.read() as conn:
                hb = conn.execute(sa.text("select heartbeat from workers")).scalar()
            if hb and (not beats or hb != beats[-1]):
                beats.append(hb)
            time.sleep(0.1)
        w.stop()
        t.join()  # (the engine logs the wake-ups it had queued and could not start after the stop)
        with db.read() as conn:
            done = conn.execute(sa.text("select count(*) from runs where status = 'completed'")).scalar()
        db.dispose()
    gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
    print(f"{args.due} due runs: one wake-up scan queued {queued} in {scan_ms:.0f} ms ({scan_ms / max(queued, 1):.2f} ms per run); "
          f"worker beats seen {len(beats)}, largest gap {max(gaps, default=0):.1f} s (heartbeat 1 s, dead after 5 s); "
          f"{done} runs completed in {args.seconds:g} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
