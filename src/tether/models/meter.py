"""The cost meter: what each model call cost, per step and per run; the run's ceiling.

Tokens come from the providers' usage; prices from the versioned price table.
Before each model call the meter estimates its worst case (the model's own
`estimate`, else about four characters a token and the model's output cap); if
that would take the run past its ceiling the run ends with `cost_ceiling`
and the call is not made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tether.errors import TetherError
from tether.models.base import Choice, DecisionRequest, ModelCall, Usage
from tether.models.prices import PriceTable

COST_CEILING = "cost_ceiling"


def env_ceiling() -> float | None:
    """$TETHER_COST_CEILING_USD, the per-run ceiling when neither runtime nor workflow sets one."""
    raw = os.environ.get("TETHER_COST_CEILING_USD", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise TetherError(f"$TETHER_COST_CEILING_USD must be a number of USD, got {raw!r}") from None
    if not value >= 0:
        raise TetherError(f"$TETHER_COST_CEILING_USD must be >= 0, got {raw!r}")
    return value


def estimate(model: Any, request: DecisionRequest) -> list[ModelCall]:
    """The calls `model` would make for `request`, at worst."""
    fn = getattr(model, "estimate", None)
    if callable(fn):
        return list(fn(request))
    text = json.dumps([request.instructions, request.observation, request.options, request.tools], default=str)
    out = int(getattr(model, "max_output_tokens", 256))
    return [ModelCall(model=getattr(model, "name", "unknown"), usage=Usage(input_tokens=len(text) // 4 + 50, output_tokens=out))]


@dataclass
class RunMeter:
    """One run's spend. `spent` starts from what its journal already recorded (a resumed run)."""

    prices: PriceTable
    ceiling_usd: float | None = None
    spent: float = 0.0
    tokens: int = 0

    last_estimate: float | None = None  # the worst case the last check allowed, recorded with the choice

    def check(self, model: Any, request: DecisionRequest) -> str | None:
        """Why the next call must not be made (it would pass the ceiling), or None."""
        if self.ceiling_usd is None:
            return None
        worst = sum(self.prices.cost(c.model, c.usage)[0] for c in estimate(model, request))
        self.last_estimate = worst
        return self.over(request.point, worst)

    def over(self, point: str, worst: float) -> str | None:
        if self.ceiling_usd is not None and self.spent + worst > self.ceiling_usd:
            return (f"the next model call ({point!r}, up to ${worst:.6f}) would take the run past its cost ceiling "
                    f"of ${self.ceiling_usd:.4f} (spent ${self.spent:.6f})")  # fmt: skip
        return None

    def charge(self, choice: Choice) -> dict[str, Any]:
        """Price the calls behind a choice; returns the summary recorded with the choice."""
        total = 0.0
        calls = []
        for c in choice.model_calls:
            cost, version = (0.0, self.prices.cost(c.model, c.usage)[1]) if c.cached else self.prices.cost(c.model, c.usage)
            total += cost
            calls.append({"model": c.model, "input_tokens": c.usage.input_tokens, "output_tokens": c.usage.output_tokens,
                          "cost_usd": round(cost, 8), "price_version": version, "cached": c.cached})  # fmt: skip
        self.spent += total
        self.tokens += sum(c["input_tokens"] + c["output_tokens"] for c in calls)
        out: dict[str, Any] = {"cost_usd": round(total, 8), "calls": calls}
        if self.last_estimate is not None:  # so replay checks this call against the ceiling as it was checked
            out["estimate_usd"] = round(self.last_estimate, 8)
            self.last_estimate = None
        return out


def recorded_spend(events: Iterable[Any]) -> tuple[float, int]:
    """(USD, tokens) already charged to a run, from its journal's choice events."""
    usd, tokens = 0.0, 0
    for e in events:
        if e.kind == "choice" and "cost" in e.data:
            usd += e.data["cost"]["cost_usd"]
            tokens += sum(c["input_tokens"] + c["output_tokens"] for c in e.data["cost"]["calls"])
    return usd, tokens
