"""The shapes every layer shares: a proposed call, its decision and result, run statuses.

This module sits below every layer (with `tether.errors`): each layer may import it, it
imports no layer. A call crosses the stack as a `ToolCall`; the gate answers with a
`Decision`; the run sees a `ToolResult`. `CallRecorder` is where the governed call writes
(a run's journal and the ledger), so the call path never knows which store it writes to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

Action = Literal["allow", "require_human_approval", "deny"]

CallStatus = Literal[
    "ok",  # executed, returned output
    "invalid",  # unknown tool or arguments that fail the schema; never executed
    "denied",  # the policy gate said no
    "pending_approval",  # waiting for a human; the call (and a workflow's run) is paused
    "rejected",  # a human approver said no
    "error",  # the tool raised
    "timeout",  # the tool did not finish within its timeout
]


class RunStatus(enum.StrEnum):
    """Every status a run (a workflow's or a session's) can have. A `StrEnum`: compares equal
    to the plain strings stored in the database."""

    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"  # a call waits for a person
    WAITING_TIMER = "waiting_timer"  # paused by run.sleep / run.wait_until until runs.wake_at
    INTERRUPTED = "interrupted"  # its process stopped; `tether runs resume --stranded` continues it
    COMPLETED = "completed"
    ESCALATED = "escalated"  # handed to a person
    HALTED = "halted"  # stopped by the kill switch: the manual fallback queue
    CANCELLED = "cancelled"  # stopped by a person; its effects compensated
    FAILED = "failed"
    BUDGET_EXHAUSTED = "budget_exhausted"
    LOOP_DETECTED = "loop_detected"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    COST_CEILING = "cost_ceiling"

    @property
    def final(self) -> bool:
        return self not in _NOT_FINAL


_NOT_FINAL = frozenset({RunStatus.RUNNING, RunStatus.WAITING_APPROVAL, RunStatus.WAITING_TIMER, RunStatus.INTERRUPTED})


class ApprovalTier(BaseModel):
    """Who must approve a call a rule sends to people, and for how long the request stands."""

    required: int = 1  # distinct approvers
    role: str | None = None  # approvers need this role, scoped to the tool's family
    expires_in_s: int | None = None
    on_expiry: Literal["deny", "escalate"] = "deny"
    escalate_to: str | None = None  # the role that takes over an expired request


class Decision(BaseModel):
    """What the gate decided for one proposed call, and why."""

    action: Action
    rules: list[str]
    matched: list[str] = []
    policy_hash: str
    reason: str
    risk: float | None = None
    approval: ApprovalTier | None = None
    untrusted_args: list[str] = []  # arguments traced to untrusted sources (guardrails.provenance)

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


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
    # What the caller's own code established (never the model): policies test it as `facts.NAME`.
    facts: dict[str, Any] = {}


class ToolResult(BaseModel):
    """What a governed call came to. `status` says how far it got; `decision` why."""

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


@dataclass(frozen=True)
class RunInfo:
    """The run a call is made in, and the step its idempotency key is derived from."""

    run_id: str
    step: int
    tenant: str


@dataclass(frozen=True)
class Approval:
    """A person's answer to an approval request, as the governed call needs it."""

    id: str
    approved: bool
    by: str
    reason: str | None
    decision: Decision


class CallRecorder(Protocol):
    """Where a governed call writes: the run's journal (replay) and the ledger (audit).

    `decided` must be durable when it returns for an allowed call: the decision is on disk
    before the side effect starts."""

    def proposed(
        self, call: ToolCall, args: dict[str, Any] | None, error: str | None, schema: dict[str, Any] | None = None
    ) -> None: ...

    def decided(self, call: ToolCall, decision: Decision) -> None: ...

    def approval_requested(self, call: ToolCall, decision: Decision) -> str: ...

    def approval_applied(self, call: ToolCall, approval_id: str, approved: bool, by: str | None) -> None: ...

    def finished(self, call: ToolCall, result: ToolResult) -> None: ...
