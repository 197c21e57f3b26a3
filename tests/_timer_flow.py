"""A workflow that waits on a durable timer between two steps."""

from __future__ import annotations

from pydantic import BaseModel

from tether import End, PolicySet, RunContext, Workflow


class Nap(BaseModel):
    seconds: float = 0.3


nap = Workflow("nap", input=Nap, tools=[], policy=PolicySet.from_text("default: allow\npolicies: []\n", "nap.yaml"),
               ref="_timer_flow:nap")  # fmt: skip


@nap.state(initial=True, goes_to=["done"])
def wait(run: RunContext[Nap, None]) -> str:
    run.sleep(run.input.seconds)
    return "done"


@nap.state(goes_to=[])
def done(run: RunContext[Nap, None]) -> End:
    return End("completed", "rested")
