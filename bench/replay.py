"""Replay cost: one 12-step run, and every run of a `tether demo`.

    python bench/replay.py [--tickets 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tether import (
    Args,
    Database,
    End,
    PolicySet,
    RunContext,
    Runtime,
    ToolContext,
    Workflow,
    tool,
)
from tether.orchestration.replay import replay
from tether.record import runs as store
from tether.workflows.triage.demo import run_demo


class Step(Args):
    n: int


@tool("work.step")
def step(ctx: ToolContext[None], args: Step) -> dict[str, Any]:
    return {"done": args.n}


class Empty(BaseModel):
    pass


def twelve_steps() -> Workflow[Empty, None]:
    wf: Workflow[Empty, None] = Workflow("twelve", input=Empty, tools=[step], policy=PolicySet.from_text("policies: []"),
                                         max_steps=12)  # fmt: skip
    for i in range(1, 13):
        nxt = f"s{i + 1}" if i < 12 else None

        def fn(run: RunContext[Empty, None], i: int = i, nxt: str | None = nxt) -> Any:
            run.call("work.step", {"n": i})
            return nxt if nxt else End()

        wf.state(f"s{i}", initial=i == 1, goes_to=[nxt] if nxt else [])(fn)
    return wf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=200)
    opts = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tether-replay-bench-"))
    db = Database(f"sqlite:///{folder / 'tether.db'}")

    wf = twelve_steps()
    r = Runtime(db).start(wf, {})
    assert r.steps == 12 and r.status == "completed"
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        rep = replay(db, r.run_id, workflow=wf)
        times.append(time.perf_counter() - t0)
        assert rep.same
    print(f"replay of a 12-step run (12 tool calls): median {statistics.median(times) * 1000:.2f} ms over 50 replays")

    s = run_demo(db, tickets=opts.tickets, seed=7)
    with db.read() as conn:
        ids = [row.id for row in store.list_runs(conn, workflow="support_triage")]
    t0 = time.perf_counter()
    reports = [replay(db, i) for i in ids]
    total = time.perf_counter() - t0
    same = sum(x.same for x in reports)
    print(f"replay of every demo run: {len(ids)} runs in {total:.2f} s ({total / len(ids) * 1000:.2f} ms per run), "
          f"{same} of {len(ids)} the same; the demo itself took {s.wall_s:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
