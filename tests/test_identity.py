"""Look-alike names do not get past segregation of duties (issue 18, item 2)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from tether import PolicySet, Session, Tool
from tether.cli import cli
from tether.errors import ApprovalConflict, ApprovalError
from tether.guardrails import identity
from tether.guardrails.approvals import ApprovalInbox
from tether.record.db import Database
from tether.server.keys import create_key

CYRILLIC_A, CYRILLIC_O = "\u0430", "\u043e"


def refund(transaction_id: str, amount_usd: float) -> dict[str, Any]:
    """Refund a transaction."""
    return {"ok": True}


def _waiting(db: Database, approvers: int = 1) -> str:
    policy = PolicySet.from_text("policies:\n  - name: people\n    if: {tool: refund}\n"
                                 f"    then: {{action: require_human_approval, approvers: {approvers}}}\n")  # fmt: skip
    s = Session.open(db, tools=[Tool.from_function(refund)], policy=policy, principal="alice", name="refunds")
    r = s.call("refund", {"transaction_id": "T1", "amount_usd": 500})
    assert r.approval_id
    return r.approval_id


@pytest.mark.parametrize("disguise", ["alice\u3164", "alice\ufe0f", "ali\u034fce", f"{CYRILLIC_A}lice", "ＡＬＩＣＥ"])
def test_the_starter_cannot_approve_under_a_look_alike_name(db: Database, db_url: str, disguise: str) -> None:
    apr = _waiting(db)
    res = CliRunner().invoke(cli, ["approvals", "approve", apr, "--as", disguise, "--db", db_url])
    assert res.exit_code != 0 and ("invisible" in res.output or "started run" in res.output), res.output
    assert ApprovalInbox(db).get(apr).status == "pending"


def test_one_person_fills_one_slot_whatever_the_spelling(db: Database) -> None:
    apr = _waiting(db, approvers=2)
    inbox = ApprovalInbox(db)
    inbox.decide(apr, approve=True, by="bob")
    with pytest.raises(ApprovalConflict, match="already voted"):
        inbox.decide(apr, approve=True, by=f"b{CYRILLIC_O}b")  # Cyrillic o
    with pytest.raises(ApprovalError, match="invisible"):
        inbox.decide(apr, approve=True, by="bob\ufe0f")
    assert inbox.get(apr).status == "pending"
    assert inbox.decide(apr, approve=True, by="carol").status == "approved"


def test_keys_of_look_alike_names_are_refused(db: Database) -> None:
    create_key(db, name="bob", role="approver", tools="payments.*")
    create_key(db, name="bob", role="operator")  # the same person may hold several keys
    with pytest.raises(ApprovalError, match="invisible"):
        create_key(db, name="bob\ufe0f", role="approver", tools="payments.*")
    with pytest.raises(ApprovalConflict, match="looks like the existing principal 'bob'"):
        create_key(db, name=f"b{CYRILLIC_O}b", role="approver", tools="payments.*")
    with pytest.raises(ApprovalConflict, match="looks like"):
        create_key(db, name="BOB", role="operator")  # case is not a new person either


def test_without_icu_only_plain_names_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "_icu", lambda: None)
    identity.skeleton.cache_clear()
    assert identity.principal("alice") == "alice"
    with pytest.raises(ApprovalError, match="not plain ASCII"):
        identity.principal(f"{CYRILLIC_A}lice")
    identity.skeleton.cache_clear()


def test_skeletons() -> None:
    assert identity.same_principal("alice", f"{CYRILLIC_A}lice") and identity.same_principal("Bob", "ｂｏｂ")
    assert not identity.same_principal("bob", "rob") and not identity.same_principal("alice", None)
    with pytest.raises(ApprovalError, match="invisible"):
        identity.principal("eve\u200b")
