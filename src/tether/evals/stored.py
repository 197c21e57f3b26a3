"""Eval results kept in the database, for the dashboard and the API."""

from __future__ import annotations

from typing import Any

from tether.record.db import Database, timestamp
from tether.record.tables import eval_results


def save_result(db: Database, result: dict[str, Any]) -> int:
    """Keep a result's figures (not its per-case rows, which stay in --out files). Returns its id."""
    summary = {k: v for k, v in result.items() if k != "results"}
    with db.transaction() as conn:
        res = conn.execute(eval_results.insert().values(source=result.get("source") or "eval", created_at=timestamp(),
                                                        summary=summary))  # fmt: skip
        return int(res.inserted_primary_key[0])
