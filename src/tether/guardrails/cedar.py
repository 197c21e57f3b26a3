"""Cedar as a second policy language, deciding through the same interface as the YAML engine.

    @id("refund_requires_approval") @action("require_human_approval")
    forbid(principal, action == Action::"call", resource == Tool::"payments.refund")
      when { context.args.amount_usd.greaterThan(decimal("100.0")) };

A call is the request `Agent::"<proposer>"` doing `Action::"call"` on
`Tool::"<tool name>"` (its attributes: `name`, `family`), with the context
`{args, risk, tenant, trusted, provenance, facts}` (`trusted` is false when any argument
came from an untrusted source; `provenance.ARG` is "trusted" or "untrusted", `taint.ARG` "trusted",
"tainted" or "unknown" (guardrails.provenance); `facts`: what the
workflow's code established, see RunContext.call). Numbers in the context are Cedar decimals (compare with
`.greaterThan(decimal("100.0"))`; a decimal literal needs its point). Cedar answers allow or deny; a satisfied
`forbid` rule annotated `@action("require_human_approval")` asks a person
instead of denying, and `@reason("...")` explains. With no `permit` rule
satisfied, Cedar denies. An evaluation error denies (fail closed). Policies are
parsed once and the decision takes about a tenth of a millisecond.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cedarpy

from tether.errors import PolicyError
from tether.guardrails.policy import STRICTNESS, Action, Decision


def _value(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v if v is not None else ""
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} is not a finite number")
        return {"__extn": {"fn": "decimal", "arg": f"{v:.4f}"}}
    if isinstance(v, Mapping):
        return {str(k): _value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return str(v)


@dataclass(frozen=True)
class _RuleInfo:
    name: str
    effect: str
    action: Action
    reason: str | None


@dataclass(frozen=True)
class CedarPolicy:
    """A Cedar policy file deciding through the same interface as YAML (`forbid` rules may ask a person)."""

    text: str
    source: str
    hash: str
    default: Action = "deny"
    _policies: Any = field(default=None, repr=False, compare=False)
    _rules: dict[str, _RuleInfo] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_text(cls, text: str, source: str = "<cedar>") -> CedarPolicy:
        try:
            policies = cedarpy.PolicySet.from_str(text)
            parsed = json.loads(cedarpy.policies_to_json_str(text))
        except Exception as e:  # noqa: BLE001 - cedarpy raises plain exceptions for syntax errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PolicyError(f"{source}: Cedar policy does not parse: {first}") from None
        rules = {}
        for pid, p in parsed.get("staticPolicies", {}).items():
            ann = p.get("annotations", {})
            action = ann.get("action", "deny" if p["effect"] == "forbid" else "allow")
            if action not in STRICTNESS or (p["effect"] == "permit" and action != "allow"):
                raise PolicyError(f"{source}: policy {ann.get('id', pid)!r}: @action({action!r}) is not allowed here "
                                  "(forbid rules take deny or require_human_approval)")  # fmt: skip
            rules[pid] = _RuleInfo(ann.get("id", pid), p["effect"], action, ann.get("reason"))
        names = [r.name for r in rules.values()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise PolicyError(f"{source}: duplicate policy id {dupes[0]!r}")
        digest = hashlib.sha256(text.encode()).hexdigest()
        return cls(text, source, digest, "deny", policies, rules)

    @property
    def rules(self) -> tuple[_RuleInfo, ...]:
        return tuple(self._rules.values())

    def decide(self, tool: str, args: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> Decision:
        ctx = dict(context or {})
        try:
            request = {
                "principal": {"type": "Agent", "id": str(ctx.get("principal") or "unknown")},
                "action": {"type": "Action", "id": "call"},
                "resource": {"type": "Tool", "id": tool},
                "context": {"args": _value(dict(args)), "tenant": str(ctx.get("tenant") or ""),
                            "risk": _value(ctx.get("risk") if ctx.get("risk") is not None else 0.0),
                            "trusted": bool(ctx.get("trusted", False)),
                            "provenance": {str(k): str(v) for k, v in (ctx.get("provenance") or {}).items()},
                            "taint": {str(k): str(v) for k, v in (ctx.get("taint") or {}).items()},
                            "facts": _value(dict(ctx.get("facts") or {}))},
            }  # fmt: skip
            entities = [{"uid": {"type": "Tool", "id": tool}, "attrs": {"name": tool, "family": tool.split(".")[0]}, "parents": []}]
            result = cedarpy.is_authorized(request, self._policies, entities)
        except Exception as e:  # noqa: BLE001 - the gate must never fail open
            return self._closed(f"could not build the Cedar request ({e})", ctx)
        if result.diagnostics.errors:
            return self._closed(f"Cedar evaluation error ({result.diagnostics.errors[0]})", ctx)
        fired = [self._rules[r] for r in result.diagnostics.reasons if r in self._rules]
        if result.allowed:
            return Decision(action="allow", rules=[r.name for r in fired], matched=[r.name for r in fired],
                            policy_hash=self.hash, reason="permitted by " + ", ".join(r.name for r in fired), risk=ctx.get("risk"))  # fmt: skip
        if not fired:
            return Decision(action="deny", rules=[], policy_hash=self.hash, risk=ctx.get("risk"),
                            reason="no permit rule matched; Cedar denies by default")  # fmt: skip
        action = max((r.action for r in fired), key=STRICTNESS.__getitem__)
        producing = [r for r in fired if r.action == action]
        reasons = [r.reason for r in producing if r.reason]
        return Decision(action=action, rules=[r.name for r in producing], matched=[r.name for r in fired],
                        policy_hash=self.hash, risk=ctx.get("risk"),
                        reason="; ".join(reasons) or f"matched {', '.join(r.name for r in producing)}")  # fmt: skip

    def _closed(self, why: str, ctx: Mapping[str, Any]) -> Decision:
        return Decision(action="deny", rules=[], policy_hash=self.hash, reason=f"{why}; failing closed", risk=ctx.get("risk"))

    def lint(self, schemas: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
        return [], []  # Cedar validates against a schema of its own; not checked here
