"""Budgets per tenant, per feature (a workflow) and per action (a tool), daily and
monthly, and spend reports.

A tenant or feature budget is checked when a run starts: once the period's spend
reaches the limit, new runs in that scope are refused with an error that says which
budget, how much was spent and when it resets. Runs already going are bounded by
their own cost ceiling, not by the budget.

An action budget bounds what is spent on the way to one tool. Spend attributed to
an action is the model calls of the step that proposed it (each priced call is
tagged with the first tool its step proposes after it: `model_calls.action`).
Once it is spent, a proposed call to that tool is denied by the tool proxy, like
a rate limit: the call and its denial, naming the budget, the spend, the limit
and the reset, are in the journal and the ledger, and the run goes on, so the
workflow can take another path (a human, a cheaper action). Ending the whole run
would throw away work that other actions' budgets still allow.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import sqlalchemy as sa

from tether.errors import TetherError
from tether.record.db import timestamp
from tether.record.tables import budgets, model_calls, runs

_TOOL_NAME = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*")
_COLUMNS = {"tenant": model_calls.c.tenant, "feature": model_calls.c.workflow, "action": model_calls.c.action}

SCOPES = ("tenant", "feature", "action")
PERIODS = ("daily", "monthly")


class BudgetExceeded(TetherError):
    """A tenant, feature or action budget is spent: the run or call is refused."""


def set_budget(conn: sa.Connection, scope: str, name: str, period: str, limit_usd: float) -> None:
    if scope not in SCOPES:
        raise TetherError(f"budget scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if period not in PERIODS:
        raise TetherError(f"budget period must be one of {', '.join(PERIODS)}, got {period!r}")
    if not name:
        raise TetherError("a budget needs the name of its tenant, feature or action")
    if scope == "action" and not _TOOL_NAME.fullmatch(name):
        raise TetherError(f"an action budget names a tool like 'payments.refund', got {name!r}")
    if not (limit_usd >= 0):
        raise TetherError(f"a budget limit must be >= 0 USD, got {limit_usd}")
    key = {"scope": scope, "name": name, "period": period}
    _on_commit(conn)
    conn.execute(budgets.delete().filter_by(**key))
    conn.execute(budgets.insert().values(**key, limit_usd=float(limit_usd), created_at=timestamp()))


def remove_budget(conn: sa.Connection, scope: str, name: str, period: str) -> bool:
    _on_commit(conn)
    return conn.execute(budgets.delete().filter_by(scope=scope, name=name, period=period)).rowcount > 0


def list_budgets(conn: sa.Connection, today: dt.date | None = None) -> list[dict[str, Any]]:
    out = []
    for b in conn.execute(sa.select(budgets).order_by(budgets.c.scope, budgets.c.name, budgets.c.period)):
        spent = _spent(conn, b.scope, b.name, b.period, today)
        out.append({"scope": b.scope, "name": b.name, "period": b.period, "limit_usd": b.limit_usd,
                    "spent_usd": round(spent, 6), "left_usd": round(max(0.0, b.limit_usd - spent), 6)})  # fmt: skip
    return out


def _window(period: str, today: dt.date | None) -> tuple[sa.ColumnElement[bool], str]:
    today = today or dt.datetime.now(dt.UTC).date()
    if period == "daily":
        return model_calls.c.day == today.isoformat(), (today + dt.timedelta(days=1)).isoformat()
    first_next = (today.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return model_calls.c.day.like(today.strftime("%Y-%m") + "-%"), first_next.isoformat()


def _spent(conn: sa.Connection, scope: str, name: str, period: str, today: dt.date | None) -> float:
    where, _ = _window(period, today)
    col = _COLUMNS[scope]
    return float(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(model_calls.c.cost_usd), 0.0)).where(where, col == name)).scalar() or 0.0)


def check(conn: sa.Connection, tenant: str, feature: str, today: dt.date | None = None) -> None:
    """Refuse a new run when a budget of its tenant or feature is spent."""
    rows = conn.execute(sa.select(budgets).where(
        sa.or_(sa.and_(budgets.c.scope == "tenant", budgets.c.name == tenant),
               sa.and_(budgets.c.scope == "feature", budgets.c.name == feature)))).all()  # fmt: skip
    for b in rows:
        spent = _spent(conn, b.scope, b.name, b.period, today)
        if spent >= b.limit_usd:
            _, resets = _window(b.period, today)
            raise BudgetExceeded(
                f"{b.period} budget of {b.scope} {b.name!r} is spent (${spent:.4f} of ${b.limit_usd:.4f}); "
                f"new runs are refused until {resets} UTC"
            )


def refuse_action(conn: sa.Connection, tool: str, today: dt.date | None = None) -> str | None:
    """Why a call to `tool` must be denied (an action budget of it is spent), or None."""
    for b in conn.execute(sa.select(budgets).where(budgets.c.scope == "action", budgets.c.name == tool)).all():
        spent = _spent(conn, b.scope, b.name, b.period, today)
        if spent >= b.limit_usd:
            _, resets = _window(b.period, today)
            return (f"{b.period} budget of action {b.name!r} is spent (${spent:.4f} of ${b.limit_usd:.4f}); "
                    f"calls to it are refused until {resets} UTC")  # fmt: skip
    return None


_changed = [0]  # budgets set or removed in this process: they apply at once here


def _on_commit(conn: sa.Connection) -> None:
    # Counted once the change is visible: a check between the write and its commit would
    # otherwise read the old names and take the change as seen.
    sa.event.listen(conn, "commit", lambda _c: _changed.__setitem__(0, _changed[0] + 1), once=True)


class ActionBudgets:
    """What the tool proxy asks before a call: is an action budget of this tool spent?

    Which tools have an action budget is read at most once per `refresh_s` (1 s), so a
    call to a tool without one costs no query; a budget set by another process applies
    within that, one set in this process at once."""

    def __init__(self, db: Any, refresh_s: float = 1.0) -> None:
        self.db = db
        self.refresh_s = refresh_s
        self._named: frozenset[str] = frozenset()
        self._read_at = -float("inf")
        self._seen = -1

    def refuse(self, tool: str) -> str | None:
        import time

        now = time.monotonic()
        if now - self._read_at >= self.refresh_s or self._seen != _changed[0]:
            self._seen = _changed[0]
            with self.db.read() as conn:
                self._named = frozenset(conn.execute(sa.select(budgets.c.name).where(budgets.c.scope == "action")).scalars())
            self._read_at = now
        if tool not in self._named:
            return None
        with self.db.read() as conn:
            return refuse_action(conn, tool)


def spend_report(conn: sa.Connection, *, since: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    """Spend grouped by tenant, workflow, model and day; plus totals and cache hits."""
    conds = []
    if since:
        conds.append(model_calls.c.day >= since)
    if tenant:
        conds.append(model_calls.c.tenant == tenant)
    mc = model_calls.c
    tok = mc.input_tokens + mc.output_tokens

    def group(col: Any) -> list[dict[str, Any]]:
        q = (sa.select(col, sa.func.count(), sa.func.sum(mc.cost_usd), sa.func.sum(tok))
             .where(*conds).group_by(col).order_by(sa.func.sum(mc.cost_usd).desc(), col))  # fmt: skip
        return [{"name": k, "calls": n, "cost_usd": round(float(c or 0), 6), "tokens": int(t or 0)} for k, n, c, t in conn.execute(q)]

    total = conn.execute(sa.select(sa.func.count(), sa.func.sum(mc.cost_usd), sa.func.sum(tok),
                                   sa.func.sum(sa.case((mc.cached, 1), else_=0)),
                                   sa.func.sum(sa.case((mc.price_version.is_(None), 1), else_=0)),
                                   sa.func.count(sa.distinct(mc.run_id))).where(*conds)).one()  # fmt: skip
    run_conds = [runs.c.tenant == tenant] if tenant else []
    if since:
        run_conds.append(runs.c.created_at >= since)
    completed = conn.execute(sa.select(sa.func.count(), sa.func.sum(runs.c.cost_usd)).where(runs.c.status == "completed", *run_conds)).one()
    calls = int(total[0] or 0)
    return {
        "total_usd": round(float(total[1] or 0), 6),
        "tokens": int(total[2] or 0),
        "model_calls": calls,
        "runs_metered": int(total[5] or 0),
        "cache_hits": int(total[3] or 0),
        "cache_hit_rate": round(int(total[3] or 0) / calls, 4) if calls else 0.0,
        "unpriced_calls": int(total[4] or 0),
        "completed_runs": int(completed[0] or 0),
        "cost_per_completed_run_usd": round(float(completed[1] or 0) / completed[0], 6) if completed[0] else None,
        "by_tenant": group(mc.tenant),
        "by_workflow": group(mc.workflow),
        "by_model": group(mc.model),
        "by_day": group(mc.day),
        "by_action": group(mc.action),  # name None: model calls no proposed tool followed
    }
