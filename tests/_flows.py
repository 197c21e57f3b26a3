"""Small workflows and tools for the orchestration tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from tether import (
    Args,
    Choice,
    DecisionRequest,
    End,
    PolicySet,
    RunContext,
    Workflow,
    tool,
)
from tether.tools.tool import ToolContext

POLICY = PolicySet.from_text(
    """
policies:
  - name: refund_requires_approval
    if: {tool: "payments.refund", amount_usd: "> 100"}
    then: {action: "require_human_approval"}
  - name: no_delete_in_v1
    if: {tool: "*.*delete*"}
    then: {action: "deny"}
""",
    "test-policy.yaml",
)


@dataclass
class World:
    """A system of record in memory that counts side effects by idempotency key."""

    effects: list[tuple[str, Any]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, key: str, what: str, value: Any) -> dict[str, Any]:
        with self.lock:
            if key in self.keys:
                return {"replayed": True}
            self.keys.add(key)
            self.effects.append((what, value))
            return {"done": what}


class Note(Args):
    text: str


class Refund(Args):
    transaction_id: str
    amount_usd: float


class Sleep(Args):
    seconds: float


class Empty(Args):
    pass


@tool("notes.add")
def add_note(ctx: ToolContext[World], args: Note) -> dict[str, Any]:
    """Add a note."""
    return ctx.deps.apply(ctx.idempotency_key, "note", args.text)


@tool("payments.refund")
def refund(ctx: ToolContext[World], args: Refund) -> dict[str, Any]:
    """Refund a transaction."""
    return ctx.deps.apply(ctx.idempotency_key, "refund", (args.transaction_id, args.amount_usd))


@tool("notes.delete_all")
def delete_all(ctx: ToolContext[World], args: Empty) -> dict[str, Any]:
    """Delete every note."""
    return ctx.deps.apply(ctx.idempotency_key, "delete_all", None)


@tool("clock.sleep", timeout_s=0.2)
def sleep(ctx: ToolContext[World], args: Sleep) -> dict[str, Any]:
    """Sleep (for timeouts)."""
    time.sleep(args.seconds)
    return {"slept": args.seconds}


@tool("clock.boom")
def boom(ctx: ToolContext[World], args: Empty) -> dict[str, Any]:
    """Always fails."""
    raise RuntimeError("upstream said no")


TOOLS = [add_note, refund, delete_all, sleep, boom]


class Job(BaseModel):
    amount_usd: float = 50.0
    loops: int = 0


class Scripted:
    """A model that answers from a list, recording what it was asked."""

    name = "scripted"

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.asked: list[DecisionRequest] = []

    def choose(self, request: DecisionRequest) -> Choice:
        self.asked.append(request)
        a = self.answers.pop(0)
        return Choice(point=request.point, model=self.name, **a)


def make_workflow(name: str = "refunds", world: World | None = None, max_steps: int = 12) -> Workflow[Job, World]:
    w = world or World()
    wf: Workflow[Job, World] = Workflow(name, input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: w,
                                        max_steps=max_steps)  # fmt: skip

    @wf.state(initial=True, goes_to=["refund", "spin"])
    def start(run: RunContext[Job, World]) -> Any:
        run.call("notes.add", {"text": "started"})
        return "spin" if run.input.loops else "refund"

    @wf.state(goes_to=["spin", "refund"])
    def spin(run: RunContext[Job, World]) -> Any:
        return "spin"  # never leaves: only the step budget ends it

    @wf.state(goes_to=[])
    def refund(run: RunContext[Job, World]) -> Any:
        r = run.call("payments.refund", {"transaction_id": "T1", "amount_usd": run.input.amount_usd})
        if not r.ok:
            return End("escalated", f"refund {r.status}")
        run.call("notes.add", {"text": "refunded"})
        return End("completed", "refunded")

    return wf


def ask_refund_ask() -> Workflow[Job, World]:
    """A model choice, a refund that waits for a person, another choice: spend on both sides of a pause."""
    wf: Workflow[Job, World] = Workflow("ask_refund_ask", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: World())

    @wf.state(initial=True, goes_to=[])
    def go(run: RunContext[Job, World]) -> End:
        run.choose("before", ["yes"], {"text": "x" * 400})
        run.call("payments.refund", {"transaction_id": "T1", "amount_usd": 500})  # over 100: waits for a person
        run.choose("after", ["yes"], {"text": "x" * 400})
        return End("completed", "done")

    return wf
