"""The public API: what `tether` exports, grouped, each class documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import tether

EXPECTED = {
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


def test_the_export_list_is_pinned_grouped_and_sorted() -> None:
    assert tether.API == EXPECTED
    for group, names in EXPECTED.items():
        assert names == sorted(names, key=str.lower) or names == sorted(names), f"{group} is not sorted"
    assert tether.__all__ == [n for names in EXPECTED.values() for n in names]
    assert len(set(tether.__all__)) == len(tether.__all__)
    for name in tether.__all__:
        assert getattr(tether, name) is not None, name
        doc = tether.errors.__doc__ if name in EXPECTED["errors"] else tether.__doc__
        assert name in (doc or ""), f"{name} is not named in the docstring that lists its group"


def test_every_exported_class_and_function_has_its_own_docstring() -> None:
    for name in tether.__all__:
        obj = getattr(tether, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # aliases (Next), marks (PII, SECRET)
        own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert own and own.strip(), f"tether.{name} has no docstring"
        # A dataclass without one gets its signature as a docstring: that documents nothing.
        assert not own.startswith(f"{obj.__name__}("), f"tether.{name} has only the docstring @dataclass made"


def test_the_package_is_typed() -> None:
    assert (Path(tether.__file__).parent / "py.typed").exists()
