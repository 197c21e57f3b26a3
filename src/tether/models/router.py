"""The router: the cheapest model first, a bigger one only when it is unsure.

Tiers are tried in order. A tier's answer is taken when it is valid and its
confidence reaches the threshold; a refused answer (bad schema, failed call) or
a low confidence escalates to the next tier. When the largest is also unsure its
answer comes back marked `human` (confidence below the threshold), so the
workflow's own threshold sends the case to a person.

Every choice records the tiers it went through (`Choice.calls`), so evals can
report per-route accuracy and the share escalated (`route_report`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from tether.models.base import Choice, DecisionRequest, ModelCall, ModelError, Usage


class Router:
    """The cheapest model first; a low confidence, a schema failure or an error escalates to the next."""

    def __init__(self, tiers: Sequence[Any], *, threshold: float | Sequence[float] = 0.6, name: str | None = None) -> None:
        if not tiers:
            raise ValueError("a router needs at least one model")
        self.tiers = list(tiers)
        t = [threshold] * len(self.tiers) if isinstance(threshold, (int, float)) else list(threshold)
        if len(t) != len(self.tiers) or not all(0 <= x <= 1 for x in t):
            raise ValueError("thresholds: one per tier, each in 0..1")
        self.thresholds = t
        self.name = name or "router:" + ">".join(m.name for m in self.tiers)

    def choose(self, request: DecisionRequest) -> Choice:
        calls: list[ModelCall] = []
        last: Choice | None = None
        for model, threshold in zip(self.tiers, self.thresholds, strict=True):
            try:
                choice = model.choose(request)
            except (ModelError, ValueError) as e:  # a tier that cannot answer this request escalates
                calls.append(ModelCall(model=model.name, error=f"{type(e).__name__}: {e}"[:300]))
                continue
            calls.extend(choice.model_calls)
            if choice.ok and choice.option not in request.options:
                choice = choice.model_copy(update={"error": f"chose {choice.option!r}, not an option"})
            last = choice
            if choice.ok and choice.confidence >= threshold:
                return choice.model_copy(update={"calls": calls, "usage": _sum(calls)})
        if last is None or not last.ok:
            why = last.error if last is not None else "every tier failed"
            return Choice(point=request.point, option=None, confidence=0.0, model=self.tiers[-1].name,
                          calls=calls, usage=_sum(calls), error=f"no tier gave a valid answer: {why}")  # fmt: skip
        # The largest is unsure too: its answer, with its low confidence, for the workflow to hand to a person.
        return last.model_copy(update={"calls": calls, "usage": _sum(calls)})

    def estimate(self, request: DecisionRequest) -> list[ModelCall]:
        from tether.models.meter import estimate

        return [c for m in self.tiers for c in estimate(m, request)]  # worst case: every tier is asked


def _sum(calls: list[ModelCall]) -> Usage:
    return Usage(input_tokens=sum(c.usage.input_tokens for c in calls), output_tokens=sum(c.usage.output_tokens for c in calls))


def route_of(choice: Choice, tiers: Sequence[str], threshold: float) -> str:
    """Where a choice ended: the tier that answered, or `human` when the last was unsure or failed."""
    if not choice.ok or choice.confidence < threshold:
        return "human"
    return choice.model if choice.model in tiers else tiers[-1]


def route_report(choices: Iterable[Choice], expected: Iterable[str | None], *, threshold: float) -> dict[str, Any]:
    """Per route: cases, accuracy of the answers it kept; and the share escalated past the first tier."""
    cases: Counter[str] = Counter()
    right: Counter[str] = Counter()
    escalated = 0
    n = 0
    tiers: dict[str, None] = {}
    pairs = list(zip(choices, expected, strict=True))
    for c, _ in pairs:
        for call in c.model_calls:
            tiers.setdefault(call.model, None)
    names = list(tiers)
    by_route: dict[str, list[bool]] = defaultdict(list)
    for c, want in pairs:
        n += 1
        route = route_of(c, names, threshold)
        cases[route] += 1
        if len({call.model for call in c.model_calls}) > 1:
            escalated += 1
        if want is not None:
            ok = c.option == want
            by_route[route].append(ok)
            right[route] += ok
    return {
        "cases": n,
        "escalation_share": round(escalated / n, 4) if n else 0.0,
        "human_share": round(cases["human"] / n, 4) if n else 0.0,
        "routes": {r: {"cases": cases[r], "share": round(cases[r] / n, 4),
                       "accuracy": round(right[r] / len(by_route[r]), 4) if by_route[r] else None}
                   for r in cases},
    }  # fmt: skip
