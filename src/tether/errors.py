"""Errors that cross layers. Each message is one line a person can act on."""

from __future__ import annotations


class TetherError(Exception):
    """Base of every error tether raises on purpose (bad input, refused actions)."""


class PolicyError(TetherError):
    """A policy file that cannot be loaded or linted."""


class ToolError(TetherError):
    """A tool definition or tool call that is not acceptable."""


class UnknownTool(ToolError):
    pass


class InvalidArguments(ToolError):
    pass


class WorkflowError(TetherError):
    """A workflow definition or input that is not acceptable."""


class NonDeterminismError(WorkflowError):
    """Re-executing a run did not reproduce its recorded steps."""


class StoreError(TetherError):
    """The database is missing, corrupt, or not a tether database."""


class LedgerError(TetherError):
    pass


class ApprovalError(TetherError):
    """An approval decision that is refused (unknown id, self-approval, already decided)."""


class RunNotFound(TetherError):
    pass


class WorkflowKilled(WorkflowError):
    """The workflow's kill switch is on: new runs are refused."""


class AccessDenied(TetherError):
    """An API key that is missing, unknown, revoked, or acting outside its role."""


class Retryable(Exception):
    """Raised by a tool for a failure worth trying again (a 429, a dropped connection).

    The proxy retries it with backoff up to the tool's `retries`; anything else a tool
    raises fails the call at once."""


class RunTakenOver(TetherError):
    """Another process claimed the run this one was driving; this one stopped without writing."""
