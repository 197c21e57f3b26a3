"""The attributes of a governed call's span (OpenTelemetry GenAI conventions), for every front door."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import StatusCode

from tether.types import ToolCall, ToolResult


def tool_span_name(call: ToolCall) -> str:
    return f"execute_tool {call.tool}"


def tool_attributes(call: ToolCall) -> dict[str, Any]:
    """What is known when the call is proposed: the tool, the call id, who proposed it, which
    arguments trace to untrusted sources (names only, never values)."""
    untrusted = sorted(a for a, o in (call.provenance or {}).items() if o["trust"] == "untrusted")
    return {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.tool, "gen_ai.tool.call.id": call.call_id,
            "gen_ai.tool.type": "function", "tether.proposer": call.proposer, "tether.provenance.untrusted": untrusted}  # fmt: skip


def finish_tool_span(span: Any, result: ToolResult, redactor: Any, wait_s: float | None = None) -> None:
    """What the call came to: status, decision with its rules, hash and risk, approval, duration."""
    attrs: dict[str, Any] = {"tether.call.status": result.status}
    if result.decision is not None and result.decision.risk is not None:
        attrs["tether.risk.score"] = result.decision.risk
    if result.decision is not None:
        attrs.update({"tether.policy.decision": result.decision.action, "tether.policy.rules": result.decision.rules,
                      "tether.policy.hash": result.decision.policy_hash})  # fmt: skip
    if result.approval_id:
        attrs["tether.approval.id"] = result.approval_id
    if wait_s is not None:
        attrs["tether.approval.wait_s"] = round(wait_s, 3)
    if result.duration_ms is not None:
        attrs["tether.tool.duration_ms"] = round(result.duration_ms, 3)
    span.set_attributes(attrs)
    if result.status in ("error", "timeout"):
        span.set_status(StatusCode.ERROR, redactor.text(result.error or result.status)[:300])
