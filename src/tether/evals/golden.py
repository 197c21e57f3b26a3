"""The golden-set format: one JSON object per line (JSONL).

    {"id": "b77-0001",                       unique in the file
     "workflow": "support_triage",           a registered name or module:attribute
     "input": {"ticket_id": "G-0001"},       the run's input
     "setup": {...},                         preconditions, put in place by the workflow's eval hooks
     "approvals": "approve",                 what the harness does with approval requests:
                                             approve | deny | leave (default leave) | workflow
                                             (the workflow's eval hooks decide, e.g. a simulated customer)
     "route": "cards",                       the expected route, for per-route accuracy (optional)
     "expected": {"status": "completed",     the run's final status (optional)
                  "match": "exact",          exact | subset | any_order
                  "actions": [{"tool": "helpdesk.route", "args": {"queue": "cards"}}]},
     "forbidden": [{"tool": "payments.*"}],  executed actions that make the case unsafe
     "final_state": {"ticket.status": "solved", "ticket.tags": {"includes": ["cards"]}},
     "meta": {...}}                          free-form (source, label)

Actions are the executed calls of side-effecting tools, in order. An expected
action matches an executed one when the tool names are equal and every expected
argument equals the actual one (a list matches when its items are all present).
`exact`: the executed actions are the expected ones, in order, and no others;
`subset`: the expected ones occur in this order, others may come between;
`any_order`: each expected one occurs, in any order. `forbidden` tools are globs.
Final-state keys are dotted paths into the workflow's final state; a value must
be equal, or `{"includes": [...]}` (list contains), or `{"len": n}`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from tether.errors import TetherError


class GoldenError(TetherError):
    pass


class ExpectedAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str
    args: dict[str, Any] = {}


class Expected(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str | None = None
    match: Literal["exact", "subset", "any_order"] = "exact"
    actions: list[ExpectedAction] = []


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    workflow: str
    input: dict[str, Any]
    setup: dict[str, Any] = {}
    approvals: Literal["approve", "deny", "leave", "workflow"] = "leave"
    route: str | None = None
    expected: Expected = Expected()
    forbidden: list[ExpectedAction] = []
    final_state: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    _where: str = PrivateAttr(default="")  # file:line, for error messages


def load_cases(path: str | Path) -> list[Case]:
    """Parse a golden-set file; any bad line is an error naming the file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoldenError(f"{p}: golden-set file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GoldenError(f"{p}: cannot read ({e})") from None
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            case = Case.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            raise GoldenError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "case"
            raise GoldenError(f"{p}:{lineno}: {where}: {err['msg']}") from None
        if case.id in seen:
            raise GoldenError(f"{p}:{lineno}: duplicate case id {case.id!r} (first at line {seen[case.id]})")
        seen[case.id] = lineno
        case._where = f"{p}:{lineno}"
        cases.append(case)
    if not cases:
        raise GoldenError(f"{p}: no cases")
    return cases


def load_suite(path: str | Path, workflow: str | None = None) -> list[Case]:
    """A golden set (JSONL), or a task file in another format (a JSON document, such as
    τ²-bench's task lists) that the named workflow's eval hooks import (`import_cases`)."""
    p = Path(path)
    try:
        head = p.read_text(encoding="utf-8").lstrip()[:1]
    except FileNotFoundError:
        raise GoldenError(f"{p}: golden-set file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GoldenError(f"{p}: cannot read ({e})") from None
    if head != "[":
        return load_cases(p)
    if workflow is None:
        raise GoldenError(f"{p}: a JSON list, not a JSONL golden set; name the workflow that imports it with --workflow")
    from tether.orchestration.workflow import load

    hooks = load(workflow).evals
    if hooks is None or not hasattr(hooks, "import_cases"):
        raise GoldenError(f"{p}: a JSON list, not a JSONL golden set, and workflow {workflow!r} imports no other format")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GoldenError(f"{p}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    return list(hooks.import_cases(p, data))


def check_cases(cases: list[Case], workflow: str | None = None) -> None:
    """Every case names a loadable workflow and only tools that workflow has."""
    import fnmatch

    from tether.orchestration.workflow import load

    loaded: dict[str, Any] = {}
    for c in cases:
        ref = workflow or c.workflow
        try:
            wf = loaded[ref] if ref in loaded else loaded.setdefault(ref, load(ref))
        except TetherError as e:
            raise GoldenError(f"{c._where}: case {c.id!r}: {e}") from None
        for a in c.expected.actions:
            if a.tool not in wf.tools:
                raise GoldenError(f"{c._where}: case {c.id!r}: unknown tool {a.tool!r} in expected actions of {wf.name}")
        for f in c.forbidden:
            if not any(fnmatch.fnmatchcase(name, f.tool) for name in wf.tools.names()):
                raise GoldenError(f"{c._where}: case {c.id!r}: forbidden tool {f.tool!r} matches no tool of {wf.name}")


def append_case(path: str | Path, case: Case) -> None:
    """Append one line; the file is flushed to disk before returning."""
    line = json.dumps(case.model_dump(mode="json", exclude_defaults=True), ensure_ascii=False, sort_keys=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def case_from_run(db: Any, run_id: str) -> Case:
    """A regression case from a recorded run: its input, setup, executed actions and final state now."""
    from tether.evals.scoring import executed
    from tether.orchestration.replay import actions
    from tether.orchestration.workflow import load
    from tether.record import runs as store

    with db.read() as conn:
        row = store.get_run(conn, run_id)
        events = store.load_events(conn, run_id)
    wf = load(row.workflow_ref)
    acts = executed(actions(events), wf)
    base = {"id": f"{row.workflow}-{run_id}", "workflow": row.workflow_ref, "input": row.input}
    state: dict[str, Any] = {}
    setup: dict[str, Any] = {}
    if wf.evals is not None and wf.deps_factory is not None:
        deps = wf.deps_factory(db)
        setup = wf.evals.setup_from_run(deps, row.input)
        state = _flatten(wf.evals.final_state(deps, {**base, "setup": setup}))
    decided = [e.data["approved"] for e in events if e.kind == "approval"]
    return Case(
        **base,
        setup=setup,
        approvals=("approve" if all(decided) else "deny") if decided else "leave",
        expected=Expected(status=row.status, match="exact", actions=[ExpectedAction(tool=a.tool, args=a.args) for a in acts]),
        final_state=state,
        meta={"source": f"recorded run {run_id}", "recorded_status": row.status},
    )


def _flatten(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
