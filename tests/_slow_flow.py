"""A workflow whose steps take time, so runs are in flight when the kill switch is thrown."""

from __future__ import annotations

import time

from pydantic import BaseModel

from tether import End, PolicySet, RunContext, Workflow


class Job(BaseModel):
    ticket_id: str
    steps: int = 20
    delay_ms: int = 20


slow = Workflow("slow_steps", input=Job, tools=[], policy=PolicySet.from_text("default: allow\npolicies: []\n", "slow.yaml"),
                max_steps=200, ref="_slow_flow:slow")  # fmt: skip


@slow.state(initial=True, goes_to=["work"])
def work(run: RunContext[Job, None]) -> str | End:
    time.sleep(run.input.delay_ms / 1000)
    return End("completed", "done") if run.step >= run.input.steps else "work"
