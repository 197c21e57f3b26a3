"""A workflow whose every run kills the process driving it (as running it out of memory would)."""

from __future__ import annotations

import os
import signal

from pydantic import BaseModel

from tether import End, PolicySet, RunContext, Workflow


class Job(BaseModel):
    ticket_id: str


poison = Workflow("poison", input=Job, tools=[], policy=PolicySet.from_text("default: allow\npolicies: []\n", "p.yaml"),
                  ref="_poison_flow:poison")  # fmt: skip


@poison.state(initial=True)
def die(run: RunContext[Job, None]) -> End:
    os.kill(os.getpid(), signal.SIGKILL)
    return End("completed", "unreachable")
