"""A secret handed out is never written anywhere: one scrubbing point for every store (issue 18, item 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tether import PolicySet, Session, Tool, ToolContext
from tether.cli import cli
from tether.record.db import Database
from tether.record.secrets import EnvSecrets, FileSecrets, SecretError
from tether.record.tables import approvals, ledger_entries, run_events, spans

CANARY = "canary-7secret-Qw93kP"


def _everything(db: Database) -> str:
    with db.read() as conn:
        rows = [[dict(x._mapping) for x in conn.execute(sa.select(t))] for t in (approvals, ledger_entries, run_events, spans)]
    return json.dumps(rows, default=str)


def test_a_secret_in_a_call_that_waits_for_approval_is_not_stored(db: Database, db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "upstream").write_text(CANARY)
    (folder / "upstream").chmod(0o600)

    def token(ctx: ToolContext) -> dict[str, Any]:
        """Fetch an upstream token (a careless tool that hands it to the agent)."""
        value = ctx.secrets.get("upstream")
        return {"token": value, value: "also as a key"}

    def refund(transaction_id: str, amount_usd: float, note: str) -> dict[str, Any]:
        """Refund a transaction."""
        return {"ok": True}

    policy = PolicySet.from_text("policies:\n  - name: big\n    if: {tool: refund, amount_usd: '> 100'}\n"
                                 "    then: {action: require_human_approval}\n")  # fmt: skip
    s = Session.open(db, tools=[Tool.from_function(token, side_effect=False), Tool.from_function(refund)], policy=policy,
                     principal="alice", name="leaky", secrets=FileSecrets(folder))  # fmt: skip
    assert s.call("token", {}).ok
    waiting = s.call("refund", {"transaction_id": "T1", "amount_usd": 500, "note": f"auth {CANARY}"})
    assert waiting.status == "pending_approval"
    stored = _everything(db)
    assert CANARY not in stored and stored.count("<secret>") >= 3  # the approval's args, the result's value and key
    listed = CliRunner().invoke(cli, ["approvals", "--json", "--db", db_url])
    assert listed.exit_code == 0 and waiting.approval_id in listed.output and CANARY not in listed.output
    s.close()


def test_a_short_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_SECRET_PIN", "12345")
    with pytest.raises(SecretError, match="secret 'pin' is 5 characters; secrets shorter than 6 are refused"):
        EnvSecrets().get("pin")
    (tmp_path / "pin").write_text("abc")
    (tmp_path / "pin").chmod(0o600)
    with pytest.raises(SecretError, match="3 characters"):
        FileSecrets(tmp_path).get("pin")
