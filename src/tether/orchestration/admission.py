"""Admission: the one path every new run goes through before anything of it is written.

`admit()` is called by every entry point that starts or queues a run: `tether run` (with and
without --queue, through the Client), POST /api/runs, `engine.enqueue` and `Runtime.start`. It

1. parses the input with the workflow's input model (WorkflowError naming the field),
2. routes it through the workflow's rollout (`rollout.route`): the version the run uses,
3. resolves the policy (the one given, else the chosen version's own) and lints it against
   that version's tools (PolicyError; cached per (version, policy hash)),
4. normalises who starts the run (`principal`), and
5. refuses a killed workflow (WorkflowKilled) or a spent tenant/feature budget (BudgetExceeded).

Nothing is written by any of these steps. Step 5 is a read that can go stale the moment it
returns, so a caller that writes the run does it again in the transaction that inserts the run:
`Runtime.start_admitted` calls `Admission.refuse(conn)` there, which makes the check and the
insert one transaction (a kill switch thrown, or a budget spent, after the check cannot slip a
run in). Such a caller passes `refuse_now=False` to skip the early read; a caller that only
queues the run (`engine.enqueue`) checks now, so a refused run is refused to the person queueing
it instead of silently by a worker later; the worker checks again when it writes the run.

The version is chosen once: a queued run is queued with the version the rollout picked, and the
worker starts exactly that version (`route=False`), whatever the split says by then.
"""

from __future__ import annotations

import getpass
from collections.abc import MutableSet
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tether.errors import PolicyError
from tether.guardrails.approvals import principal
from tether.guardrails.loading import Policy
from tether.models import budgets
from tether.orchestration import rollout
from tether.orchestration.workflow import Workflow
from tether.record.db import Database

_LINTED: set[tuple[str, str]] = set()  # (workflow version, policy hash) pairs that passed the lint


def default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


@dataclass(frozen=True)
class Admission:
    """A run admitted to start (or be queued): what it is to be written with."""

    workflow: Workflow[Any, Any]  # the version the run uses: the rollout's pick (the one asked for without a rollout)
    requested: Workflow[Any, Any]  # the version asked for
    input: Any  # parsed: an instance of the workflow's input model
    plain_input: dict[str, Any]  # its JSON form, as stored with the run and queued
    policy: Policy
    tenant: str
    started_by: str

    @property
    def routed(self) -> bool:
        """Whether the rollout sent the run to another version than the one asked for."""
        return self.workflow is not self.requested

    def refuse(self, conn: sa.Connection) -> None:
        """Raise WorkflowKilled or BudgetExceeded if the run may not start; call it in the
        transaction that writes the run, so nothing changes between the check and the insert."""
        refuse(conn, self.workflow.name, self.tenant)


def refuse(conn: sa.Connection, workflow: str, tenant: str) -> None:
    """Refuse a new run of `workflow` for `tenant`: its kill switch is on (WorkflowKilled), or a
    budget of the tenant or of the workflow (the feature) is spent (BudgetExceeded)."""
    rollout.refuse_if_killed(conn, workflow)
    budgets.check(conn, tenant, workflow)


def parse(workflow: Workflow[Any, Any], input: Any) -> Any:
    """The workflow's definition checked and `input` parsed by its input model (no database needed:
    the CLI calls it before it opens one, so bad input fails first)."""
    workflow.check()
    return workflow.parse_input(input)


def lint(workflow: Workflow[Any, Any], policy: Policy, cache: MutableSet[tuple[str, str]] | None = None) -> None:
    """Refuse a policy with rules that would silently never be checked for this workflow."""
    cache = _LINTED if cache is None else cache
    key = (workflow.version, policy.hash)
    if key not in cache:
        errors, _ = policy.lint({t.name: t.schema for t in workflow.tools})
        if errors:
            raise PolicyError(f"{errors[0]} (the rule would never be checked; fix the argument name)")
        cache.add(key)


def admit(
    db: Database,
    workflow: Workflow[Any, Any],
    input: Any,
    *,
    policy: Policy | None = None,
    tenant: str = "default",
    started_by: str | None = None,
    route: bool = True,
    refuse_now: bool = True,
    linted: MutableSet[tuple[str, str]] | None = None,
) -> Admission:
    """Admit a new run of `workflow` with `input`, or raise why not; writes nothing.

    `policy` replaces the chosen version's own. `route=False` keeps `workflow` whatever the
    rollout says (a queued run, routed when it was queued). `refuse_now=False` leaves the kill
    switch and budgets to the caller's insert transaction (`Admission.refuse`). `linted` is
    the cache of lints passed (default: one per process)."""
    parsed = parse(workflow, input)
    chosen = workflow
    if route:
        chosen = rollout.route(db, workflow, input if isinstance(input, dict) else parsed)
        if chosen is not workflow:  # another version: its own definition and input model
            parsed = parse(chosen, input)
    policy = policy or chosen.policy()
    lint(chosen, policy, linted)
    admitted = Admission(
        workflow=chosen, requested=workflow, input=parsed, plain_input=parsed.model_dump(mode="json"), policy=policy,
        tenant=tenant, started_by=principal(started_by or default_user()),
    )  # fmt: skip
    if refuse_now:
        with db.read() as conn:
            admitted.refuse(conn)
    return admitted
