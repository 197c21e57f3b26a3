"""Retail order support as a state machine: a planner plans, the executor runs the plan through the gate.

    plan -> execute -> plan -> ... -> End
      ^       |  (a step fails validation, policy, confirmation or its
      +-------+   preconditions: back to the planner with why)

`plan` asks the planner (through the model door, so the plan is recorded) for
the calls still to make; the whole plan is validated against the tool schemas
before any of it runs. `execute` proposes the steps one at a time through
`run.call`, each with the facts the run has established (authenticated user,
the order's owner and status, the payment method's kind and owner). It goes
back to the planner only when a step does not succeed, or when the plan is done
(the planner then answers with no steps). Changes wait for the customer's
confirmation (an approval by `customer:<user id>`). A transfer to a human ends
the run `escalated`; a run in which the gate had to deny a call ends `failed`
(`policy_denied`), even if the planner recovered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tether.errors import InvalidArguments, WorkflowError
from tether.orchestration.context import RunContext
from tether.orchestration.workflow import End, Next, Workflow
from tether.record.canonical import digest
from tether.record.db import Database
from tether.workflows.retail.session import Session
from tether.workflows.retail.store import RetailStore
from tether.workflows.retail.tools import PLANNER_TOOLS, TOOLS

POLICY_FILE = Path(__file__).with_name("policy.yaml")
PLANNER_TOOL_NAMES = tuple(t.name for t in PLANNER_TOOLS)
MAX_PLANS = 12  # planner calls per run
MAX_PLAN_STEPS = 40  # calls in one plan


class Conversation(BaseModel):
    """A customer's request. `conversation_id` is free-form (a τ²-bench task id, a chat id)."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str = Field(min_length=1, max_length=100)
    request: str = Field(min_length=1, max_length=10000)


def _deps(db: Database) -> RetailStore:
    return RetailStore(db)


def _planner() -> Any:
    """The configured model (TETHER_MODEL / TETHER_ROUTER, see tether.models.config) plans."""
    import os

    from tether.models.config import model_from_env

    if not (os.environ.get("TETHER_MODEL", "").strip() or os.environ.get("TETHER_ROUTER", "").strip()):
        raise WorkflowError("the retail workflow needs a planner: set TETHER_MODEL (e.g. openai:gpt-4.1), "
                            "or evaluate with `tether eval TASKS.json --workflow retail --planner oracle`")  # fmt: skip
    return model_from_env()


# What a model planner is shown: the agent policy it must follow, and the shape of a plan.
AGENT_POLICY = Path(__file__).with_name("data").joinpath("policy.md").read_text(encoding="utf-8")
PLAN_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["steps"],
    "properties": {"steps": {"type": "array", "maxItems": 40, "items": {
        "type": "object", "additionalProperties": False, "required": ["tool", "args"],
        "properties": {"tool": {"type": "string", "enum": [t.name for t in PLANNER_TOOLS]}, "args": {"type": "object"}}}}},
}  # fmt: skip
INSTRUCTIONS = (
    "Plan the retail tool calls still needed for the customer's request, following the policy below. "
    "Answer with `plan`: its steps are run in order through a policy gate; an empty list means nothing is left "
    "to do. `history` holds every call made so far and its result; `failure` says why the last plan stopped. "
    "The customer confirms each change when it is proposed.\n\n" + AGENT_POLICY
)


def _evals() -> Any:
    from tether.workflows.retail.evals import RetailEvals

    return RetailEvals()


workflow: Workflow[Conversation, RetailStore] = Workflow(
    "retail",
    input=Conversation,
    tools=TOOLS,
    policy=POLICY_FILE,
    deps=_deps,
    model=_planner,
    max_steps=2 * MAX_PLANS + 1,
    max_calls_per_step=MAX_PLAN_STEPS + 1,
    evals=_evals(),
    # A run that ends `failed` because the gate denied a call keeps the changes the customer
    # confirmed before it; a cancelled run, or one the runtime ends, has them reverted.
    compensate_on=("cancelled", "budget_exhausted", "loop_detected", "deadline_exceeded", "cost_ceiling"),
    description="Retail order support on τ²-bench's retail domain: a planner plans, the executor runs the plan through the gate.",
)
Run = RunContext[Conversation, RetailStore]


def _session(run: Run) -> Session:
    return run.data.setdefault("session", Session())  # type: ignore[no-any-return]


def _history(run: Run) -> list[dict[str, Any]]:
    return run.data.setdefault("history", [])  # type: ignore[no-any-return]


@workflow.state(initial=True, goes_to=["plan", "execute"])
def plan(run: Run) -> Next:
    plans = run.data["plans"] = run.data.get("plans", 0) + 1
    if plans > MAX_PLANS:
        return End("escalated", "plan_budget", f"no finished plan after {MAX_PLANS} planner calls")
    observation = {"request": run.input.request, "history": json.dumps(_history(run), sort_keys=True),
                   "failure": run.data.get("failure"), "tools": [t.spec() for t in PLANNER_TOOLS]}  # fmt: skip
    choice = run.choose("plan", options=["plan"], observation=observation, instructions=INSTRUCTIONS,
                        schemas={"plan": PLAN_SCHEMA})  # fmt: skip
    if not choice.ok:
        return End("failed", "no_plan", choice.error)
    run.data["planner"] = choice.model
    steps = choice.args.get("steps")
    problem = check_plan(steps)
    if problem:
        run.data["failure"] = f"the plan was refused: {problem}"
        return "plan"
    if not steps:
        return _finish(run, End("completed", "done"))
    run.data["plan"] = steps
    return "execute"


@workflow.state(goes_to=["plan"])
def execute(run: Run) -> Next:
    session, history = _session(run), _history(run)
    reads: dict[str, dict[str, Any]] = run.data.setdefault("reads", {})  # identical reads since the last change
    for step in run.data["plan"]:
        tool, args = step["tool"], step["args"]
        key = digest([tool, args])
        if key in reads:  # asked again with nothing changed since: answered from this run's memory
            history.append({**reads[key], "status": "memory"})
            continue
        r = run.call(tool, args, proposer=f"planner:{run.data['planner']}", facts=session.facts(tool, args))
        attempt = {"tool": tool, "args": args, "status": r.status, "output": r.output, "error": r.error}
        history.append(attempt)
        session.observe(tool, args, r.ok, r.output)
        if r.status == "denied":
            run.data.setdefault("denied", []).append(f"{tool} ({', '.join(r.decision.rules) if r.decision else 'gate'})")
        if r.ok and workflow.tools.get(tool).side_effect:
            reads.clear()
        elif r.ok:
            reads[key] = attempt
        if r.ok and tool == "retail.transfer_to_human_agents":
            return _finish(run, End("escalated", "transferred_to_human"))
        if not r.ok:
            run.data["failure"] = f"{tool} {r.status}: {r.error}"
            return "plan"
    run.data["failure"] = None
    return "plan"


def _finish(run: Run, end: End) -> End:
    """`end`, unless the gate had to deny a call of this run: then the run failed the policy."""
    denied = run.data.get("denied")
    if denied:
        return End("failed", "policy_denied", f"the gate denied {len(denied)} call(s): {'; '.join(denied)[:400]}")
    return end


def check_plan(steps: Any) -> str | None:
    """Why a plan is not a list of calls to the planner's tools with valid arguments, or None."""
    if not isinstance(steps, list):
        return "steps must be a list"
    if len(steps) > MAX_PLAN_STEPS:
        return f"{len(steps)} steps, at most {MAX_PLAN_STEPS}"
    for i, s in enumerate(steps, 1):
        if not isinstance(s, dict) or set(s) != {"tool", "args"} or not isinstance(s["args"], dict):
            return f"step {i}: expected {{tool, args}}"
        if s["tool"] not in PLANNER_TOOL_NAMES:
            return f"step {i}: unknown tool {s['tool']!r}"
        t = workflow.tools.get(s["tool"])
        try:
            t.validate(s["args"])
        except InvalidArguments as e:
            return f"step {i}: {str(e).removeprefix('invalid arguments for ')}"
    return None
