"""Retention: how long each store keeps what it holds, and the purge that enforces it.

- prompts (what models were asked and answered, redacted): 7 to 30 days, default 30
- the journal (raw replay artifacts of finished runs, the only store that keeps
  values unredacted): default 30 days; a purged run can no longer be replayed
- local traces (spans): default 30 days
- the observation log (what agents saw, redacted): default 30 days
- the answer cache: entries past their TTL (`expires_at`) go; live ones stay
- a tenant's memory (vector store items and their pgvector rows), observations and
  answer cache entries: all of them, when the tenant is named to be forgotten
  (`--forget-tenant`, e.g. a customer who left); its runs, spend and ledger stay
- model call costs (`model_calls`) keep no prompt or answer text (model, tokens,
  price), are what budgets and spend reports sum, and are not purged; the text lives
  in the prompt store above
- the action ledger: years (default 7). Purge never deletes a ledger entry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from tether.errors import TetherError
from tether.record.db import Database
from tether.record.runs import FINAL_STATUSES
from tether.record.tables import (
    answer_cache,
    memory_items,
    observations,
    prompts,
    run_events,
    runs,
    spans,
)

PROMPT_DAYS = (7, 30)


@dataclass(frozen=True)
class Retention:
    prompt_days: int = 30
    journal_days: int = 30
    trace_days: int = 30
    observation_days: int = 30
    forget_tenants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        lo, hi = PROMPT_DAYS
        if not lo <= self.prompt_days <= hi:
            raise TetherError(f"prompt retention must be {lo} to {hi} days, got {self.prompt_days}")
        if any(not t.strip() for t in self.forget_tenants):
            raise TetherError("--forget-tenant needs a tenant name, got an empty one")
        for name in ("journal_days", "trace_days", "observation_days"):
            if getattr(self, name) < 1:
                raise TetherError(f"{name.replace('_', ' ')} must be at least 1 day")


def _cutoff(now: dt.datetime, days: int) -> str:
    return (now - dt.timedelta(days=days)).isoformat(timespec="microseconds")


def purge(db: Database, policy: Retention, *, now: dt.datetime | None = None, dry_run: bool = False) -> dict[str, int]:
    """Delete what is past its retention, in one transaction. Returns rows per store."""
    now = now or dt.datetime.now(dt.UTC)
    old_prompts = prompts.c.created_at < _cutoff(now, policy.prompt_days)
    # Journals only of runs that ended before the cutoff: a paused run keeps its journal.
    ended = sa.select(runs.c.id).where(runs.c.status.in_(FINAL_STATUSES), runs.c.updated_at < _cutoff(now, policy.journal_days))
    old_events = run_events.c.run_id.in_(ended)
    old_spans = spans.c.end_ns < int((now - dt.timedelta(days=policy.trace_days)).timestamp() * 1e9)
    gone = list(policy.forget_tenants)
    old_obs = sa.or_(observations.c.created_at < _cutoff(now, policy.observation_days), observations.c.tenant.in_(gone))
    old_answers = sa.or_(answer_cache.c.expires_at <= now.isoformat(), answer_cache.c.tenant.in_(gone))
    counts = {}
    with db.transaction() as conn:
        for name, table, cond in (("prompts", prompts, old_prompts), ("journal_events", run_events, old_events),
                                  ("spans", spans, old_spans), ("observations", observations, old_obs),
                                  ("answer_cache", answer_cache, old_answers),
                                  ("memory_items", memory_items, memory_items.c.tenant.in_(gone))):  # fmt: skip
            counts[name] = conn.execute(sa.select(sa.func.count()).select_from(table).where(cond)).scalar() or 0
            if not dry_run:
                conn.execute(table.delete().where(cond))
        if not dry_run and counts["journal_events"]:
            conn.execute(runs.update().where(runs.c.id.in_(ended), runs.c.record_format > 0).values(record_format=0))
    return counts
