"""Context compression: past a token threshold, older history becomes a summary.

The summary is extractive and offline: each older step keeps its tool, arguments
and status; what it returned (customer records, search hits, error text) is
dropped, since that is where the tokens are. The last `keep_last` steps stay raw.
A model-written summary can be passed as `summarize`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from tether.models.providers import estimate_tokens


def tokens(value: Any) -> int:
    return estimate_tokens(json.dumps(value, default=str))


def summarize_steps(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    calls = [{"tool": s.get("tool"), "args": s.get("args", {}), "status": s.get("status")} for s in steps]
    text = "; ".join(f"{c['tool']} {c['status']}" for c in calls)
    return {"summary": f"{len(calls)} earlier step(s): {text}", "calls": calls}


def compress(history: Sequence[dict[str, Any]], *, max_tokens: int, keep_last: int = 2,
             summarize: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] = summarize_steps) -> list[dict[str, Any]]:  # fmt: skip
    """`history` as is while it fits in `max_tokens`; else a summary of all but the last `keep_last` steps, then those."""
    history = list(history)
    if tokens(history) <= max_tokens or len(history) <= keep_last:
        return history
    cut = len(history) - keep_last
    return [summarize(history[:cut]), *history[cut:]]
