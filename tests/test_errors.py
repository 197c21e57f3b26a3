"""The error tree: drawn in tether.errors' docstring exactly as the classes are, every
error exported, each raise site raising its precise kind, and the REST API choosing a
status by class alone (never by message text)."""

from __future__ import annotations

import inspect

import pytest
from _flows import make_workflow

from tether import errors
from tether.errors import (
    AccessDenied,
    ApprovalConflict,
    ApprovalError,
    ApprovalForbidden,
    ApprovalNotFound,
    Conflict,
    Forbidden,
    InvalidArguments,
    LedgerError,
    NonDeterminismError,
    NotFound,
    PolicyError,
    RolloutNotFound,
    RunNotFound,
    RunTakenOver,
    SessionClosed,
    StoreError,
    TetherError,
    ToolError,
    UnknownTool,
    WorkflowError,
    WorkflowKilled,
    WorkflowNotFound,
)
from tether.guardrails.approvals import ApprovalInbox, add_approver, principal
from tether.orchestration import rollout
from tether.orchestration.runtime import Runtime
from tether.orchestration.workflow import load
from tether.record import runs
from tether.record.db import Database
from tether.server.app import _status_for
from tether.tools.registry import ToolRegistry

DEFINED = {c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, BaseException)
           and c.__module__ == errors.__name__}  # fmt: skip

# What the REST API answers for each error. A new error must be added here, which makes
# its author decide its kind (NotFound, Conflict, Forbidden, or none of them).
STATUS = {
    TetherError: 400, NotFound: 404, Conflict: 409, Forbidden: 403,
    PolicyError: 422, ToolError: 400, UnknownTool: 404, InvalidArguments: 400,
    WorkflowError: 422, NonDeterminismError: 422, WorkflowNotFound: 404, RolloutNotFound: 404, WorkflowKilled: 409,
    StoreError: 400, LedgerError: 400,
    ApprovalError: 400, ApprovalNotFound: 404, ApprovalConflict: 409, ApprovalForbidden: 403,
    RunNotFound: 404, AccessDenied: 403, RunTakenOver: 409, SessionClosed: 409,
}  # fmt: skip


def _drawn_tree() -> set[tuple[str, str]]:
    """(parent, child) pairs of the indented tree in the module docstring."""
    lines = (errors.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Exception")
    base = len(lines[start]) - len(lines[start].lstrip())
    edges, path = set(), []  # path[d]: the name last drawn at depth d
    for line in lines[start:]:
        if not line.strip():
            break
        indent = len(line) - len(line.lstrip())
        assert (indent - base) % 4 == 0 and indent >= base, f"tree line not on a 4-space step: {line!r}"
        depth, name = (indent - base) // 4, line.split()[0]
        assert depth <= len(path), f"tree line indented too far: {line!r}"
        del path[depth:]
        if path:
            edges.add((path[-1], name))
        path.append(name)
    return edges


def test_the_drawn_tree_is_the_class_hierarchy() -> None:
    drawn = _drawn_tree()
    by_bases = {(b.__name__, c.__name__) for c in DEFINED for b in c.__bases__}
    assert drawn == by_bases, f"only drawn: {sorted(drawn - by_bases)}; only in code: {sorted(by_bases - drawn)}"
    # And from the other side: each drawn parent's children are its subclasses in tether.errors.
    for parent in {p for p, _ in drawn}:
        cls = Exception if parent == "Exception" else getattr(errors, parent)
        subs = {s.__name__ for s in cls.__subclasses__() if s in DEFINED}
        assert subs == {c for p, c in drawn if p == parent}, parent
    # Everything drawn is a class of the module, and every class of the module is drawn.
    assert {c for _, c in drawn} == {c.__name__ for c in DEFINED}


def test_every_error_is_exported_from_tether_errors() -> None:
    assert sorted(errors.__all__) == sorted(c.__name__ for c in DEFINED)
    for name in errors.__all__:
        assert getattr(errors, name).__module__ == "tether.errors", name
    assert set(STATUS) == {c for c in DEFINED if issubclass(c, TetherError)}


@pytest.mark.parametrize("cls", sorted(STATUS, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_status_is_chosen_by_class(cls: type[TetherError]) -> None:
    assert _status_for(cls("x")) == STATUS[cls]
    # Words the server used to look for in messages change nothing any more.
    for text in ("no approval request with id 'x'", "unknown workflow 'x'", "no rollout under way", "already approved", "meanwhile"):
        assert _status_for(cls(text)) == STATUS[cls], (cls, text)


def test_the_kinds_of_refusal() -> None:
    assert all(issubclass(c, NotFound) for c in (RunNotFound, UnknownTool, WorkflowNotFound, RolloutNotFound, ApprovalNotFound))
    assert all(issubclass(c, Conflict) for c in (WorkflowKilled, ApprovalConflict))
    assert all(issubclass(c, Forbidden) for c in (AccessDenied, ApprovalForbidden))
    # The areas stay what they were, so `except ApprovalError` and friends still catch them.
    assert all(issubclass(c, ApprovalError) for c in (ApprovalNotFound, ApprovalConflict, ApprovalForbidden))
    assert all(issubclass(c, WorkflowError) for c in (WorkflowKilled, WorkflowNotFound, RolloutNotFound))
    assert issubclass(UnknownTool, ToolError)


def test_raise_sites_raise_the_precise_class(db: Database) -> None:
    with pytest.raises(WorkflowNotFound, match="unknown workflow 'nope'"):
        load("nope")
    with pytest.raises(UnknownTool, match="unknown tool 'x.y'"):
        ToolRegistry().get("x.y")
    with pytest.raises(RolloutNotFound, match="no rollout under way for support_triage"):
        rollout.advance(db, "support_triage", by="ops")
    with pytest.raises(RunNotFound, match="no run with id 'run_missing'"), db.read() as conn:
        runs.get_run(conn, "run_missing")

    inbox = ApprovalInbox(db)
    with pytest.raises(ApprovalNotFound, match="no approval request"):
        inbox.decide("apr_nope", approve=True, by="bob")
    r = Runtime(db).start(make_workflow(), {"amount_usd": 250}, started_by="alice")
    assert r.approval_id
    with pytest.raises(ApprovalForbidden, match="ALICE started run"):
        inbox.decide(r.approval_id, approve=True, by="ALICE")
    inbox.decide(r.approval_id, approve=True, by="bob")
    with pytest.raises(ApprovalConflict, match="already approved by bob"):
        inbox.decide(r.approval_id, approve=False, by="carol")

    add_approver(db, "bob", "payments_approver", "payments.*")
    with pytest.raises(ApprovalConflict, match="already holds role"):
        add_approver(db, "bob", "payments_approver", "payments.*")
    # A malformed name is bad input: an ApprovalError of no particular kind (400).
    with pytest.raises(ApprovalError, match="a name is required") as bad:
        principal("  ")
    assert not isinstance(bad.value, (NotFound, Conflict, Forbidden))

