"""The shapes that cross the tool proxy: a proposed call and its result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tether.guardrails.policy import Decision

CallStatus = Literal[
    "ok",  # executed, returned output
    "invalid",  # unknown tool or arguments that fail the schema; never executed
    "denied",  # the policy gate said no
    "pending_approval",  # waiting for a human; the run is paused
    "rejected",  # a human approver said no
    "error",  # the tool raised
    "timeout",  # the tool did not finish within its timeout
]


class ToolCall(BaseModel):
    """A proposed call. `proposer` names the component (or model) that proposed it."""

    model_config = ConfigDict(frozen=True)

    call_id: str
    tool: str
    args: dict[str, Any]
    proposer: str
    risk_context: dict[str, Any] = {}  # features for the risk score beyond the arguments (recorded for replay)
    # Per argument: {"trust": "trusted"|"untrusted", "sources": [...]} (guardrails.provenance).
    # None: nobody traced the arguments, so the gate treats every one as untrusted.
    provenance: dict[str, dict[str, Any]] | None = None


class ToolResult(BaseModel):
    call_id: str
    tool: str
    status: CallStatus
    output: Any = None
    error: str | None = None
    decision: Decision | None = None
    approval_id: str | None = None
    duration_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"
