"""Declaring a workflow as a state machine.

    triage = Workflow("support_triage", input=Ticket, tools=TOOLS, policy="policy.yaml")

    @triage.state(initial=True, goes_to=["act", "escalate"])
    def classify(run: RunContext[Ticket, Systems]) -> Next:
        choice = run.choose("intent", options=INTENTS, observation={"text": run.input.text})
        return "act" if choice.confidence >= 0.5 else "escalate"

Each state is a deterministic function of the run's input and the recorded
results of its model choices and tool calls; it names the next state (one of
its declared `goes_to`) or returns `End(...)`. Only `run.choose` asks a model,
and only `run.call` / `run.act` touch the world, through the tool proxy.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

from tether.errors import WorkflowError, WorkflowNotFound
from tether.record.runs import CANCELLED, FAILED_STATUSES

_DEFAULT_UNDO = frozenset((*FAILED_STATUSES, CANCELLED))
from tether.models.base import Model
from tether.tools.registry import ToolRegistry
from tether.tools.tool import Tool

if TYPE_CHECKING:
    from tether.orchestration.context import RunContext
    from tether.record.db import Database

InputT = TypeVar("InputT", bound=BaseModel)
DepsT = TypeVar("DepsT")
DepsT_contra = TypeVar("DepsT_contra", contravariant=True)

EndStatus = Literal["completed", "escalated", "failed"]


@dataclass(frozen=True)
class End:
    """Returned by a state to finish the run."""

    status: EndStatus = "completed"
    outcome: str | None = None
    error: str | None = None


Next = str | End


class EvalHooks(Protocol[DepsT_contra]):
    """What `tether eval` needs from a workflow to score runs on their final state.

    Optional, looked up when used: `import_cases(path, data)` (a task file in another format
    than JSONL), `planners` (names) and `planner(name, case, deps)` (`--planner`), and
    `decide_approval(case, request) -> (approve, by, reason)` (cases with approvals "workflow")."""

    def setup(self, deps: DepsT_contra, setup: dict[str, Any]) -> None:
        """Put a case's preconditions into the systems of record (a fresh copy per case)."""

    def final_state(self, deps: DepsT_contra, case: dict[str, Any]) -> dict[str, Any]:
        """The state a case's assertions are checked against, as plain JSON."""

    def observed_route(self, actions: list[Any], status: str) -> str | None:
        """The route the run took (for per-route accuracy), from its actions."""

    def setup_from_run(self, deps: DepsT_contra, run_input: dict[str, Any]) -> dict[str, Any]:
        """The preconditions a recorded run started from, so `replay --save-case` can rebuild them."""
StateFn = Callable[["RunContext[Any, Any]"], Next]


@dataclass(frozen=True)
class State:
    name: str
    fn: StateFn
    goes_to: tuple[str, ...]


class Workflow(Generic[InputT, DepsT]):
    """A workflow: a deterministic state machine over bounded model choices and governed tool calls."""

    def __init__(
        self,
        name: str,
        *,
        input: type[InputT],
        tools: ToolRegistry | Iterable[Tool],
        policy: str | Path | Any = None,  # a policy file, or a loaded policy (PolicySet, CedarPolicy, PolicyStack)
        deps: Callable[[Database], DepsT] | None = None,
        model: Callable[[], Model] | None = None,
        max_steps: int = 12,
        max_calls_per_step: int = 8,
        description: str = "",
        ref: str | None = None,
        evals: EvalHooks[DepsT] | None = None,
        trusted_input: Iterable[str] = (),
        deadline_s: float | None = None,
        compensate_on: Iterable[str] | None = None,
    ) -> None:
        if max_steps < 1 or max_calls_per_step < 1:
            raise WorkflowError(f"workflow {name}: max_steps and max_calls_per_step must be at least 1")
        if deadline_s is not None and deadline_s <= 0:
            raise WorkflowError(f"workflow {name}: deadline_s must be positive")
        self.name = name
        self.input = input
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self._policy = policy
        self.deps_factory = deps
        self.model_factory = model
        self.max_steps = max_steps
        self.max_calls_per_step = max_calls_per_step
        self.description = description
        self.evals = evals
        # Input fields set by a trusted system (a ticket's id, an authenticated customer id);
        # every other input field is the requester's own words and untrusted.
        self.trusted_input = frozenset(trusted_input)
        # Seconds a run may spend running, summed over its segments; time spent waiting
        # for a person does not count (approvals expire by their own rule).
        self.deadline_s = deadline_s
        # Run endings after which the run's effects are undone (tools' `compensate=`):
        # by default every failure and a cancellation.
        self.compensate_on = _DEFAULT_UNDO if compensate_on is None else frozenset(compensate_on)
        self.ref = ref or name
        self.states: dict[str, State] = {}
        self.initial: str | None = None
        self._version: str | None = None
        self._policy_cache: tuple[tuple[int, int] | None, Any] | None = None

    def state(
        self, name: str | None = None, *, initial: bool = False, goes_to: Iterable[str] = ()
    ) -> Callable[[StateFn], StateFn]:
        def register(fn: StateFn) -> StateFn:
            state_name = name or fn.__name__
            if state_name in self.states:
                raise WorkflowError(f"workflow {self.name}: state {state_name!r} is declared twice")
            self.states[state_name] = State(state_name, fn, tuple(goes_to))
            self._version = None
            if initial:
                if self.initial is not None:
                    raise WorkflowError(f"workflow {self.name}: two initial states ({self.initial}, {state_name})")
                self.initial = state_name
            return fn

        return register

    def check(self) -> None:
        """The graph is well formed: one initial state, every transition lands on a state."""
        if self.initial is None:
            raise WorkflowError(f"workflow {self.name}: no initial state")
        for s in self.states.values():
            for target in s.goes_to:
                if target not in self.states:
                    raise WorkflowError(f"workflow {self.name}: state {s.name!r} goes to unknown state {target!r}")
        for t in self.tools:
            if t.compensate is not None and t.compensate[0] not in self.tools:
                raise WorkflowError(f"workflow {self.name}: tool {t.name} is compensated by {t.compensate[0]}, "
                                    "which is not one of its tools")  # fmt: skip

    def policy(self) -> Any:
        """The workflow's policy; a file is re-read only when it changes on disk."""
        if not isinstance(self._policy, (str, Path)) and self._policy is not None:
            return self._policy
        if self._policy is None:
            raise WorkflowError(f"workflow {self.name} has no default policy; pass one to the runtime")
        try:
            st = os.stat(self._policy)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None  # let load() report the problem
        if stamp is None or self._policy_cache is None or self._policy_cache[0] != stamp:
            from tether.guardrails.loading import load_policy

            self._policy_cache = (stamp, load_policy(self._policy))
        return self._policy_cache[1]

    @property
    def version(self) -> str:
        """A hash of the workflow's code and limits: a run records the version it ran under."""
        if self._version is None:
            self._version = self._compute_version()
        return self._version

    def _compute_version(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.max_steps}|{self.max_calls_per_step}|{self.initial}".encode())
        # Settings added after runs were recorded count only when set, so a workflow that uses
        # none of them keeps its version (and its waiting runs) across a tether upgrade.
        extra = {"trusted": sorted(self.trusted_input), "deadline": self.deadline_s,
                 "undo": sorted(self.compensate_on) if self.compensate_on != _DEFAULT_UNDO else None}  # fmt: skip
        h.update("".join(f"|{k}:{v}" for k, v in extra.items() if v).encode())
        for s in sorted(self.states.values(), key=lambda s: s.name):
            h.update(f"|{s.name}>{','.join(s.goes_to)}|".encode())
            h.update(_source(s.fn).encode())
        for t in self.tools:
            h.update(f"|{t.name}|".encode())
            if t.untrusted_output:
                h.update(f"untrusted:{t.untrusted_output}|".encode())
            if t.selects is not None:  # counted only when declared: workflows without it keep their version
                h.update(f"selects:{sorted(t.selects)}|".encode())
            h.update(_source(t.code).encode())
            if t.compensate:
                h.update(f"undo:{t.compensate[0]}|".encode() + _source(t.compensate[1]).encode())
        return h.hexdigest()[:16]

    def parse_input(self, data: Any) -> InputT:
        from pydantic import ValidationError

        try:
            return self.input.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "input"
            raise WorkflowError(f"invalid input for {self.name}: {where}: {first['msg']}") from None


def _source(fn: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


def load(ref: str) -> Workflow[Any, Any]:
    """A workflow by registered name (entry point group `tether.workflows`) or `module:attribute`."""
    import importlib
    from importlib.metadata import entry_points

    target = ref
    if ref.startswith("session:"):  # a session's run: its agent continues it (Session.reopen), no code to load
        raise WorkflowError(f"{ref!r} is a governed session, not a workflow; the agent that opened it continues it "
                            "(tether.Session.reopen)")
    if ":" not in ref:
        found = [ep for ep in entry_points(group="tether.workflows") if ep.name == ref]
        if not found:
            names = sorted(ep.name for ep in entry_points(group="tether.workflows"))
            raise WorkflowNotFound(f"unknown workflow {ref!r} (registered: {', '.join(names) or 'none'}; or use module:attribute)")
        target = found[0].value
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:  # ValueError: an empty module name
        raise WorkflowError(f"cannot load workflow {ref!r}: {e}") from None
    if not isinstance(obj, Workflow):
        raise WorkflowError(f"{ref!r} is not a tether Workflow")
    return obj
