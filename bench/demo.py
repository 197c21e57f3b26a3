"""`tether demo` throughput: runs per second on the embedded default (SQLite, one process).

    python bench/demo.py [--tickets 200] [--repeat 3]

Each repeat runs the demo on a fresh database; the model is loaded (or trained
once and cached) before timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tether import Database
from tether.workflows.triage.demo import run_demo
from tether.workflows.triage.model import classifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    classifier()
    rates, per_run_ms = [], []
    for i in range(opts.repeat):
        folder = Path(tempfile.mkdtemp(prefix="tether-demo-bench-"))
        db = Database(f"sqlite:///{folder / 'tether.db'}")
        s = run_demo(db, tickets=opts.tickets, seed=7)
        rates.append(s.runs_per_s)
        per_run_ms.append(1000 * s.wall_s / s.tickets)
        calls = sum(s.actions.values())
        print(f"  repeat {i + 1}: {s.tickets} runs in {s.wall_s:.2f} s = {s.runs_per_s:.1f} runs/s, "
              f"{per_run_ms[-1]:.1f} ms per run, {calls} changing calls, {s.ledger_entries} ledger entries")  # fmt: skip
        db.dispose()
    print(f"tether demo: median {statistics.median(rates):.1f} runs/s ({statistics.median(per_run_ms):.1f} ms per run)")


if __name__ == "__main__":
    main()
