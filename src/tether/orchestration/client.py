"""The client side of tether: start, queue, resume, cancel, decide and look up runs.

As Temporal's SDK separates a Client (which starts and signals workflows) from a Worker (which
executes them), `Client` is what an application or the CLI holds to ask for runs, and
`tether.orchestration.worker.Worker` is the process that drives queued ones. A client drives a
run itself, in this process, only where it is asked to (`start`, `resume`, `cancel`, `decide`):
through a `Runtime` it owns (or one it is given). `queue` and `queue_resume` hand runs to the
workers instead.

It is a thin facade: every run it starts or queues is admitted by `admission.admit` (the same
path `tether run`, POST /api/runs and the engine take), an approval is decided by
`decide.decide_and_resume`, and resuming goes through `Runtime.resume`. A Client is not shared
between threads (its Runtime's caches are not); close it, or use it as a context manager.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

from tether.errors import TetherError
from tether.guardrails.approvals import ApprovalRequest
from tether.guardrails.loading import Policy
from tether.orchestration import engine
from tether.orchestration.admission import default_user
from tether.orchestration.decide import Decided, decide_and_resume
from tether.orchestration.runtime import FINAL_STATUSES, PAUSED, RunResult, Runtime
from tether.orchestration.session import cancel as cancel_session
from tether.orchestration.session import is_session
from tether.orchestration.workflow import Workflow, load
from tether.record import runs as store
from tether.record.db import Database


class Client:
    """Runs of one database, asked for from this process. `policy` replaces the workflows' own for
    the runs it starts or queues; `runtime` (optional) is the Runtime it drives runs through,
    e.g. one configured with a model or secrets (the client then does not close it)."""

    def __init__(self, db: Database, *, policy: Policy | None = None, runtime: Runtime | None = None) -> None:
        self.db = db
        self.policy = policy
        self._runtime = runtime
        self._own = runtime is None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(self.db)
        return self._runtime

    # -- new runs ---------------------------------------------------------------
    def start(
        self, workflow: Workflow[Any, Any] | str, input: Any, *, started_by: str | None = None, tenant: str = "default",
        policy: Policy | None = None, run_id: str | None = None,
    ) -> RunResult:  # fmt: skip
        """Start a run here and drive it until it ends or pauses (`Runtime.start`: admitted and
        routed by the workflow's rollout). `workflow` is a Workflow or a ref to load."""
        return self.runtime.start(_workflow(workflow), input, started_by=started_by, tenant=tenant,
                                  policy=policy or self.policy, run_id=run_id)  # fmt: skip

    def queue(
        self, workflow: Workflow[Any, Any] | str, input: Any, *, started_by: str | None = None, tenant: str = "default",
        policy: Policy | None = None, run_id: str | None = None, engine_client: Any = None,
    ) -> str:  # fmt: skip
        """Queue a run for `tether worker` processes (`engine.enqueue`: admitted and routed now,
        refused now if the workflow is killed or a budget spent); returns its run id."""
        return engine.enqueue(self.db, _workflow(workflow), input, started_by=started_by or default_user(), tenant=tenant,
                              run_id=run_id, client=engine_client, policy=policy or self.policy)  # fmt: skip

    # -- runs under way -----------------------------------------------------------
    def resume(self, run_id: str, *, stranded: bool = False, migrate: bool = False) -> RunResult:
        """Re-drive a paused run here, on the code of the version it started with (`Runtime.resume`).
        `stranded`: also a run left running or interrupted by a process that died."""
        row = self._row(run_id)
        if is_session(row.workflow_ref):
            raise TetherError(f"run {run_id} is a governed session; the agent that opened it continues it (tether.Session.reopen)")
        if row.status in FINAL_STATUSES:
            raise TetherError(f"run {run_id} already ended ({row.status})")
        if row.status not in PAUSED and not stranded:
            raise TetherError(f"run {run_id} is {row.status}; pass --stranded if the process driving it died")
        return self.runtime.resume(run_id, load(row.workflow_ref), stranded=stranded, migrate=migrate)

    def queue_resume(self, run_id: str, *, stranded: bool = False, migrate: bool = False, engine_client: Any = None) -> str:
        """Queue a paused run's next segment for the workers (`engine.enqueue_resume`); returns the segment id."""
        return engine.enqueue_resume(self.db, run_id, stranded=stranded, migrate=migrate, client=engine_client)

    def cancel(self, run_id: str, *, by: str, reason: str | None = None) -> RunResult:
        """Stop a run waiting for approval (or interrupted): its requests are withdrawn and its
        effects undone (`Runtime.cancel`)."""
        row = self._row(run_id)
        if is_session(row.workflow_ref):  # no code to run: its approvals are withdrawn and it ends
            return cancel_session(self.db, run_id, by=by, reason=reason)
        return self.runtime.cancel(run_id, load(row.workflow_ref), by=by, reason=reason)

    def decide(
        self, approval_id: str, *, approve: bool, by: str, reason: str | None = None,
        check: Callable[[ApprovalRequest], None] | None = None,
    ) -> Decided:  # fmt: skip
        """Vote on an approval request; once it is decided its run resumes here (`decide_and_resume`)."""
        return decide_and_resume(self.db, approval_id, approve=approve, by=by, reason=reason, check=check,
                                 runtime=self.runtime)  # fmt: skip

    def get(self, run_id: str) -> RunResult:
        """Where a run stands (RunNotFound for an unknown id)."""
        return self.runtime.get(run_id)

    # -- lifetime -----------------------------------------------------------------
    def close(self) -> None:
        if self._own and self._runtime is not None:
            self._runtime.close()
            self._runtime = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _row(self, run_id: str) -> Any:
        with self.db.read() as conn:
            return store.get_run(conn, run_id)


def _workflow(workflow: Workflow[Any, Any] | str) -> Workflow[Any, Any]:
    return load(workflow) if isinstance(workflow, str) else workflow
