"""Plan big, execute small.

A planner (a large model) is asked once for a structured plan: a list of tool
calls. The plan is validated against the tool schemas before anything runs; the
executor then makes each call through the gate (`RunContext.call`) without a
model. Only when a step fails validation or policy (invalid, denied, rejected)
does the planner get asked again, with what was done and what failed.

`single_loop` is the baseline it is measured against: the model is asked for
every next action with the whole history in its prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.types import ToolResult

PLAN = "plan"
DONE = "done"
REPLAN_ON = ("invalid", "denied", "rejected")  # a better plan can fix these; errors and timeouts stop the run


class PlanStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str
    args: dict[str, Any] = {}


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[PlanStep] = Field(max_length=20)


def plan_schema(tools: Sequence[str]) -> dict[str, Any]:
    """What the planner must answer (for providers' structured outputs)."""
    return {"type": "object", "additionalProperties": False, "required": ["steps"],
            "properties": {"steps": {"type": "array", "maxItems": 20, "items": {
                "type": "object", "additionalProperties": False, "required": ["tool", "args"],
                "properties": {"tool": {"type": "string", "enum": list(tools)}, "args": {"type": "object"}}}}}}  # fmt: skip


def check_plan(args: Mapping[str, Any], specs: Mapping[str, dict[str, Any]]) -> tuple[Plan | None, list[str]]:
    """The plan, or the reasons it is refused (unknown tools, arguments that fail their schema)."""
    try:
        plan = Plan.model_validate(dict(args))
    except ValidationError as e:
        return None, [f"not a plan: {e.errors()[0]['msg']} at {'/'.join(map(str, e.errors()[0]['loc']))}"]
    errors = []
    for i, step in enumerate(plan.steps):
        spec = specs.get(step.tool)
        if spec is None:
            errors.append(f"step {i + 1}: {step.tool!r} is not one of the tools offered")
            continue
        problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(spec["parameters"]).iter_errors(step.args))
        if problem is not None:
            where = "/".join(map(str, problem.absolute_path)) or "(top)"
            errors.append(f"step {i + 1} ({step.tool}): {problem.message} at {where}")
    return (None, errors) if errors else (plan, [])


@dataclass
class Outcome:
    status: str  # done | failed
    results: list[ToolResult] = field(default_factory=list)
    model_calls: int = 0
    error: str | None = None


def plan_and_execute(run: Any, *, goal: str, tools: Sequence[str], observation: Mapping[str, Any],
                     max_replans: int = 2) -> Outcome:  # fmt: skip
    """Ask for a plan, run it through the gate; re-plan only on validation or policy failure."""
    specs = {t: run.workflow.tools.get(t).spec() for t in tools}
    done: list[dict[str, Any]] = []
    out = Outcome("failed")
    feedback = ""
    for _ in range(1 + max_replans):
        obs = {**observation, "tools": list(specs.values()), "done": done}
        if feedback:
            obs["failed"] = feedback
        choice = run.choose(PLAN, [PLAN], obs, instructions=goal, schemas={PLAN: plan_schema(tools)})
        out.model_calls += 1
        if not choice.ok:
            feedback = f"no plan: {choice.error}"
            continue
        plan, errors = check_plan(choice.args, specs)
        if plan is None:
            feedback = "plan refused: " + "; ".join(errors)[:1000]
            continue
        for step in plan.steps:
            result = run.call(step.tool, step.args, proposer=f"planner:{choice.model}")
            out.results.append(result)
            done.append({"tool": step.tool, "args": step.args, "status": result.status})
            if result.status in REPLAN_ON:
                feedback = f"{step.tool} was {result.status}: {result.error}"[:1000]
                break
            if not result.ok:
                out.error = f"{step.tool} {result.status}: {result.error}"
                return out
        else:
            out.status = "done"
            return out
    out.error = f"no workable plan after {1 + max_replans} attempt(s): {feedback}"
    return out


def single_loop(run: Any, *, goal: str, tools: Sequence[str], observation: Mapping[str, Any], max_turns: int = 10,
                compress_over: int | None = None) -> Outcome:  # fmt: skip
    """The baseline agent: one model call per action, the whole history in every prompt
    (or, with `compress_over`, a summary of older steps once the history passes that many tokens)."""
    from tether.models.compression import compress

    history: list[dict[str, Any]] = []
    out = Outcome("failed")
    for _ in range(max_turns):
        shown = compress(history, max_tokens=compress_over) if compress_over is not None else history
        choice = run.choose("next_action", [*tools, DONE], {**observation, "history": shown}, instructions=goal)
        out.model_calls += 1
        if choice.ok and choice.option == DONE:
            out.status = "done"
            return out
        result = run.act(choice)
        out.results.append(result)
        history.append({"tool": result.tool, "args": choice.args, "status": result.status, "output": result.output,
                        "error": result.error})  # fmt: skip
        if not result.ok and result.status not in REPLAN_ON:
            out.error = f"{result.tool} {result.status}: {result.error}"
            return out
    out.error = f"no end after {max_turns} turns"
    return out
