"""Eval hooks for the retail workflow, and the import of τ²-bench task files.

A τ²-bench task becomes a golden case: the customer's scenario is the run's
input; its expected actions, applied to a fresh copy of the store, give the
expected final state (the records that differ from the shipped db.json); a run
succeeds when its final store has exactly those differences, and its status is
`completed` (`escalated` when the task ends with a transfer to a human). The
simulated customer confirms exactly the changes the task expects, as
`customer:<user id>`; anything else it refuses.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tether.evals.golden import Case, Expected, GoldenError
from tether.record.canonical import digest
from tether.record.db import Database
from tether.workflows.retail.planners import (
    PLANNERS,
    PlannerModel,
    ScriptedPlanner,
    complete,
    tau2_steps,
)
from tether.workflows.retail.session import CHANGES
from tether.workflows.retail.store import (
    RecordError,
    RetailStore,
    changed,
    normalise,
    pristine,
)
from tether.workflows.retail.tools import CUSTOMER, PLANNER_TOOLS

_TOOLS = {t.name: t for t in PLANNER_TOOLS}


class _Instructions(BaseModel):
    model_config = ConfigDict(extra="allow")
    reason_for_call: str
    known_info: str | None = None
    unknown_info: str | None = None
    task_instructions: str | None = None


class _Scenario(BaseModel):
    model_config = ConfigDict(extra="allow")
    instructions: _Instructions


class _Action(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: dict[str, Any] = {}


class _Criteria(BaseModel):
    model_config = ConfigDict(extra="allow")
    actions: list[_Action]


class _Task(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    user_scenario: _Scenario
    initial_state: None = None  # τ² tasks of the retail train split start from db.json as shipped
    evaluation_criteria: _Criteria


def changed_state(store: RetailStore) -> dict[str, Any]:
    """The final state evals compare: every record that differs from the shipped db.json."""
    diff = changed(_pristine(), store.touched())
    out: dict[str, Any] = {"changed": sorted(f"{kind}/{k}" for kind, recs in diff.items() for k in recs)}
    out.update({kind: recs for kind, recs in diff.items()})
    return out


_PRISTINE: dict[str, Any] = {}


def _pristine() -> dict[str, Any]:
    if not _PRISTINE:
        _PRISTINE.update(normalise(pristine()))
    return _PRISTINE


def apply(store: RetailStore, actions: list[dict[str, Any]], key: str) -> str | None:
    """Apply τ² actions straight to the store (no gate, no session), as τ²'s environment does;
    a failing action changes nothing. Returns the user the task is about."""
    user = None
    for i, step in enumerate(tau2_steps(actions)):
        a, k = step.args, f"{key}-{i}"
        try:
            match step.tool:
                case "retail.find_user_id_by_email":
                    user = user or store.find_user_by_email(a["email"])
                case "retail.find_user_id_by_name_zip":
                    user = user or store.find_user_by_name_zip(a["first_name"], a["last_name"], a["zip"])
                case "retail.cancel_pending_order":
                    store.cancel_pending_order(k, a["order_id"], a["reason"])
                case "retail.modify_pending_order_address":
                    store.modify_pending_order_address(k, a["order_id"], _address(a))
                case "retail.modify_pending_order_payment":
                    store.modify_pending_order_payment(k, a["order_id"], a["payment_method_id"])
                case "retail.modify_pending_order_items":
                    store.modify_pending_order_items(k, a["order_id"], a["item_ids"], a["new_item_ids"], a["payment_method_id"])
                case "retail.return_delivered_order_items":
                    store.return_delivered_order_items(k, a["order_id"], a["item_ids"], a["payment_method_id"])
                case "retail.exchange_delivered_order_items":
                    store.exchange_delivered_order_items(k, a["order_id"], a["item_ids"], a["new_item_ids"], a["payment_method_id"])
                case "retail.modify_user_address":
                    store.modify_user_address(k, a["user_id"], _address(a))
                case "retail.transfer_to_human_agents":
                    store.transfer_to_human_agents(k, a["summary"])
            if user is None and "order_id" in a:
                user = store.get_order(a["order_id"])["user_id"]
            elif user is None and "user_id" in a:
                user = store.get_user(a["user_id"])["user_id"]
        except RecordError:
            continue
    return user


def _address(a: dict[str, Any]) -> dict[str, str]:
    return {k: a[k] for k in ("address1", "address2", "city", "country", "state", "zip")}


def _request(s: _Instructions) -> str:
    parts = [("Reason for the call", s.reason_for_call), ("What the customer knows", s.known_info),
             ("What the customer does not know", s.unknown_info), ("How the customer behaves", s.task_instructions)]  # fmt: skip
    return "\n".join(f"{label}: {text}" for label, text in parts if text)


def import_tau2(path: Path, data: Any) -> list[Case]:
    """τ²-bench tasks (a JSON list) as golden cases; a bad task is a one-line error naming it."""
    if not isinstance(data, list) or not data:
        raise GoldenError(f"{path}: expected a non-empty JSON list of τ²-bench tasks")
    tasks: list[_Task] = []
    for i, raw in enumerate(data):
        where = f"{path}: task {i + 1}" + (f" (id {raw.get('id')!r})" if isinstance(raw, dict) and "id" in raw else "")
        try:
            task = _Task.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            raise GoldenError(f"{where}: {'.'.join(str(x) for x in err['loc']) or 'task'}: {err['msg']}") from None
        for j, a in enumerate(task.evaluation_criteria.actions):
            tool = _TOOLS.get(f"retail.{a.name}")
            if tool is None:
                raise GoldenError(f"{where}: evaluation_criteria.actions[{j}]: unknown tool {a.name!r}")
            try:
                tool.args_model.model_validate(a.arguments)
            except ValidationError as e:
                err = e.errors()[0]
                arg = ".".join(str(x) for x in err["loc"]) or "arguments"
                raise GoldenError(f"{where}: evaluation_criteria.actions[{j}] ({a.name}): {arg}: {err['msg']}") from None
        tasks.append(task)
    ids = [t.id for t in tasks]
    dupes = sorted({x for x in ids if ids.count(x) > 1})
    if dupes:
        raise GoldenError(f"{path}: duplicate task id {dupes[0]!r}")
    return [_case(path, t, state, user) for t, (state, user) in zip(tasks, _expected_states(tasks), strict=True)]


def _expected_states(tasks: list[_Task]) -> list[tuple[dict[str, Any], str | None]]:
    """Each task's expected actions applied to its own fresh copy of the store."""
    out = []
    with tempfile.TemporaryDirectory(prefix="tether-tau2-") as tmp:
        template = Path(tmp) / "template.db"
        db = Database(f"sqlite:///{template}")
        RetailStore(db)
        db.dispose()
        for t in tasks:
            copy = Path(tmp) / "task.db"
            shutil.copyfile(template, copy)
            db = Database(f"sqlite:///{copy}")
            try:
                store = RetailStore(db)
                user = apply(store, [a.model_dump() for a in t.evaluation_criteria.actions], f"expected-{t.id}")
                out.append((changed_state(store), user))
            finally:
                db.dispose()
                for p in Path(tmp).glob("task.db*"):
                    p.unlink()
    return out


def _case(path: Path, t: _Task, state: dict[str, Any], user: str | None) -> Case:
    actions = [{"name": a.name, "arguments": a.arguments} for a in t.evaluation_criteria.actions]
    transfer = any(a["name"] == "transfer_to_human_agents" for a in actions)
    final = {"changed": state["changed"]}
    for kind in ("users", "orders", "products"):
        final.update({f"{kind}.{k}": v for k, v in state[kind].items()})
    case = Case(
        id=f"tau2-retail-{t.id}", workflow="retail",
        input={"conversation_id": f"tau2-retail:{t.id}", "request": _request(t.user_scenario.instructions)},
        approvals="workflow", expected=Expected(status="escalated" if transfer else "completed", match="subset"),
        final_state=final, meta={"source": f"{path.name} task {t.id}", "tau2_actions": actions, "user_id": user},
    )  # fmt: skip
    case._where = f"{path}: task {t.id}"
    return case


class RetailEvals:
    planners = tuple(PLANNERS)

    def setup(self, deps: RetailStore, setup: dict[str, Any]) -> None:
        if setup:
            raise GoldenError(f"the retail workflow takes no case setup (got {sorted(setup)})")

    def setup_from_run(self, deps: RetailStore, run_input: dict[str, Any]) -> dict[str, Any]:
        return {}

    def final_state(self, deps: RetailStore, case: dict[str, Any]) -> dict[str, Any]:
        return changed_state(deps)

    def observed_route(self, actions: list[Any], status: str) -> str | None:
        return None

    def import_cases(self, path: Path, data: Any) -> list[Case]:
        return import_tau2(path, data)

    def planner(self, name: str, case: Case, deps: RetailStore) -> PlannerModel:
        """The named planner for one case, built on the case's fresh store (before the run starts)."""
        actions = case.meta.get("tau2_actions")
        if not isinstance(actions, list):
            raise GoldenError(f"case {case.id!r}: planner {name!r} needs a τ²-bench task (meta.tau2_actions)")
        made = PLANNERS[name](actions, deps)
        if made is None:  # the attack does not apply to this task: the planner behaves as the oracle
            made = ScriptedPlanner(name, complete(tau2_steps(actions), deps))
        return PlannerModel(made)

    def decide_approval(self, case: Case, request: Any) -> tuple[bool, str, str]:
        """The simulated customer: yes to exactly the changes the task expects, as customer:<user id>."""
        wanted = {digest([f"retail.{a['name']}", a["arguments"]]) for a in case.meta.get("tau2_actions", [])
                  if f"retail.{a['name']}" in CHANGES}  # fmt: skip
        yes = digest([request.tool, request.args]) in wanted
        who = CUSTOMER + str(case.meta.get("user_id") or "unknown")
        return yes, who, "yes, go ahead" if yes else "no, that is not what I asked for"


__all__ = ["RetailEvals", "apply", "changed_state", "import_tau2"]


# -- a run with its calls, for the benchmark and the tests ----------------------------------
class TaskRun(BaseModel):
    case: str
    planner: str
    status: str
    success: bool
    failures: list[str]
    calls: list[dict[str, Any]]  # every proposed call: tool, args, decision, rules, status
    violating: list[dict[str, Any]]  # the planner's known policy-breaking steps, each with what became of it


def template(folder: Path) -> Path:
    """A database file with tether's schema and the store loaded, to copy per run."""
    path = folder / "retail-template.db"
    db = Database(f"sqlite:///{path}")
    RetailStore(db)
    db.dispose()
    return path


def run_task(case: Case, planner: str, template_db: Path, folder: Path) -> TaskRun:
    """One case under one planner on a fresh copy of `template_db`, answered by the simulated
    customer; what became of each call (the eval runner reports only aggregate figures)."""
    from tether.evals.scoring import score
    from tether.guardrails.approvals import ApprovalInbox
    from tether.orchestration.replay import actions
    from tether.orchestration.runtime import Runtime
    from tether.orchestration.workflow import load
    from tether.record import runs as store_runs

    wf = load("retail")
    path = folder / f"{case.id}-{planner}.db"
    shutil.copyfile(template_db, path)
    db = Database(f"sqlite:///{path}")
    runtime = Runtime(db)
    try:
        deps = runtime.deps(wf)
        model = wf.evals.planner(planner, case, deps)  # type: ignore[union-attr]
        runtime.model = lambda: model
        r = runtime.start(wf, case.input, started_by="eval")
        inbox = ApprovalInbox(db)
        for _ in range(20):
            if r.status != "waiting_approval":
                break
            approve, by, reason = wf.evals.decide_approval(case, inbox.get(r.approval_id or ""))  # type: ignore[union-attr]
            inbox.decide(r.approval_id or "", approve=approve, by=by, reason=reason)
            r = runtime.resume(r.run_id, wf)
        with db.read() as conn:
            acts = actions(store_runs.load_events(conn, r.run_id))
        ok, failures, _, _ = score(case, wf, acts, r.status, wf.evals.final_state(deps, case.model_dump()))  # type: ignore[union-attr]
        calls = [{"tool": a.tool, "args": a.args, "decision": a.decision, "rules": a.rules, "status": a.status} for a in acts]
        by_key: dict[str, list[dict[str, Any]]] = {}
        for c in calls:
            by_key.setdefault(digest([c["tool"], c["args"]]), []).append(c)
        violating = []
        for s in getattr(model.planner, "violating", []):
            seen = by_key.get(digest([s.tool, s.args]), [])
            violating.append({"tool": s.tool, "args": s.args, "outcome": seen[0]["status"] if seen else "not_proposed",
                              "rules": seen[0]["rules"] if seen else []})  # fmt: skip
        return TaskRun(case=case.id, planner=planner, status=r.status, success=ok, failures=failures, calls=calls,
                       violating=violating)  # fmt: skip
    finally:
        runtime.close()
        db.dispose()
        for p in folder.glob(path.name + "*"):
            p.unlink(missing_ok=True)
