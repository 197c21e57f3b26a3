"""Risk scores for proposed tool calls, from declared features.

Each feature is scaled to 0..1 and weighted; the score combines them like
independent chances of harm (noisy-OR): 1 - prod(1 - w * f). Features:

- the tool's risk tier (declared with @tool(..., risk_tier=...)): low, medium, high, critical
- an amount (the argument named by @tool(..., risk_amount=...)), log-scaled up to $10,000
- a data volume (@tool(..., risk_volume=...)), log-scaled up to 100,000 rows
- the customer's tier (passed by the workflow: standard, premium, metal)
- the model's uncertainty (1 - confidence of the choice behind the call)
- novelty: this tenant has never had this tool executed before

Policies read the score as `risk` (`risk: "> 0.8"`); `tether policy calibrate`
picks the threshold that sends a chosen share of calls to people.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TIERS = {"low": 0.05, "medium": 0.2, "high": 0.5, "critical": 0.8}
CUSTOMER_TIERS = {"standard": 0.0, "premium": 0.5, "metal": 1.0}
WEIGHTS = {"tier": 1.0, "amount": 0.6, "volume": 0.6, "customer": 0.3, "uncertainty": 0.5, "novelty": 0.2}
AMOUNT_CAP = 10_000.0
VOLUME_CAP = 100_000.0


@dataclass(frozen=True)
class RiskFeatures:
    tier: str = "medium"
    amount: float | None = None
    volume: float | None = None
    customer_tier: str | None = None
    confidence: float | None = None
    novel: bool = False

    def scaled(self) -> dict[str, float]:
        def log_scale(v: float | None, cap: float) -> float:
            return 0.0 if v is None or v <= 0 else min(1.0, math.log10(1 + v) / math.log10(1 + cap))

        return {
            "tier": TIERS.get(self.tier, TIERS["medium"]),
            "amount": log_scale(self.amount, AMOUNT_CAP),
            "volume": log_scale(self.volume, VOLUME_CAP),
            "customer": CUSTOMER_TIERS.get(self.customer_tier or "standard", 0.0),
            "uncertainty": 0.0 if self.confidence is None else max(0.0, min(1.0, 1 - self.confidence)),
            "novelty": 1.0 if self.novel else 0.0,
        }


def score(features: RiskFeatures) -> float:
    safe = 1.0
    for name, value in features.scaled().items():
        safe *= 1 - WEIGHTS[name] * value
    return round(1 - safe, 4)


def features_for(tool: Any, args: Mapping[str, Any], context: Mapping[str, Any], novel: bool) -> RiskFeatures:
    def number(name: str | None) -> float | None:
        v = args.get(name) if name else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    return RiskFeatures(
        tier=tool.risk_tier, amount=number(tool.risk_amount), volume=number(tool.risk_volume),
        customer_tier=context.get("customer_tier"), confidence=context.get("confidence"), novel=novel,
    )  # fmt: skip


def calibrate(scores: list[float], share: float) -> tuple[float, float]:
    """(threshold, share of `scores` at or above it): the lowest threshold that sends at most `share`."""
    if not scores:
        raise ValueError("no recorded risk scores to calibrate on")
    if not 0 < share < 1:
        raise ValueError("the share sent to people must be between 0 and 1")
    ranked = sorted(scores, reverse=True)
    allowed = int(math.floor(share * len(ranked)))
    if allowed == 0:
        threshold = ranked[0] + 1e-4
    else:
        threshold = ranked[allowed - 1]
        while sum(s >= threshold for s in ranked) > allowed and threshold <= ranked[0]:
            threshold = min(s for s in ranked if s > threshold) if any(s > threshold for s in ranked) else ranked[0] + 1e-4
    sent = sum(s >= threshold for s in ranked) / len(ranked)
    return round(threshold, 4), sent
