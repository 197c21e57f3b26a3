"""Reading and writing runs, their journals and stored policy versions."""

from __future__ import annotations

import difflib
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tether.errors import RunNotFound
from tether.record.db import LEDGER_LOCK, pg_lock, timestamp
from tether.record.tables import policies, run_events, runs
from tether.types import RunStatus


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    step: int
    state: str
    call_id: str | None
    data: dict[str, Any]
    created_at: str = ""


def store_policy(conn: sa.Connection, policy_hash: str, source: str, content: str) -> dict[str, Any] | None:
    """Keep a policy version; for a version not seen before, the body of its `policy_loaded`
    ledger entry: its hash and the diff from the last version loaded from the same source."""
    pg_lock(conn, LEDGER_LOCK)  # two first runs under a new policy would both insert it
    exists = conn.execute(sa.select(policies.c.hash).where(policies.c.hash == policy_hash)).first()
    if exists:
        return None
    previous = conn.execute(
        sa.select(policies.c.hash, policies.c.content).where(policies.c.source == source)
        .order_by(policies.c.created_at.desc()).limit(1)
    ).first()  # fmt: skip
    conn.execute(policies.insert().values(hash=policy_hash, source=source, content=content, created_at=timestamp()))
    diff = "".join(difflib.unified_diff(previous.content.splitlines(keepends=True) if previous else [],
                                        content.splitlines(keepends=True), f"{source}@{previous.hash[:12]}" if previous else "/dev/null",
                                        f"{source}@{policy_hash[:12]}"))  # fmt: skip
    return {"policy_hash": policy_hash, "source": source, "previous_hash": previous.hash if previous else None,
            "diff": diff[:20000]}


def policy_text(conn: sa.Connection, policy_hash: str) -> tuple[str, str]:
    row = conn.execute(sa.select(policies.c.source, policies.c.content).where(policies.c.hash == policy_hash)).first()
    if row is None:
        raise RunNotFound(f"policy version {policy_hash[:12]} is not stored in this database")
    return row.source, row.content


# Final statuses of a run (the runtime also uses running, waiting_approval, interrupted).
# Plain strings (`.value`), never the enum members: psycopg writes an Enum by its *name*.
FAILED_STATUSES = tuple(s.value for s in (RunStatus.FAILED, RunStatus.BUDGET_EXHAUSTED, RunStatus.LOOP_DETECTED,
                                          RunStatus.DEADLINE_EXCEEDED, RunStatus.COST_CEILING))  # fmt: skip
CANCELLED = RunStatus.CANCELLED.value  # stopped by a person; its effects compensated
# A run stopped by its workflow's kill switch: the manual fallback queue, for a person to finish.
HALTED = RunStatus.HALTED.value
FINAL_STATUSES = (RunStatus.COMPLETED.value, RunStatus.ESCALATED.value, CANCELLED, HALTED, *FAILED_STATUSES)

# Bump when the meaning of recorded events changes; replay refuses other formats.
RECORD_FORMAT = 1


class Superseded(BaseException):
    """Raised by a journal write when another driver has claimed the run. Not an Exception:
    state code's `except Exception` must not swallow it and carry on driving."""


def new_driver(label: str | None = None) -> str:
    """A driver id for one segment of driving a run: `label#token`. The label says who (an
    engine workflow, a process); the token makes each claim distinct, even by the same label."""
    return f"{label or process_label()}#{secrets.token_hex(6)}"


def process_label() -> str:
    return f"proc:{socket.gethostname()[:60]}:{os.getpid()}"


def driver_label(driver: str | None) -> str | None:
    return driver.rsplit("#", 1)[0] if driver else None


def insert_run(conn: sa.Connection, **values: Any) -> None:
    now = timestamp()
    conn.execute(runs.insert().values(created_at=now, updated_at=now, steps=0, record_format=RECORD_FORMAT, **values))


def update_run(conn: sa.Connection, run_id: str, **values: Any) -> None:
    conn.execute(runs.update().where(runs.c.id == run_id).values(updated_at=timestamp(), **values))


def claim_run(
    conn: sa.Connection, run_id: str, from_status: str, to_status: str, *, driver: str | None = None,
    from_driver: str | None | bool = False,
) -> bool:  # fmt: skip
    """Move a run between statuses only if it is still in `from_status` (one winner), making
    `driver` the only writer of its journal. With `from_driver` (a driver id, or None for none)
    the claim also requires the run to still be held by that driver."""
    cond = [runs.c.id == run_id, runs.c.status == from_status]
    if from_driver is not False:
        cond.append(runs.c.driver.is_(None) if from_driver is None else runs.c.driver == from_driver)
    res = conn.execute(runs.update().where(*cond).values(status=to_status, driver=driver, updated_at=timestamp()))
    return res.rowcount == 1


def update_held_run(conn: sa.Connection, run_id: str, driver: str, **values: Any) -> None:
    """Update a run only while `driver` holds it; otherwise raise Superseded (the
    transaction then rolls back, so the driver that lost the run writes nothing)."""
    res = conn.execute(runs.update().where(runs.c.id == run_id, runs.c.driver == driver)
                       .values(updated_at=timestamp(), **values))  # fmt: skip
    if res.rowcount != 1:
        holder = conn.execute(sa.select(runs.c.driver).where(runs.c.id == run_id)).scalar()
        raise Superseded(f"run {run_id} is now held by {holder or 'no driver'}, not {driver}")


def get_run(conn: sa.Connection, run_id: str) -> sa.Row[Any]:
    row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
    if row is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    return row


def list_runs(
    conn: sa.Connection,
    *,
    status: str | None = None,
    workflow: str | None = None,
    limit: int | None = None,
) -> Sequence[sa.Row[Any]]:
    q = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id)
    if status:
        q = q.where(runs.c.status == status)
    if workflow:
        q = q.where(runs.c.workflow == workflow)
    if limit:
        q = q.limit(limit)
    return conn.execute(q).all()


def next_event_seq(conn: sa.Connection, run_id: str) -> int:
    n = conn.execute(sa.select(sa.func.max(run_events.c.seq)).where(run_events.c.run_id == run_id)).scalar()
    return (n or 0) + 1


def append_events(conn: sa.Connection, run_id: str, events: Iterable[Event]) -> None:
    rows = [
        {
            "run_id": run_id,
            "seq": e.seq,
            "kind": e.kind,
            "step": e.step,
            "state": e.state,
            "call_id": e.call_id,
            "data": e.data,
            "created_at": e.created_at or timestamp(),
        }
        for e in events
    ]
    if rows:
        conn.execute(run_events.insert(), rows)


def load_events(conn: sa.Connection, run_id: str) -> list[Event]:
    q = sa.select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.seq)
    return [Event(r.seq, r.kind, r.step, r.state, r.call_id, r.data, r.created_at) for r in conn.execute(q)]
