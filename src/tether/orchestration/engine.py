"""Queued runs on a durable-execution engine (DBOS Transact), behind tether's own interface.

Workflow authors never see the engine: a tether run is one engine workflow whose
single step drives the run through tether's Runtime (start, or re-drive from
tether's journal). The engine does the queueing, the sharing between worker
processes and the recovery of a dead worker's runs; tether's journal does the
memoization of model choices and tool calls. Engine steps are at-least-once,
so a step that crashed after a side effect runs again: the journal answers the
calls it recorded and the idempotency keys make the systems of record answer
the one it had not recorded yet, without a second effect.

The engine keeps its own tables: in a file beside a SQLite tether database, or
in the `dbos` schema of the same PostgreSQL database.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tether.errors import RunNotFound, TetherError, WorkflowError
from tether.guardrails.loading import Policy, policy_from_text
from tether.orchestration.admission import admit
from tether.orchestration.runtime import (
    FINAL_STATUSES,
    INTERRUPTED,
    PAUSED,
    RUNNING,
    WAITING_TIMER,
    RunResult,
    Runtime,
    due_timers,
    version_key,
)
from tether.orchestration.workflow import Workflow, load
from tether.record import ledger
from tether.record import runs as store
from tether.record.canonical import digest
from tether.record.db import Database, timestamp
from tether.record.tables import runs

APP = "tether"
QUEUE = "tether_runs"
RUN_WORKFLOW = "tether.run"
# The engine recovers only runs enqueued under the same application version. Tether
# pins each run to its workflow's version in its own journal (and refuses resuming
# across versions), so one fixed engine version lets every worker take over any run.
APP_VERSION = "tether-runs-1"
WAKE_ATTEMPTS = 3  # wake-ups of one due timer before it is left for a person
WAKE_PER_BEAT = 100  # due runs one worker looks at per heartbeat


class EngineError(TetherError):
    pass


def system_db_url(db: Database) -> str:
    """Where the engine keeps its state for the tether database `db`."""
    url = db.url
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise EngineError("queued runs need a database file or PostgreSQL, not an in-memory SQLite database")
        path = Path(url.database)
        return f"sqlite:///{path.with_name(path.stem + '.engine' + (path.suffix or '.db'))}"
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    raise EngineError(f"queued runs need SQLite or PostgreSQL, not {url.get_backend_name()}")


# -- the step every queued run executes ---------------------------------------------
_local = threading.local()
_db: Database | None = None
_models: dict[str, Any] = {}  # one loaded model per workflow version, shared by the engine's threads
_models_lock = threading.Lock()


def _runtime(wf: Workflow[Any, Any]) -> Runtime:
    # One Runtime per engine thread (its tool proxies are not shared), one model per process.
    rt = getattr(_local, "runtime", None)
    if rt is None or rt.db is not _db:  # a thread outlives an engine (tests launch several in turn)
        if _db is None:
            raise EngineError("no engine is running in this process")
        rt = _local.runtime = Runtime(_db, _models=_models)
    key = version_key(wf)
    if wf.model_factory is not None and key not in _models:
        with _models_lock:
            if key not in _models:
                _models[key] = wf.model_factory()
    return rt


def advance(
    run_id: str, ref: str, input: dict[str, Any], started_by: str, tenant: str, *, driver: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Bring a run as far as it goes now: start it, or re-drive it from its journal.

    `driver` labels this engine workflow (`engine:<its id>`). A run left `running` is
    re-driven only when the same engine workflow held it: that one is being recovered
    after its worker died (or was declared dead), and the fence makes a worker that was
    only paused stop at its next write. A run `running` under any other driver (a person
    approving it in their own process, another segment) is left to that driver.

    `options` carry what the person queueing asked for: `policy_hash` (a policy stored at
    enqueue, for a new run), `migrate` (re-run the journal on this code), `stranded` (they
    say the process that held the run died: take it whoever held it)."""
    options = options or {}
    try:
        wf = load(ref)
        rt = _runtime(wf)
        try:
            with rt.db.read() as conn:
                row = store.get_run(conn, run_id)
        except RunNotFound:  # not started yet, or its start transaction never committed
            policy = None
            if options.get("policy_hash"):
                with rt.db.read() as conn:
                    source, text = store.policy_text(conn, options["policy_hash"])
                policy = policy_from_text(text, source)
            # Routed when it was queued: the version queued is the one started. Its id was handed out: a refusal is kept.
            return _plain(rt.start(wf, input, started_by=started_by, tenant=tenant, run_id=run_id, driver=driver,
                                   policy=policy, record_refusal=True, route=False))  # fmt: skip
        if row.status in FINAL_STATUSES:
            return _plain(_result(row))
        held_by = store.driver_label(row.driver)
        if row.status == RUNNING and held_by is not None and held_by != driver and not options.get("stranded"):
            return {"run_id": run_id, "status": "not_driven", "error": f"run {run_id} is being driven by {held_by}"}
        stranded = row.status in (RUNNING, INTERRUPTED)
        try:
            # Conditional on the holder we saw: a rival that claimed it since wins, and we step aside.
            return _plain(rt.resume(run_id, wf, stranded=stranded, migrate=bool(options.get("migrate")), driver=driver,
                                    from_driver=row.driver, timer_due=options.get("timer_due")))  # fmt: skip
        except WorkflowError as e:
            if row.status == RUNNING:  # left as `running` it would look driven for ever: say why it is not
                with rt.db.transaction() as conn:
                    if store.claim_run(conn, run_id, RUNNING, INTERRUPTED, driver=None, from_driver=row.driver):
                        store.update_run(conn, run_id, error=f"not resumed by a worker: {e}")
            raise
    except TetherError as e:  # the run could not be driven here (say, a version no worker runs): keep the reason
        return {"run_id": run_id, "status": "not_driven", "error": str(e)}


def _plain(r: RunResult) -> dict[str, Any]:
    return dict(r.__dict__)


def _result(row: Any) -> RunResult:
    return RunResult(row.id, row.workflow, row.status, row.outcome, row.steps, row.error)


_registered = False
POISONED = "MAX_RECOVERY_ATTEMPTS_EXCEEDED"  # the engine's status for a dead-lettered workflow


def max_recoveries() -> int:
    raw = os.environ.get("TETHER_MAX_RECOVERIES", "20")
    try:
        n = int(raw)
    except ValueError:
        raise EngineError(f"TETHER_MAX_RECOVERIES must be a whole number of starts, got {raw!r}") from None
    if n < 1:
        raise EngineError(f"TETHER_MAX_RECOVERIES must be at least 1, got {n}")
    return n


def run_of(segment: str) -> str:
    """The run an engine workflow drives: its id, or the run id in a resumption's `RUN:resume:x`."""
    return segment.split(":resume:", 1)[0]


_active = [0]  # engine steps driving a run in this process right now
_active_lock = threading.Lock()


def active() -> int:
    """How many runs this process is driving now (a worker that stops with some still going must exit)."""
    return _active[0]


def _register() -> None:
    """Register tether's engine workflow (again after the engine's registry was destroyed)."""
    global _registered
    from dbos import DBOS

    if _registered:
        return

    # A step that raised something other than a run's own error (say, a lost database
    # connection) is retried; the journal makes the retry continue where it stopped.
    @DBOS.step(name="tether.advance", retries_allowed=True, max_attempts=5, interval_seconds=0.5)
    def step(
        run_id: str, ref: str, input: dict[str, Any], started_by: str, tenant: str, options: dict[str, Any] | None
    ) -> dict[str, Any]:
        with _active_lock:
            _active[0] += 1
        try:
            return advance(run_id, ref, input, started_by, tenant, driver=f"engine:{DBOS.workflow_id}", options=options)
        finally:
            with _active_lock:
                _active[0] -= 1

    # A run whose every attempt kills its worker (say, out of memory) is dead-lettered by the
    # engine after this many starts; the workers then mark it `interrupted` (worker.py).
    # `options` came after the first release: runs queued before it carry five arguments.
    @DBOS.workflow(name=RUN_WORKFLOW, max_recovery_attempts=max_recoveries())
    def run(
        run_id: str, ref: str, input: dict[str, Any], started_by: str, tenant: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return step(run_id, ref, input, started_by, tenant, options)

    _registered = True


# -- enqueueing (any process) ------------------------------------------------------
def migrate(db: Database) -> None:
    """Create or upgrade the engine's tables (workers also do this when they start)."""
    from dbos import DBOS

    DBOS.migrate(system_db_url(db))


def enqueue(
    db: Database, workflow: Workflow[Any, Any], input: Any, *, started_by: str, tenant: str = "default",
    run_id: str | None = None, client: Any = None, policy: Policy | None = None,
) -> str:  # fmt: skip
    """Queue a run for the workers; returns its run id. It is admitted here (`admission.admit`):
    bad input, a policy that does not lint, a killed workflow or a spent budget fail before
    anything is queued, and the rollout picks the version queued (the worker starts that one).

    `policy` replaces the workflow's own for this run: it is stored (and its loading ledgered)
    now, so the worker runs exactly the text that was checked here."""
    admitted = admit(db, workflow, input, policy=policy, tenant=tenant, started_by=started_by)
    run_id = run_id or "run_" + secrets.token_hex(8)
    options: dict[str, Any] = {}
    if policy is not None:
        with db.transaction() as conn:
            loaded = store.store_policy(conn, policy.hash, policy.source, policy.text)
            if loaded:
                ledger.append(conn, "policy_loaded", loaded)
        options["policy_hash"] = policy.hash
    own = client is None
    client = client or open_client(db)
    try:
        client.enqueue(
            {"queue_name": QUEUE, "workflow_name": RUN_WORKFLOW, "workflow_id": run_id, "app_version": APP_VERSION,
             "application_name": APP},
            run_id, admitted.workflow.ref, admitted.plain_input, admitted.started_by, tenant, options,
        )  # fmt: skip
    finally:
        if own:
            client.destroy()
    return run_id


def enqueue_resume(
    db: Database, run_id: str, *, client: Any = None, stranded: bool = False, migrate: bool = False,
    segment: str | None = None, timer_due: str | None = None,
) -> str:  # fmt: skip
    """Queue the next segment of a paused run (after its approval was decided); returns the engine's id for it.

    `stranded`: the run is `running` or `interrupted` and the process that held it died (the
    caller says so); `migrate`: re-run its journal on the code the workers run. A `segment` id
    already queued is not queued again (the engine keeps one workflow per id)."""
    with db.read() as conn:
        row = store.get_run(conn, run_id)
    if row.status in FINAL_STATUSES:
        raise WorkflowError(f"run {run_id} already ended ({row.status})")
    if row.status not in PAUSED and not (stranded and row.status in (RUNNING, INTERRUPTED)):
        raise WorkflowError(f"run {run_id} is {row.status}; pass --stranded if the process driving it died")
    segment = segment or f"{run_id}:resume:{secrets.token_hex(4)}"
    own = client is None
    client = client or open_client(db)
    try:
        client.enqueue(
            {"queue_name": QUEUE, "workflow_name": RUN_WORKFLOW, "workflow_id": segment, "app_version": APP_VERSION,
             "application_name": APP},
            run_id, row.workflow_ref, row.input, row.started_by, row.tenant,
            {"stranded": stranded, "migrate": migrate, **({"timer_due": timer_due} if timer_due else {})},
        )  # fmt: skip
    finally:
        if own:
            client.destroy()
    return segment


def open_client(db: Database) -> Any:
    """An engine client that queues work without running any (its tables are created if missing)."""
    from dbos import DBOSClient

    migrate(db)
    return DBOSClient(system_database_url=system_db_url(db), application_name=APP)


def wait(
    db: Database, run_ids: list[str], timeout_s: float, *, poll_s: float = 0.1, until: tuple[str, ...] = (*FINAL_STATUSES, *PAUSED)
) -> dict[str, str]:
    """Wait until every run has ended or waits for a person or a timer (or is in `until`); returns their statuses."""
    end = time.monotonic() + timeout_s
    while True:
        with db.read() as conn:
            got = dict(conn.execute(sa.select(runs.c.id, runs.c.status).where(runs.c.id.in_(run_ids))).all())
        done = {r: got[r] for r in run_ids if got.get(r) in until}
        if len(done) == len(run_ids) or time.monotonic() > end:
            return {r: got.get(r, "queued") for r in run_ids}
        time.sleep(poll_s)


def wait_segments(db: Database, ids: list[str], timeout_s: float, *, poll_s: float = 0.1) -> dict[str, Any]:
    """Wait for queued segments (the ids `enqueue` and `enqueue_resume` return) to be driven;
    returns each one's result (the run's status after it), or None for those not done."""
    client = open_client(db)
    try:
        end = time.monotonic() + timeout_s
        while True:
            got = {w.workflow_id: w for w in client.list_workflows(workflow_ids=ids, load_input=False)}
            done = {i: w for i, w in got.items() if w.status in ("SUCCESS", "ERROR", "CANCELLED")}
            if len(done) == len(ids) or time.monotonic() > end:
                return {i: (done[i].output if i in done else None) for i in ids}
            time.sleep(poll_s)
    finally:
        client.destroy()


# -- running the engine in a worker process -----------------------------------------
@dataclass
class Engine:
    """The engine inside one worker process: it takes up to `concurrency` queued runs at a time."""

    db: Database
    worker_id: str
    concurrency: int = 4
    poll_s: float = 0.1  # a worker takes at most `concurrency` runs per poll of the queue
    _wake_after: tuple[str, str] | None = None  # (wake_at, run id) the last wake-up scan stopped at

    def launch(self) -> None:
        global _db
        from dbos import DBOS

        _db = self.db
        _register()
        DBOS(config={
            "name": APP, "system_database_url": system_db_url(self.db), "application_version": APP_VERSION,
            "executor_id": self.worker_id, "log_level": os.environ.get("TETHER_ENGINE_LOG", "WARNING"),
            "max_executor_threads": self.concurrency + 8,
        })  # fmt: skip
        DBOS.launch()
        DBOS.register_queue(QUEUE, worker_concurrency=self.concurrency, polling_interval_sec=self.poll_s,
                            on_conflict="always_update")  # fmt: skip

    def pending_owners(self) -> set[str]:
        """Workers that own an unfinished run (the engine's executor ids)."""
        from dbos import DBOS

        pending = DBOS.list_workflows(status="PENDING", app_version=APP_VERSION, load_input=False, load_output=False)
        return {w.executor_id for w in pending if w.executor_id}

    def wake_timers(self, client: Any) -> int:
        """Queue the resumption of runs whose timers are due; returns how many were newly queued.

        A wake-up's segment id comes from the run's due time (and its attempt), so workers that
        see a due run at once queue it once. A wake-up that ended with the run still due (it
        could not be driven: say, its code version is not deployed) is tried again under the
        next attempt's id, up to WAKE_ATTEMPTS; then the run stops being woken (its wake_at is
        cleared) and its error says why, so it neither blocks later timers nor loops.

        At most `WAKE_PER_BEAT` runs are looked at per call, from where the last call stopped,
        so a worker with thousands of due runs still beats on time."""
        n = 0
        batch = due_timers(self.db, limit=WAKE_PER_BEAT, after=self._wake_after)
        for run_id, _, wake_at in batch:
            n += self._wake(client, run_id, wake_at)
            self._wake_after = (wake_at, run_id)
        if len(batch) < WAKE_PER_BEAT:
            self._wake_after = None  # reached the end: the next call starts from the oldest again
        return n

    def _wake(self, client: Any, run_id: str, wake_at: str) -> int:
        base = f"{run_id}:resume:timer-{digest(wake_at)[:12]}"
        ids = [base, *(f"{base}-{i}" for i in range(2, WAKE_ATTEMPTS + 1))]
        got = {w.workflow_id: w for w in client.list_workflows(workflow_ids=ids, load_input=False)}
        for segment in ids:
            if segment not in got:
                try:
                    enqueue_resume(self.db, run_id, client=client, segment=segment, timer_due=wake_at)
                except WorkflowError:  # resumed meanwhile by someone else
                    return 0
                return 1
            if got[segment].status in ("ENQUEUED", "PENDING"):
                return 0  # on its way
        last = got[ids[-1]].output or {}
        why = (f"not woken: its timer was due at {wake_at}, and {WAKE_ATTEMPTS} wake-ups did not resume it "
               f"({last.get('error') or last.get('status') or got[ids[-1]].status}); `tether runs resume RUN` when fixed")  # fmt: skip
        with self.db.transaction() as conn:
            res = conn.execute(runs.update().where(runs.c.id == run_id, runs.c.status == WAITING_TIMER, runs.c.wake_at == wake_at)
                               .values(wake_at=None, error=why, updated_at=timestamp()))  # fmt: skip
            if res.rowcount == 1:
                ledger.append(conn, "timer_not_woken", {"wake_at": wake_at, "attempts": WAKE_ATTEMPTS}, run_id=run_id)
        return 0

    def poisoned(self) -> list[str]:
        """Engine workflows dead-lettered after killing their worker on every start."""
        from dbos import DBOS

        return [w.workflow_id for w in DBOS.list_workflows(status=POISONED, app_version=APP_VERSION, load_input=False,
                                                            load_output=False)]  # fmt: skip

    def recover(self, worker_id: str) -> int:
        """Make a dead worker's unfinished runs available to the live workers; returns how many."""
        from dbos import DBOS

        return len(DBOS._recover_pending_workflows([worker_id]))

    def shutdown(self, drain_s: int = 0) -> None:
        """Stop taking runs, give the running ones `drain_s` seconds to get to a pause or an end, stop."""
        global _db, _registered
        from dbos import DBOS

        DBOS.destroy(destroy_registry=True, workflow_completion_timeout_sec=drain_s)
        _registered = False
        _db = None
