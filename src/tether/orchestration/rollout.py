"""Gradual rollout of workflow versions and the per-workflow kill switch.

A workflow (by name) has a stable version and, during a rollout, a candidate:
another Workflow object with the same name and different code (its version hash
differs). New runs go to the candidate when the stable hash of their routing key
(e.g. the ticket id) falls in its share: 5% -> 25% -> 100% by default. A key keeps
its version as the share grows, because its bucket never changes.

The kill switch refuses new runs at once and halts in-flight runs at their next
step (status `halted`: the manual fallback queue). Every change is a ledger entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from tether.errors import RolloutNotFound, WorkflowError, WorkflowKilled
from tether.orchestration.workflow import Workflow, load
from tether.record import ledger
from tether.record.db import Database, timestamp
from tether.record.tables import rollouts, runs

DEFAULT_STEPS = (5, 25, 100)
DEFAULT_KEY_FIELD = "ticket_id"
BUCKETS = 10_000  # shares are resolved to 0.01%


@dataclass(frozen=True)
class Rollout:
    workflow: str
    stable_ref: str
    candidate_ref: str | None
    percent: int
    steps: list[int]
    key_field: str
    killed: bool
    kill_reason: str | None
    updated_at: str
    updated_by: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bucket(workflow: str, key: str) -> int:
    """The key's stable bucket in 0..9999 (SHA-256, so the same on every machine and run)."""
    h = hashlib.sha256(f"{workflow}\x00{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") % BUCKETS


def get(db: Database, workflow: str) -> Rollout | None:
    with db.read() as conn:
        return _get(conn, workflow)


def _get(conn: sa.Connection, workflow: str) -> Rollout | None:
    row = conn.execute(sa.select(rollouts).where(rollouts.c.workflow == workflow)).first()
    if row is None:
        return None
    return Rollout(row.workflow, row.stable_ref, row.candidate_ref, row.percent, list(row.steps), row.key_field,
                   bool(row.killed), row.kill_reason, row.updated_at, row.updated_by)  # fmt: skip


def all_rollouts(db: Database) -> list[Rollout]:
    with db.read() as conn:
        names = conn.execute(sa.select(rollouts.c.workflow).order_by(rollouts.c.workflow)).scalars().all()
        return [r for n in names if (r := _get(conn, n)) is not None]


def kill_reason(db: Database, workflow: str) -> str | None:
    """Why the workflow is killed, or None. Read at every step of every run: one indexed row."""
    with db.read() as conn:
        row = conn.execute(sa.select(rollouts.c.killed, rollouts.c.kill_reason).where(rollouts.c.workflow == workflow)).first()
    if row is None or not row.killed:
        return None
    return row.kill_reason or "no reason given"


def refuse_if_killed(conn: sa.Connection, workflow: str) -> None:
    row = conn.execute(sa.select(rollouts.c.killed, rollouts.c.kill_reason).where(rollouts.c.workflow == workflow)).first()
    if row is not None and row.killed:
        raise WorkflowKilled(f"workflow {workflow} is killed ({row.kill_reason or 'no reason given'}); new runs are refused")


def route(db: Database, base: Workflow[Any, Any], input: Any) -> Workflow[Any, Any]:
    """The version a new run of `base`'s workflow should use, by its routing key.

    Without a rollout, or when a version is asked for by its own module:attribute, the
    workflow asked for runs. An input without the routing key goes to the stable
    version: a run the split cannot place stays on known code."""
    r = get(db, base.name)
    if r is None or base.ref not in (r.workflow, r.stable_ref):
        return base  # no rollout, or a version asked for by its own module:attribute
    stable = base if r.stable_ref == base.ref else load(r.stable_ref)
    if not r.candidate_ref or r.percent <= 0:
        return stable
    key = input.get(r.key_field) if isinstance(input, dict) else getattr(input, r.key_field, None)
    if key is None or bucket(r.workflow, str(key)) >= r.percent * BUCKETS // 100:
        return stable
    return load(r.candidate_ref)


def _write(conn: sa.Connection, current: Rollout | None, workflow: str, by: str, **values: Any) -> Rollout:
    values = {"updated_at": timestamp(), "updated_by": by, **values}
    if current is None:
        base = {"stable_ref": workflow, "candidate_ref": None, "percent": 0, "steps": list(DEFAULT_STEPS),
                "key_field": DEFAULT_KEY_FIELD, "killed": False, "kill_reason": None}  # fmt: skip
        conn.execute(rollouts.insert().values(workflow=workflow, **{**base, **values}))
    else:
        conn.execute(rollouts.update().where(rollouts.c.workflow == workflow).values(**values))
    out = _get(conn, workflow)
    assert out is not None
    return out


def _named(ref: str, workflow: str) -> Workflow[Any, Any]:
    wf = load(ref)
    if wf.name != workflow:
        raise WorkflowError(f"{ref} is workflow {wf.name!r}, not a version of {workflow!r}")
    wf.check()
    return wf


def start(db: Database, workflow: str, candidate_ref: str, *, by: str, steps: Sequence[int] = DEFAULT_STEPS,
          key_field: str = DEFAULT_KEY_FIELD) -> Rollout:  # fmt: skip
    """Begin sending the first step's share of new runs to `candidate_ref`."""
    steps = list(steps)
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
        raise WorkflowError(f"rollout steps must rise strictly within 1..100 and end at 100, got {steps}")
    if not key_field.strip():
        raise WorkflowError("a rollout needs a routing key field (e.g. ticket_id)")
    with db.read() as conn:
        current = _get(conn, workflow)
    if current is not None and current.candidate_ref and current.percent > 0:
        raise WorkflowError(f"a rollout of {current.candidate_ref} is under way at {current.percent}%; "
                            "promote or roll it back first")  # fmt: skip
    stable = _named(current.stable_ref if current else workflow, workflow)
    candidate = _named(candidate_ref, workflow)
    if candidate.version == stable.version:
        raise WorkflowError(f"{candidate_ref} is the same version ({candidate.version}) as the stable {stable.ref}")
    with db.transaction() as conn:
        r = _write(conn, _get(conn, workflow), workflow, by, stable_ref=stable.ref, candidate_ref=candidate.ref,
                   percent=steps[0], steps=steps, key_field=key_field)  # fmt: skip
        ledger.append(conn, "rollout_started", {"workflow": workflow, "stable": stable.ref, "stable_version": stable.version,
                                                "candidate": candidate.ref, "candidate_version": candidate.version,
                                                "percent": r.percent, "steps": steps, "key_field": key_field, "by": by})  # fmt: skip
    return r


def _under_way(conn: sa.Connection, workflow: str) -> Rollout:
    r = _get(conn, workflow)
    if r is None or not r.candidate_ref:
        raise RolloutNotFound(f"no rollout under way for {workflow}")
    return r


def advance(db: Database, workflow: str, *, by: str) -> Rollout:
    """The next step of the split (5% -> 25% -> 100%)."""
    with db.transaction() as conn:
        r = _under_way(conn, workflow)
        later = [s for s in r.steps if s > r.percent]
        if not later:
            raise WorkflowError(f"{workflow}'s rollout is at {r.percent}% already; promote it to make the candidate stable")
        out = _write(conn, r, workflow, by, percent=later[0])
        ledger.append(conn, "rollout_advanced", {"workflow": workflow, "candidate": r.candidate_ref, "from": r.percent,
                                                 "to": later[0], "by": by})  # fmt: skip
    return out


def promote(db: Database, workflow: str, *, by: str) -> Rollout:
    """The candidate becomes the stable version (only once it takes 100%)."""
    with db.transaction() as conn:
        r = _under_way(conn, workflow)
        if r.percent < 100:
            raise WorkflowError(f"{workflow}'s rollout is at {r.percent}%; advance it to 100% before promoting")
        out = _write(conn, r, workflow, by, stable_ref=r.candidate_ref, candidate_ref=None, percent=0)
        ledger.append(conn, "rollout_promoted", {"workflow": workflow, "stable": r.candidate_ref, "previous": r.stable_ref,
                                                 "by": by})  # fmt: skip
    return out


def rollback(db: Database, workflow: str, *, by: str, reason: str | None = None) -> Rollout:
    """Every new run goes back to the stable version."""
    with db.transaction() as conn:
        r = _under_way(conn, workflow)
        out = _write(conn, r, workflow, by, candidate_ref=None, percent=0)
        ledger.append(conn, "rollout_rolled_back", {"workflow": workflow, "candidate": r.candidate_ref,
                                                    "at_percent": r.percent, "reason": reason, "by": by})  # fmt: skip
    return out


def kill(db: Database, workflow: str, *, by: str, reason: str) -> tuple[Rollout, int]:
    """Refuse new runs now; in-flight ones halt at their next step. Returns the in-flight count."""
    if not reason.strip():
        raise WorkflowError("say why the workflow is killed (--reason)")
    with db.transaction() as conn:
        current = _get(conn, workflow)
        if current is None:
            known = conn.execute(sa.select(runs.c.id).where(runs.c.workflow == workflow).limit(1)).first()
            if known is None:
                load(workflow)  # an unknown name fails here, with the registered ones listed
        r = _write(conn, current, workflow, by, killed=True, kill_reason=reason.strip()[:500])
        in_flight = conn.execute(sa.select(sa.func.count()).select_from(runs).where(
            runs.c.workflow == workflow, runs.c.status.in_(("running", "waiting_approval", "waiting_timer", "interrupted")))).scalar() or 0  # fmt: skip
        ledger.append(conn, "workflow_killed", {"workflow": workflow, "reason": r.kill_reason, "in_flight": in_flight, "by": by})
    return r, in_flight


def restore(db: Database, workflow: str, *, by: str) -> Rollout:
    """Turn the kill switch off: new runs start again. Halted runs stay in the fallback queue."""
    with db.transaction() as conn:
        r = _get(conn, workflow)
        if r is None or not r.killed:
            raise WorkflowError(f"workflow {workflow} is not killed")
        out = _write(conn, r, workflow, by, killed=False, kill_reason=None)
        ledger.append(conn, "workflow_restored", {"workflow": workflow, "by": by})
    return out
