"""Errors that cross layers. Each message is one line a person can act on.

The tree (a class with two bases is drawn under both; tests/test_errors.py checks
this drawing against the classes, so keep it exact):

    Exception
        TetherError
            NotFound                the thing named does not exist (HTTP 404)
                RunNotFound
                UnknownTool
                WorkflowNotFound
                RolloutNotFound
                ApprovalNotFound
            Conflict                the current state forbids the change (HTTP 409)
                WorkflowKilled
                SessionClosed
                ApprovalConflict
                RunTakenOver
            Forbidden               the caller may not do this (HTTP 403)
                AccessDenied
                ApprovalForbidden
            PolicyError
            ToolError
                UnknownTool
                InvalidArguments
            WorkflowError
                NonDeterminismError
                WorkflowKilled
                SessionClosed
                WorkflowNotFound
                RolloutNotFound
            StoreError
            LedgerError
            ApprovalError
                ApprovalNotFound
                ApprovalConflict
                ApprovalForbidden
        Retryable

`NotFound`, `Conflict` and `Forbidden` say what kind of refusal an error is, so
callers (the REST API's status codes) decide by class, never by message text.
Layers define their own subclasses of these (SecretError, CredentialError,
BudgetExceeded, ...) next to the code that raises them.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied", "ApprovalConflict", "ApprovalError", "ApprovalForbidden", "ApprovalNotFound", "Conflict",
    "Forbidden", "InvalidArguments", "LedgerError", "NonDeterminismError", "NotFound", "PolicyError", "Retryable",
    "RolloutNotFound", "RunNotFound", "RunTakenOver", "SessionClosed", "StoreError", "TetherError", "ToolError", "UnknownTool",
    "WorkflowError", "WorkflowKilled", "WorkflowNotFound",
]  # fmt: skip


class TetherError(Exception):
    """Base of every error tether raises on purpose (bad input, refused actions)."""


# -- kinds of refusal (mixed into the errors below) --------------------------------
class NotFound(TetherError):
    """An id or name that names nothing: no such run, approval, workflow, tool."""


class Conflict(TetherError):
    """A request that the current state refuses: already decided, killed, taken."""


class Forbidden(TetherError):
    """A caller who may not do this: no key, a role not held, segregation of duties."""


# -- by area -------------------------------------------------------------------------
class PolicyError(TetherError):
    """A policy file that cannot be loaded or linted."""


class ToolError(TetherError):
    """A tool definition or tool call that is not acceptable."""


class UnknownTool(ToolError, NotFound):
    """A call to a tool that is not registered."""

    pass


class InvalidArguments(ToolError):
    """A tool call whose arguments fail the tool's schema."""

    pass


class WorkflowError(TetherError):
    """A workflow definition or input that is not acceptable."""


class NonDeterminismError(WorkflowError):
    """Re-executing a run did not reproduce its recorded steps."""


class WorkflowNotFound(WorkflowError, NotFound):
    """A workflow name that is neither registered nor a module:attribute."""


class RolloutNotFound(WorkflowError, NotFound):
    """A rollout step asked for a workflow with no rollout under way."""


class WorkflowKilled(WorkflowError, Conflict):
    """The workflow's kill switch is on: new runs are refused."""


class SessionClosed(WorkflowError, Conflict):
    """A call on a governed session that has ended (closed, halted by the kill switch, out of calls)."""


class StoreError(TetherError):
    """The database is missing, corrupt, or not a tether database."""


class LedgerError(TetherError):
    """A ledger that cannot be read, appended to or verified."""

    pass


class ApprovalError(TetherError):
    """An approval decision that is refused; the subclasses say why (a bad name stays plain)."""


class ApprovalNotFound(ApprovalError, NotFound):
    """No approval request with that id."""


class ApprovalConflict(ApprovalError, Conflict):
    """Already decided (or decided by someone else meanwhile), already voted, role already held."""


class ApprovalForbidden(ApprovalError, Forbidden):
    """Segregation of duties (the run's starter, the call's proposer) or a role not held."""


class RunNotFound(NotFound):
    """No run (or stored policy version) with the id given."""

    pass


class AccessDenied(Forbidden):
    """An API key that is missing, unknown, revoked, or acting outside its role."""


class Retryable(Exception):
    """Raised by a tool for a failure worth trying again (a 429, a dropped connection).

    The proxy retries it with backoff up to the tool's `retries`; anything else a tool
    raises fails the call at once."""


class RunTakenOver(Conflict):
    """Another process claimed the run this one was driving; this one stopped without writing."""
