"""The runtime: starts runs, drives their state machine, resumes paused ones.

A run is re-driven from the top every time it is resumed: each state function
runs again, and every model choice and tool call it makes is answered from the
run's journal until the journal runs out, then live. That is why state code
must be deterministic given its input and recorded answers, and why a resumed
run never repeats a side effect.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from tether.errors import (
    NonDeterminismError,
    RunNotFound,
    RunTakenOver,
    TetherError,
    WorkflowError,
    WorkflowKilled,
)
from tether.guardrails import approvals
from tether.guardrails.approvals import principal
from tether.guardrails.limits import SharedRateLimiter
from tether.guardrails.loading import Policy, policy_from_text
from tether.models import budgets
from tether.models.base import Model
from tether.models.meter import RunMeter, env_ceiling, recorded_spend
from tether.models.prices import load_prices
from tether.orchestration import rollout
from tether.orchestration._journal import Journal
from tether.orchestration.admission import Admission, admit, default_user, lint  # noqa: F401 - default_user: still importable from here
from tether.orchestration.context import EndRun, RunContext, Sleep, Suspend
from tether.orchestration.environment import Live
from tether.orchestration.pipeline import CallPipeline
from tether.orchestration.workflow import End, Workflow, load
from tether.record import ledger
from tether.record import runs as store
from tether.record.canonical import digest
from tether.record.db import Database
from tether.record.tables import run_events
from tether.record.tables import runs as runs_table
from tether.record.tracing import RUN_ID, Tracing, ids, parent_context
from tether.tools.proxy import ToolProxy
from tether.tools.secrets import scrub
from tether.types import RunStatus

# Statuses a run can have. The first three are not final.
# Plain strings (`.value`): psycopg writes an Enum member by its name, not its value.
RUNNING, WAITING, INTERRUPTED = RunStatus.RUNNING.value, RunStatus.WAITING_APPROVAL.value, RunStatus.INTERRUPTED.value
WAITING_TIMER = RunStatus.WAITING_TIMER.value  # paused by `run.sleep`/`run.wait_until` until runs.wake_at
PAUSED = (WAITING, WAITING_TIMER)
FAILED_STATUSES, FINAL_STATUSES, CANCELLED = store.FAILED_STATUSES, store.FINAL_STATUSES, store.CANCELLED


@dataclass(frozen=True)
class RunResult:
    """Where a run (or a session) stands after it was driven: status, outcome, steps, and what it waits on."""

    run_id: str
    workflow: str
    status: str
    outcome: str | None
    steps: int
    error: str | None = None
    approval_id: str | None = None  # set when status is waiting_approval
    wake_at: str | None = None  # set when status is waiting_timer: when it is due (UTC, ISO 8601)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass
class Runtime:
    """Runs workflows against one database.

    `policy` overrides the workflow's own policy for new runs; `model` overrides
    its model factory. A paused run always resumes under the policy it started
    with (stored by hash), so a decision cannot change under it.
    """

    db: Database
    policy: Policy | None = None
    model: Callable[[], Model] | None = None
    _deps: dict[str, Any] = field(default_factory=dict)
    _models: dict[str, Model] = field(default_factory=dict)
    _pipelines: dict[str, CallPipeline] = field(default_factory=dict)
    _linted: set[tuple[str, str]] = field(default_factory=set)
    tracing: Tracing | None = None
    secrets: Any = None  # a tether.tools.secrets.SecretStore for the tools (default: the environment)
    cost_ceiling_usd: float | None = None  # per run; else the workflow's, else $TETHER_COST_CEILING_USD
    prices: Any = None  # a tether.models.prices.PriceTable (default: built-in, plus $TETHER_PRICES)

    # -- public -----------------------------------------------------------------
    def start(
        self,
        workflow: Workflow[Any, Any],
        input: Any,
        *,
        started_by: str | None = None,
        tenant: str = "default",
        run_id: str | None = None,
        driver: str | None = None,
        record_refusal: bool = False,
        policy: Policy | None = None,
        route: bool = True,
    ) -> RunResult:
        """Start a run and drive it until it ends or pauses. `driver` labels who drives it
        (default: this process); see `store.new_driver`.

        The run is admitted first (`admission.admit`): its input parsed, its version chosen by
        the workflow's rollout (`route=False` starts exactly `workflow`: a queued run, routed
        when it was queued), its policy linted. A killed workflow or a spent budget refuses the
        run with an error, writing nothing. With `record_refusal` (a queued run, whose id was
        already handed out) the refused run is written instead, ended `halted` or
        `budget_exhausted` with the reason, and a `run_refused` ledger entry."""
        admitted = self.admit(workflow, input, policy=policy, tenant=tenant, started_by=started_by, route=route)
        return self.start_admitted(admitted, run_id=run_id, driver=driver, record_refusal=record_refusal)

    def admit(
        self, workflow: Workflow[Any, Any], input: Any, *, policy: Policy | None = None, tenant: str = "default",
        started_by: str | None = None, route: bool = True,
    ) -> Admission:  # fmt: skip
        """`admission.admit` under this runtime's policy and lint cache. The kill switch and the
        budgets are left to `start_admitted`, which checks them in the transaction writing the run."""
        return admit(self.db, workflow, input, policy=policy or self.policy, tenant=tenant, started_by=started_by,
                     route=route, refuse_now=False, linted=self._linted)  # fmt: skip

    def start_admitted(
        self, admitted: Admission, *, run_id: str | None = None, driver: str | None = None, record_refusal: bool = False
    ) -> RunResult:
        """Start an admitted run (see `start`): the kill switch and the budgets are checked again in
        the transaction that inserts the run, so the check and the insert are one."""
        workflow, parsed, policy = admitted.workflow, admitted.input, admitted.policy
        tenant, started_by, plain_input = admitted.tenant, admitted.started_by, admitted.plain_input
        ceiling = self._ceiling(workflow)  # a bad $TETHER_COST_CEILING_USD fails here, before the run exists
        if self.model is not None or workflow.model_factory is not None:
            self._model_for(workflow)  # so does a bad model configuration (unknown provider, missing key)
        run_id = run_id or "run_" + secrets.token_hex(8)
        holder = store.new_driver(driver)
        refused: tuple[str, str] | None = None
        with self.db.transaction() as conn:
            try:
                admitted.refuse(conn)  # a killed workflow or a spent budget refuses the run before anything is written
            except (WorkflowKilled, budgets.BudgetExceeded) as e:
                if not record_refusal:
                    raise
                refused = (store.HALTED if isinstance(e, WorkflowKilled) else "budget_exhausted", str(e))
            loaded = store.store_policy(conn, policy.hash, policy.source, policy.text)
            if loaded:  # a new policy version is an audited event
                ledger.append(conn, "policy_loaded", loaded)
            store.insert_run(
                conn, id=run_id, workflow=workflow.name, workflow_ref=workflow.ref,
                workflow_version=workflow.version, status=refused[0] if refused else RUNNING, input=plain_input,
                started_by=started_by, tenant=tenant, policy_hash=policy.hash, driver=holder,
                error=refused[1] if refused else None, cost_ceiling_usd=ceiling,
            )  # fmt: skip
            ledger.append(
                conn, "run_refused" if refused else "run_started",
                {"workflow": workflow.name, "version": workflow.version, "policy_hash": policy.hash,
                 "started_by": started_by, "tenant": tenant, "input_sha256": digest(plain_input),
                 **({"status": refused[0], "reason": refused[1]} if refused else {})},
                run_id=run_id,
            )  # fmt: skip
        if refused:
            return RunResult(run_id, workflow.name, refused[0], None, 0, refused[1])
        return self._drive(workflow, run_id, parsed, policy, tenant, started_by, recorded=[], driver=holder)

    def resume(
        self, run_id: str, workflow: Workflow[Any, Any], *, stranded: bool = False, migrate: bool = False,
        driver: str | None = None, from_driver: str | None | bool = False, timer_due: str | None = None,
    ) -> RunResult:  # fmt: skip
        """Continue a paused run (after its approval was decided). One resumer wins.

        With `stranded=True` a run left `running` by a process that died, or
        `interrupted`, is re-driven too; the caller must know that no other process
        drives it. Completed calls are
        answered from the journal and repeated calls carry the same idempotency keys.

        A run resumes only under the workflow version it started with. Code deployed
        since is refused unless `migrate=True`: then the run's journal is re-executed
        against the new code, and if the code no longer makes the recorded calls the
        run goes back to where it was, untouched, with the reason in its error.

        Resuming makes this process the run's only writer: a process still driving a
        run taken from it as stranded stops at its next write (RunTakenOver), writing
        nothing. `from_driver` makes the claim conditional on who held the run.
        `timer_due` is the due time a wake-up was queued for: that timer fires whatever
        this process's clock says (clocks of machines differ).
        """
        with self.db.read() as conn:
            row = store.get_run(conn, run_id)
            source, text = store.policy_text(conn, row.policy_hash)
        if row.workflow != workflow.name:
            raise WorkflowError(f"run {run_id} belongs to workflow {row.workflow}, not {workflow.name}")
        resumable = (*PAUSED, RUNNING, INTERRUPTED) if stranded else PAUSED
        if row.status not in resumable:
            return _result_from_row(row)
        if row.workflow_version != workflow.version and not migrate:
            raise WorkflowError(
                f"run {run_id} started on {workflow.name} version {row.workflow_version}; the code here is version "
                f"{workflow.version}. Resume it where that version is deployed, or with --migrate to re-run its "
                "journal against this code (it stays as it is if the code no longer makes the same calls)"
            )
        # Everything that can fail happens before the run is claimed, so a failure
        # here leaves it waiting (and its decided approval usable) instead of stuck.
        policy = policy_from_text(text, source)
        parsed = workflow.parse_input(row.input)
        self._preflight(workflow, row)
        holder = store.new_driver(driver)
        with self.db.transaction() as conn:
            if not store.claim_run(conn, run_id, row.status, RUNNING, driver=holder, from_driver=from_driver):
                raise RunNotFound(f"run {run_id} is being resumed by another process")
            recorded = store.load_events(conn, run_id)
        migrating = row.workflow_version if row.workflow_version != workflow.version else None
        return self._drive(workflow, run_id, parsed, policy, row.tenant, row.started_by, recorded=recorded,
                           trace_ids=(row.trace_id, row.root_span_id),
                           revert=(row.status, migrating) if migrating else None, active_s=row.active_s or 0.0,
                           driver=holder, timer_due=timer_due)  # fmt: skip

    def cancel(
        self, run_id: str, workflow: Workflow[Any, Any], *, by: str, reason: str | None = None, driver: str | None = None
    ) -> RunResult:
        """Stop a paused (waiting or interrupted) run: its pending approvals are withdrawn and its
        effects undone, newest first, by each tool's declared compensation."""
        by = principal(by)
        with self.db.read() as conn:
            row = store.get_run(conn, run_id)
            source, text = store.policy_text(conn, row.policy_hash)
            cancelled = any(e.kind == "cancel" for e in store.load_events(conn, run_id))
        if row.workflow != workflow.name:
            raise WorkflowError(f"run {run_id} belongs to workflow {row.workflow}, not {workflow.name}")
        if row.status not in (*PAUSED, INTERRUPTED):
            raise WorkflowError(f"run {run_id} is {row.status}; only a run waiting for approval or interrupted can be cancelled")
        if cancelled:
            raise WorkflowError(f"run {run_id} is already cancelled; it waits for its compensations to be decided")
        policy = policy_from_text(text, source)
        parsed = workflow.parse_input(row.input)
        self._preflight(workflow, row)
        holder = store.new_driver(driver)
        with self.db.transaction() as conn:
            if not store.claim_run(conn, run_id, row.status, RUNNING, driver=holder):
                raise RunNotFound(f"run {run_id} is being resumed by another process")
            withdrawn = approvals.withdraw(conn, run_id, by)
            recorded = store.load_events(conn, run_id)
        return self._drive(workflow, run_id, parsed, policy, row.tenant, row.started_by, recorded=recorded,
                           trace_ids=(row.trace_id, row.root_span_id), active_s=row.active_s or 0.0,
                           cancel={"by": by, "reason": reason, "withdrawn_approvals": withdrawn}, driver=holder)  # fmt: skip

    def wake_due(self, *, now: str | None = None, limit: int = 100) -> list[RunResult]:
        """Resume up to `limit` runs whose timers are due (for a scheduler; workers do this at
        every beat). A run another process resumes first is skipped; one that cannot be
        resumed here (its code version is not deployed here) is reported with the reason,
        left waiting, and paged past, so it never hides the runs due after it."""
        out: list[RunResult] = []
        after = None
        while len(out) < limit and (batch := due_timers(self.db, now=now, limit=limit, after=after)):
            for run_id, ref, wake_at in batch[: limit - len(out)]:
                out.extend(self._wake_one(run_id, ref, wake_at))
                after = (wake_at, run_id)
        return out

    def _wake_one(self, run_id: str, ref: str, wake_at: str) -> list[RunResult]:
        try:  # picked as due: that timer fires, whatever the clock says by the time it resumes
            return [self.resume(run_id, load(ref), timer_due=wake_at)]
        except RunNotFound:
            return []  # woken by someone else
        except TetherError as e:
            with self.db.read() as conn:
                row = store.get_run(conn, run_id)
            return [RunResult(run_id, row.workflow, row.status, None, row.steps, f"not woken: {e}")]

    def deps(self, workflow: Workflow[Any, Any]) -> Any:
        """The workflow's dependencies (its systems of record) as this runtime's runs see them."""
        return self._deps_for(workflow)

    def get(self, run_id: str) -> RunResult:
        with self.db.read() as conn:
            return _result_from_row(store.get_run(conn, run_id))

    def close(self) -> None:
        for p in self._pipelines.values():
            p.close()
        if self.tracing is not None:
            self.tracing.flush()

    # -- the loop ---------------------------------------------------------------
    def _drive(self, workflow: Workflow[Any, Any], run_id: str, *args: Any, **kwargs: Any) -> RunResult:
        try:
            return self._walk(workflow, run_id, *args, **kwargs)
        except store.Superseded as e:
            raise RunTakenOver(f"run {run_id} was taken over by another process; this one stopped without writing ({e})") from None
        except Exception as e:
            # Failed outside the walk's own handling (before its loop, or writing its end): a run
            # still held by this driver must not stay `running` with nobody driving it.
            with self.db.transaction() as conn:
                if store.claim_run(conn, run_id, RUNNING, INTERRUPTED, driver=None, from_driver=kwargs.get("driver")):
                    first = (str(e).strip().splitlines() or [""])[0][:300]
                    store.update_run(conn, run_id, error=f"interrupted: {type(e).__name__}: {first}; "
                                                         "`tether runs resume RUN --stranded` continues it")  # fmt: skip
            raise

    def _walk(
        self,
        workflow: Workflow[Any, Any],
        run_id: str,
        parsed: Any,
        policy: Policy,
        tenant: str,
        started_by: str,
        recorded: list[store.Event],
        trace_ids: tuple[str | None, str | None] = (None, None),
        revert: tuple[str, str] | None = None,  # (status, old version) of a run being migrated to new code
        active_s: float = 0.0,  # seconds the run already spent running in earlier segments
        cancel: dict[str, Any] | None = None,  # {by, reason}: stop the run and undo its effects
        driver: str | None = None,  # the driver id this process claimed the run under
        timer_due: str | None = None,  # a timer due at this time fires now (see resume)
    ) -> RunResult:
        journal = Journal(self.db, run_id, recorded, driver=driver)
        began = time.monotonic()
        deadline = began + workflow.deadline_s - active_s if workflow.deadline_s is not None else None
        tracing = self._tracing()
        root = tracing.tracer.start_span(
            f"invoke_agent {workflow.name}", context=parent_context(*trace_ids),
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": workflow.name, RUN_ID: run_id,
                        "tether.workflow.version": workflow.version, "tether.policy.hash": policy.hash,
                        "tether.tenant": tenant, "tether.resumed": bool(recorded)},
        )  # fmt: skip
        if trace_ids[0] is None:  # the first segment: its root span is the run's trace
            journal.set_run_values(trace_id=ids(root)[0], root_span_id=ids(root)[1])
        ctx = RunContext(
            run_id=run_id, workflow=workflow, input=parsed, tenant=tenant, started_by=started_by,
            journal=journal, pipeline=self._pipeline(workflow), policy=policy, deps=self._deps_for(workflow),
            model=lambda: self._model_for(workflow), env=Live(tracer=tracing.tracer, history=self._novel, timer_due=timer_due),
            deadline=deadline, meter=self._meter(workflow, recorded, run_id),
        )  # fmt: skip
        approval_id = wake_at = None
        if recorded:  # where the run stands, for endings that do not walk the states again
            journal.step, journal.state = recorded[-1].step, recorded[-1].state
        if cancel is not None:
            journal.add("cancel", None, cancel)
            journal.add_ledger("run_cancelled", cancel)
        cancelled = any(e.kind == "cancel" for e in recorded) or cancel is not None
        ending = next((e.data for e in recorded if e.kind == "compensating"), None)
        try:
            with trace.use_span(root, end_on_exit=False):
                try:
                    if ending is not None:  # it had ended and was undoing its effects: it goes on with that
                        status, outcome, error = ending["status"], ending["outcome"], ending["error"]
                    elif cancelled:  # the state machine stops where it is; only its effects are undone
                        status, outcome, error = CANCELLED, None, f"cancelled by {(cancel or _cancel_of(recorded))['by']}"
                    else:
                        end = drive(workflow, ctx, halted=lambda: rollout.kill_reason(self.db, workflow.name))
                        status, outcome, error = end.status, end.outcome, end.error
                        if revert is not None and journal.skipped():  # new code ended before a recorded op
                            raise NonDeterminismError(f"the code ends without the recorded op {journal.skipped()[0]}")
                except NonDeterminismError as e:
                    if revert is None:
                        status, outcome, error = "failed", None, str(e)
                    else:
                        root.set_status(StatusCode.ERROR, "migration refused")
                        root.end()
                        return self._refuse_migration(journal, workflow, run_id, revert, str(e), driver)
                except Sleep as s:
                    status, outcome, error, wake_at = WAITING_TIMER, None, None, s.wake_at
                except Suspend as s:
                    status, outcome, error, approval_id = WAITING, None, None, s.approval_id
                except EndRun as e:
                    status, outcome, error = e.status, None, e.error
                except TetherError as e:
                    status, outcome, error = "failed", None, str(e)
                except Exception as e:  # noqa: BLE001 - a bug in state code fails the run, not the process
                    status, outcome, error = "failed", None, f"{type(e).__name__}: {e}"
                if status in workflow.compensate_on:
                    if ending is None:  # the ending is kept, so a resumed run finishes its undo whatever else changed
                        journal.add("compensating", None, {"status": status, "outcome": outcome, "error": error})
                    try:
                        undone = ctx.compensate()
                    except Suspend as s:  # a compensation waits for a person; the run resumes into it
                        status, approval_id = WAITING, s.approval_id
                    else:
                        if undone:
                            error = f"{error}; " + _undone_summary(undone)
                        if ctx.in_flight:
                            error = f"{error}; not undone, may have happened: {', '.join(ctx.in_flight)}"
        except store.Superseded:  # another process holds the run now: nothing more is written from here
            root.set_status(StatusCode.ERROR, "taken over by another process")
            root.end()
            raise
        except BaseException as e:  # KeyboardInterrupt, SystemExit: keep what was done, then let it go on
            root.set_attribute("tether.run.status", INTERRUPTED)
            root.end()
            journal.flush(lambda conn: tracing.save(conn, run_id), status=INTERRUPTED,
                          active_s=round(active_s + time.monotonic() - began, 3),
                          error=f"interrupted by {type(e).__name__}; `tether runs resume RUN --stranded` continues it")  # fmt: skip
            raise
        root.set_attribute("tether.run.status", status)
        journal.set_run_values(active_s=round(active_s + time.monotonic() - began, 3))
        if revert is not None:  # the new code replayed the journal faithfully: the run is now on it
            journal.set_run_values(workflow_version=workflow.version)
            journal.add_ledger("run_migrated", {"from_version": revert[1], "to_version": workflow.version})
        if error:
            error = scrub(error)
            root.set_status(StatusCode.ERROR, self.db.redactor.text(error)[:500])
        root.end()
        # wake_at is set only while the run waits on a timer, so it never shows a time long past.
        journal.set_run_values(wake_at=wake_at)
        if status == WAITING_TIMER:
            journal.flush(lambda conn: tracing.save(conn, run_id), status=WAITING_TIMER)
        elif status != WAITING:
            journal.add("end", None, {"status": status, "outcome": outcome, "error": error})
            journal.add_ledger("run_finished", {"status": status, "outcome": outcome,
                                                "error": self.db.redactor.text(error) if error else None, "steps": journal.step})  # fmt: skip
            journal.flush(lambda conn: tracing.save(conn, run_id), status=status, outcome=outcome, error=error)
        else:
            # Normally already written with the approval request; a resumed run
            # whose approval is still pending goes back to waiting here.
            journal.flush(lambda conn: tracing.save(conn, run_id), status=WAITING)
        return RunResult(run_id, workflow.name, status, outcome, journal.step, error, approval_id, wake_at)

    def _refuse_migration(
        self, journal: Journal, workflow: Workflow[Any, Any], run_id: str, revert: tuple[str, str], why: str,
        driver: str | None,
    ) -> RunResult:  # fmt: skip
        """The new code diverged from the run's journal before doing anything new: put the run back."""
        status, old_version = revert
        error = f"not migrated to version {workflow.version}: {why}"
        with self.db.transaction() as conn:
            if driver is not None:
                store.update_held_run(conn, run_id, driver, status=status, error=error)
            else:
                store.update_run(conn, run_id, status=status, error=error)
            ledger.append(conn, "run_migration_refused", {"from_version": old_version, "to_version": workflow.version,
                                                          "reason": why}, run_id=run_id)  # fmt: skip
        return RunResult(run_id, workflow.name, status, None, journal.step, error, None)

    def _novel(self, tenant: str, tool: str) -> bool:
        return tool_is_novel(self.db, tenant, tool)

    def _meter(self, workflow: Workflow[Any, Any], recorded: list[store.Event], run_id: str = "") -> RunMeter:
        if self.prices is None:
            self.prices = load_prices()
        spent, tokens = recorded_spend(recorded)  # a resumed run keeps what it already spent
        kept = None
        if recorded:  # and the ceiling it started under, whoever resumes it (runs from before 0010 have none recorded)
            with self.db.read() as conn:
                kept = conn.execute(sa.select(runs_table.c.cost_ceiling_usd).where(runs_table.c.id == run_id)).scalar()
        return RunMeter(self.prices, kept if kept is not None else self._ceiling(workflow), spent, tokens)

    def _preflight(self, workflow: Workflow[Any, Any], row: Any) -> None:
        """Build what driving the run needs before it is claimed: a failure here (a bad price
        table or ceiling, a broken dependency) leaves the run as it was, not held by nobody."""
        self._deps_for(workflow)
        self._pipeline(workflow)
        self._tracing()
        if self.prices is None:
            self.prices = load_prices()
        if row.cost_ceiling_usd is None:
            self._ceiling(workflow)

    def _ceiling(self, workflow: Workflow[Any, Any]) -> float | None:
        ceiling = self.cost_ceiling_usd if self.cost_ceiling_usd is not None else getattr(workflow, "cost_ceiling_usd", None)
        return ceiling if ceiling is not None else env_ceiling()

    def _tracing(self) -> Tracing:
        if self.tracing is None:
            self.tracing = Tracing()
        return self.tracing

    def _lint(self, workflow: Workflow[Any, Any], policy: Policy) -> None:
        """Refuse a policy with rules that would silently never be checked for this workflow."""
        lint(workflow, policy, self._linted)

    # -- per-workflow-version singletons ------------------------------------------
    # Keyed by version too: a rollout runs a candidate and the stable version side by side.
    def _pipeline(self, workflow: Workflow[Any, Any]) -> CallPipeline:
        key = version_key(workflow)
        if key not in self._pipelines:
            self._pipelines[key] = governed_pipeline(self.db, workflow.tools, self.secrets)
        return self._pipelines[key]

    def _deps_for(self, workflow: Workflow[Any, Any]) -> Any:
        if workflow.deps_factory is None:
            return None
        key = version_key(workflow)
        if key not in self._deps:
            self._deps[key] = workflow.deps_factory(self.db)
        return self._deps[key]

    def _model_for(self, workflow: Workflow[Any, Any]) -> Model:
        # Built on first use: a run replayed from its journal never loads a model.
        key = version_key(workflow)
        if key not in self._models:
            factory = self.model or workflow.model_factory
            if factory is None:
                raise WorkflowError(f"workflow {workflow.name} asks a model but none is configured")
            self._models[key] = factory()
        return self._models[key]


_KNOWN: set[tuple[str, str, str]] = set()  # (database, tenant, tool) seen executed: that never changes back


def tool_is_novel(db: Database, tenant: str, tool: str) -> bool:
    """Whether `tool` was never executed for `tenant` (a risk feature); known tools are cached."""
    if (str(db.url), tenant, tool) in _KNOWN:
        return False
    with db.read() as conn:
        seen = conn.execute(
            sa.select(run_events.c.run_id).join(runs_table, runs_table.c.id == run_events.c.run_id)
            .where(runs_table.c.tenant == tenant, run_events.c.kind == "result",
                   run_events.c.data["tool"].as_string() == tool, run_events.c.data["status"].as_string() == "ok")
            .limit(1)
        ).first()  # fmt: skip
    if seen:
        _KNOWN.add((str(db.url), tenant, tool))
    return seen is None


def governed_pipeline(db: Database, tools: Any, secrets: Any = None) -> CallPipeline:
    """The live call path on `db`: credentials minted from its key, limits and action budgets shared
    through it (every process on the same store draws from the same buckets)."""
    from tether.tools.credentials import Credentials

    proxy = ToolProxy(tools, credentials=Credentials(db), secrets=secrets)
    return CallPipeline(proxy, limiter=SharedRateLimiter(db), budgets=budgets.ActionBudgets(db))


def due_timers(
    db: Database, *, now: str | None = None, limit: int = 100, after: tuple[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """(run id, workflow ref, wake_at) of runs waiting on a timer that is due, oldest first (by
    wake_at, then id); `after` = (wake_at, id) of the last one a caller saw, to page past runs
    it could not wake."""
    now = now or dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    c = runs_table.c
    q = sa.select(c.id, c.workflow_ref, c.wake_at).where(c.status == WAITING_TIMER, c.wake_at <= now)
    if after is not None:
        q = q.where(sa.or_(c.wake_at > after[0], sa.and_(c.wake_at == after[0], c.id > after[1])))
    with db.read() as conn:
        rows = conn.execute(q.order_by(c.wake_at, c.id).limit(limit)).all()
    return [(r.id, r.workflow_ref, r.wake_at) for r in rows]


def version_key(workflow: Workflow[Any, Any]) -> str:
    return f"{workflow.name}@{workflow.version}"


def drive(workflow: Workflow[Any, Any], ctx: RunContext[Any, Any], halted: Callable[[], str | None] | None = None) -> End:
    """Walk the state machine from its initial state; the step budget bounds the walk.

    `halted` is asked before every step: a reason ends the run as `halted` (the kill switch)."""
    state = workflow.initial or ""
    step = 0
    while True:
        step += 1
        if step > workflow.max_steps:
            raise EndRun("budget_exhausted", f"step budget of {workflow.max_steps} steps used up in {state!r}")
        if halted is not None and (why := halted()):
            raise EndRun(store.HALTED, f"halted before step {step} ({state!r}) by the kill switch: {why}")
        ctx._enter(state, step)
        nxt = workflow.states[state].fn(ctx)
        if ctx._ended:  # the state caught the end of its run and carried on
            raise ctx._ended
        if isinstance(nxt, End):
            return nxt
        if nxt not in workflow.states[state].goes_to:
            raise WorkflowError(f"state {state!r} went to {nxt!r}, which is not in its goes_to")
        state = nxt


def _cancel_of(recorded: list[store.Event]) -> dict[str, Any]:
    return next(e.data for e in recorded if e.kind == "cancel")


def _undone_summary(undone: list[Any]) -> str:
    ok = sum(r.ok for r in undone)
    failed = [f"{r.tool} {r.status}" for r in undone if not r.ok]
    return f"compensated {ok} of {len(undone)} effects" + (f" ({', '.join(failed)})" if failed else "")


def _result_from_row(row: Any) -> RunResult:
    return RunResult(row.id, row.workflow, row.status, row.outcome, row.steps, row.error,
                     wake_at=row.wake_at if row.status == WAITING_TIMER else None)  # fmt: skip
