"""tether: a runtime for LLM agents with bounded autonomy.

The public API, in four groups. Everything not named here may change between versions.

Authoring: what you write.
    `Workflow`, `End`, `Next`, `RunContext` (a workflow tether drives); `tool`, `Tool`
    (`Tool.from_function`, `Tool.from_schema`), `Args`, `ToolContext`, `Grant`;
    `PII`, `SECRET` (marks for redaction).
Running: what drives the calls.
    `Client` (start, queue, resume, cancel, decide, get runs); `Runtime`, `RunResult`,
    `load_workflow` (workflows in this process); `Session` (a governed session for
    an agent loop tether does not own); `Database`; `CallPipeline`, `CallScope`, `ToolProxy`,
    `ToolRegistry` (the governed call itself); `ToolCall`, `ToolResult`, `RunStatus`.
Governance: what decides and records.
    `load_policy`, `PolicySet`, `CedarPolicy`, `PolicyStack`, `Decision`;
    `ApprovalInbox`, `ApprovalRequest`; `Ledger`, `LedgerEntry`, `VerifyReport`; `Redactor`.
Models: what chooses, and what it costs.
    `Model`, `Choice`, `DecisionRequest`, `Usage`, `model_from_env`, `TextClassifier`,
    `OpenAIModel`, `AnthropicModel`, `Fallback`, `Router`, `CachedModel`, `AnswerCache`,
    `plan_and_execute`, `BudgetExceeded`.
Errors: `TetherError` and its tree (drawn in `tether.errors`).
"""
# ruff: noqa: I001, F401 - grouped as the docstring reads; __all__ is built from the groups below

# -- authoring ---------------------------------------------------------------------
from tether.orchestration.context import RunContext
from tether.orchestration.workflow import End, Next, Workflow
from tether.record.redaction import PII, SECRET
from tether.tools.tool import Args, Grant, Tool, ToolContext, tool

# -- running ------------------------------------------------------------------------
from tether.orchestration.client import Client
from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.orchestration.runtime import RunResult, Runtime
from tether.orchestration.session import Session
from tether.orchestration.workflow import load as load_workflow
from tether.record.db import Database
from tether.tools.proxy import ToolProxy
from tether.tools.registry import ToolRegistry
from tether.types import RunStatus, ToolCall, ToolResult

# -- governance -----------------------------------------------------------------------
from tether.guardrails.approvals import ApprovalInbox, ApprovalRequest
from tether.guardrails.cedar import CedarPolicy
from tether.guardrails.loading import PolicyStack, load_policy
from tether.guardrails.policy import PolicySet
from tether.record.ledger import Ledger, LedgerEntry, VerifyReport
from tether.record.redaction import Redactor
from tether.types import Decision

# -- models -----------------------------------------------------------------------------
from tether.models.base import Choice, DecisionRequest, Model, Usage
from tether.models.budgets import BudgetExceeded
from tether.models.cache import AnswerCache, CachedModel
from tether.models.config import model_from_env
from tether.models.offline import TextClassifier
from tether.models.planner import plan_and_execute
from tether.models.providers import AnthropicModel, Fallback, OpenAIModel
from tether.models.router import Router

# -- errors -----------------------------------------------------------------------------
from tether.errors import (
    AccessDenied,
    ApprovalError,
    Conflict,
    Forbidden,
    InvalidArguments,
    LedgerError,
    NonDeterminismError,
    NotFound,
    PolicyError,
    Retryable,
    RunNotFound,
    RunTakenOver,
    SessionClosed,
    StoreError,
    TetherError,
    ToolError,
    UnknownTool,
    WorkflowError,
    WorkflowKilled,
)

# The export list by group, as the docstring reads (tests/test_public_api.py pins it).
API: dict[str, list[str]] = {
    "authoring": ["Args", "End", "Grant", "Next", "PII", "RunContext", "SECRET", "Tool", "ToolContext", "Workflow", "tool"],
    "running": ["CallPipeline", "CallScope", "Client", "Database", "RunResult", "RunStatus", "Runtime", "Session", "ToolCall",
                "ToolProxy", "ToolRegistry", "ToolResult", "load_workflow"],
    "governance": ["ApprovalInbox", "ApprovalRequest", "CedarPolicy", "Decision", "Ledger", "LedgerEntry", "PolicySet",
                   "PolicyStack", "Redactor", "VerifyReport", "load_policy"],
    "models": ["AnswerCache", "AnthropicModel", "BudgetExceeded", "CachedModel", "Choice", "DecisionRequest", "Fallback",
               "Model", "OpenAIModel", "Router", "TextClassifier", "Usage", "model_from_env", "plan_and_execute"],
    "errors": ["AccessDenied", "ApprovalError", "Conflict", "Forbidden", "InvalidArguments", "LedgerError",
               "NonDeterminismError", "NotFound", "PolicyError", "Retryable", "RunNotFound", "RunTakenOver",
               "SessionClosed", "StoreError", "TetherError", "ToolError", "UnknownTool", "WorkflowError", "WorkflowKilled"],
}  # fmt: skip

__all__ = [name for names in API.values() for name in names]
