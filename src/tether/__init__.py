"""tether: a runtime for LLM agent workflows with bounded autonomy.

The public API. Everything not named here may change between versions.
"""

from tether.errors import (
    AccessDenied,
    ApprovalError,
    InvalidArguments,
    LedgerError,
    NonDeterminismError,
    PolicyError,
    Retryable,
    RunNotFound,
    StoreError,
    TetherError,
    ToolError,
    UnknownTool,
    WorkflowError,
    WorkflowKilled,
)
from tether.guardrails.approvals import ApprovalInbox, ApprovalRequest
from tether.guardrails.cedar import CedarPolicy
from tether.guardrails.loading import PolicyStack, load_policy
from tether.guardrails.policy import Decision, PolicySet
from tether.models.base import Choice, DecisionRequest, Model, Usage
from tether.models.budgets import BudgetExceeded
from tether.models.cache import AnswerCache, CachedModel
from tether.models.config import model_from_env
from tether.models.offline import TextClassifier
from tether.models.planner import plan_and_execute
from tether.models.providers import AnthropicModel, Fallback, OpenAIModel
from tether.models.router import Router
from tether.orchestration.context import RunContext
from tether.orchestration.runtime import RunResult, Runtime
from tether.orchestration.workflow import End, Next, Workflow
from tether.orchestration.workflow import load as load_workflow
from tether.record.db import Database
from tether.record.ledger import Ledger, LedgerEntry, VerifyReport
from tether.record.redaction import PII, SECRET, Redactor
from tether.tools.calls import ToolCall, ToolResult
from tether.tools.proxy import ToolProxy
from tether.tools.registry import ToolRegistry
from tether.tools.tool import Args, Grant, Tool, ToolContext, tool

__all__ = [
    "AccessDenied", "ApprovalError", "ApprovalInbox", "CedarPolicy", "PolicyStack", "load_policy", "ApprovalRequest", "Args", "Choice", "Database", "Decision",
    "DecisionRequest", "End", "Grant", "InvalidArguments", "Ledger", "LedgerEntry", "LedgerError", "Model",
    "Next", "NonDeterminismError", "PII", "Redactor", "SECRET", "PolicyError", "PolicySet", "Retryable", "RunContext", "RunNotFound", "RunResult",
    "Runtime", "StoreError", "TetherError", "TextClassifier", "Tool", "ToolCall", "ToolContext", "ToolError",
    "ToolProxy", "ToolRegistry", "ToolResult", "UnknownTool", "Usage", "VerifyReport", "Workflow",
    "WorkflowError", "WorkflowKilled", "load_workflow", "tool",
    "AnswerCache", "AnthropicModel", "BudgetExceeded", "CachedModel", "Fallback", "OpenAIModel", "Router",
    "model_from_env", "plan_and_execute",
]  # fmt: skip
