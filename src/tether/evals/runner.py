"""Running a golden set: each case on a fresh copy of the systems of record.

A template database is prepared once per workflow (schema plus whatever the
workflow's dependencies seed); every case runs on its own copy of it, so cases
cannot see each other's changes and may run in parallel processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tether.evals.golden import Case
from tether.evals.scoring import CaseResult, executed, score
from tether.guardrails.approvals import ApprovalInbox
from tether.guardrails.loading import Policy, policy_from_text
from tether.models.base import Choice
from tether.orchestration.replay import actions
from tether.orchestration.runtime import Runtime
from tether.orchestration.workflow import Workflow, load
from tether.record import runs as store
from tether.record.db import Database

EVAL_USER = "eval"
EVAL_APPROVER = "eval-approver"
_MAX_APPROVAL_ROUNDS = 20


def _template(wf: Workflow[Any, Any], folder: Path) -> Path:
    path = folder / f"template-{wf.name}.db"
    db = Database(f"sqlite:///{path}")
    if wf.deps_factory is not None:
        wf.deps_factory(db)
    db.dispose()  # the last connection closing folds the WAL into the file
    return path


def run_case(case: Case, wf: Workflow[Any, Any], template: Path, folder: Path, policy: Policy | None,
             planner: str | None = None) -> CaseResult:  # fmt: skip
    """`planner` names a planner the workflow's eval hooks build for the case (`planner(name, case, deps)`)."""
    path = folder / f"case-{abs(hash(case.id))}-{time.perf_counter_ns()}.db"
    shutil.copyfile(template, path)
    db = Database(f"sqlite:///{path}")
    runtime = Runtime(db, policy=policy)
    start = time.perf_counter()
    try:
        deps = runtime.deps(wf)
        if wf.evals is not None:
            wf.evals.setup(deps, case.setup)
        if planner is not None:
            model = wf.evals.planner(planner, case, deps)  # type: ignore[union-attr]
            runtime.model = lambda: model
        r = runtime.start(wf, case.input, started_by=EVAL_USER)
        inbox = ApprovalInbox(db)
        for _ in range(_MAX_APPROVAL_ROUNDS):
            if r.status == "waiting_timer":  # eval time is virtual: a timer is due at once
                r = runtime.resume(r.run_id, wf, timer_due=r.wake_at)
                continue
            if r.status != "waiting_approval" or case.approvals == "leave":
                break
            if case.approvals == "workflow":  # the workflow's hooks answer (e.g. a simulated customer)
                approve, by, reason = wf.evals.decide_approval(case, inbox.get(r.approval_id or ""))  # type: ignore[union-attr]
            else:
                approve, by, reason = case.approvals == "approve", EVAL_APPROVER, "eval"
            inbox.decide(r.approval_id or "", approve=approve, by=by, reason=reason)
            r = runtime.resume(r.run_id, wf)
        latency = (time.perf_counter() - start) * 1000
        with db.read() as conn:
            events = store.load_events(conn, r.run_id)
        acts = actions(events)
        state = wf.evals.final_state(deps, case.model_dump()) if wf.evals else {}
        ok, failures, unsafe, violations = score(case, wf, acts, r.status, state)
        choices = [Choice.model_validate(e.data["choice"]) for e in events if e.kind == "choice"]
        tokens = sum(e.data["choice"]["usage"]["input_tokens"] + e.data["choice"]["usage"]["output_tokens"]
                     for e in events if e.kind == "choice")  # fmt: skip
        return CaseResult(
            id=case.id, status=r.status, success=ok, failures=failures, unsafe=unsafe, violations=violations,
            escalated=r.status == "escalated", route_expected=case.route,
            route_observed=wf.evals.observed_route(acts, r.status) if wf.evals else None,
            steps=r.steps, latency_ms=round(latency, 3),
            cost_usd=round(sum(e.data.get("cost", {}).get("cost_usd", 0.0) for e in events if e.kind == "choice"), 8),
            tokens=tokens, actions=[a.tool for a in executed(acts, wf)], run_id=r.run_id, error=r.error,
            models=[c.model_calls[-1].model for c in choices],
            model_escalated=any(len({x.model for x in c.model_calls}) > 1 for c in choices),
        )  # fmt: skip
    finally:
        runtime.close()
        db.dispose()
        for p in folder.glob(path.name + "*"):
            p.unlink(missing_ok=True)


def _worker(payload: tuple[dict[str, Any], str, str | None, str | None, str, str, str | None]) -> dict[str, Any]:
    case_json, ref, policy_text, policy_source, template, folder, planner = payload
    policy = policy_from_text(policy_text, policy_source or "<policy>") if policy_text is not None else None
    return asdict(run_case(Case.model_validate(case_json), load(ref), Path(template), Path(folder), policy, planner))


def run_cases(
    cases: list[Case],
    *,
    concurrency: int = 1,
    policy: Policy | None = None,
    workflow: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    planner: str | None = None,
) -> list[CaseResult]:
    """Run every case (in `concurrency` processes when above 1); results in case order."""
    refs = {c.id: workflow or c.workflow for c in cases}
    workflows = {ref: load(ref) for ref in set(refs.values())}
    with tempfile.TemporaryDirectory(prefix="tether-eval-") as tmp:
        folder = Path(tmp)
        templates = {ref: _template(wf, folder) for ref, wf in workflows.items()}
        results: list[CaseResult] = []
        if concurrency <= 1:
            for i, case in enumerate(cases):
                ref = refs[case.id]
                results.append(run_case(case, workflows[ref], templates[ref], folder, policy, planner))
                if progress:
                    progress(i + 1, len(cases))
            return results
        payloads = [
            (c.model_dump(mode="json"), refs[c.id], policy.text if policy else None, policy.source if policy else None,
             str(templates[refs[c.id]]), str(folder), planner)
            for c in cases
        ]  # fmt: skip
        with cf.ProcessPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(_worker, p) for p in payloads]
            for i, fut in enumerate(cf.as_completed(futures)):
                if progress:
                    progress(i + 1, len(cases))
            return [CaseResult(**f.result()) for f in futures]
