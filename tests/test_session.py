"""The governed session: the governed call for an agent loop tether does not own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tether.cli import cli
from tether.errors import (
    ApprovalError,
    InvalidArguments,
    RunTakenOver,
    SessionClosed,
    WorkflowError,
)
from tether.guardrails.policy import PolicySet
from tether.orchestration.session import Session
from tether.record.db import Database
from tether.record.ledger import Ledger
from tether.record.tables import approvals, run_events, runs
from tether.tools.tool import Tool, ToolContext

POLICY_TEXT = """
policies:
  - name: big_refund
    if: {tool: "payments.refund", amount_usd: "> 100"}
    then: {action: require_human_approval}
  - name: no_outside_mail
    if: {tool: "send_email", to: "== \\"evil@example.com\\""}
    then: {action: deny, reason: "mail to outsiders is not allowed"}
"""
POLICY = PolicySet.from_text(POLICY_TEXT)


class Bank:
    def __init__(self) -> None:
        self.refunds: list[tuple[str, float, str]] = []
        self.mail: list[str] = []


BANK = Bank()


def send_email(to: str, body: str) -> dict[str, Any]:
    """Send an e-mail to a customer.

    Args:
        to: the recipient's address
        body: the message
    """
    BANK.mail.append(to)
    return {"sent": True}


def refund(ctx: ToolContext[Bank], transaction_id: str, amount_usd: float) -> dict[str, Any]:
    """Refund a card transaction."""
    ctx.check_credential(transaction_id)
    ctx.deps.refunds.append((transaction_id, amount_usd, ctx.idempotency_key))
    return {"refunded": amount_usd}


TOOLS = [Tool.from_function(send_email), Tool.from_function(refund, name="payments.refund", target="transaction_id")]


@pytest.fixture(autouse=True)
def _fresh_bank() -> None:
    BANK.refunds.clear()
    BANK.mail.clear()


def _open(db: Database, **kw: Any) -> Session:
    return Session.open(db, tools=TOOLS, policy=POLICY, principal="alice", name="support-agent", deps=BANK, **kw)


def _count(db: Database, table: sa.Table) -> int:
    with db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() or 0


def test_a_session_call_goes_through_the_gate_and_is_recorded(db: Database, db_url: str) -> None:
    with _open(db) as s:
        ok = s.call("send_email", {"to": "bob@example.com", "body": "Your card is on its way"})
        denied = s.call("send_email", {"to": "evil@example.com", "body": "the data"})
        invalid = s.call("send_email", {"to": "bob@example.com"})
        unknown = s.call("shell.exec", {"cmd": "rm -rf /"})
        small = s.call("payments.refund", {"transaction_id": "T1", "amount_usd": 40})
    assert ok.ok and ok.output == {"sent": True} and ok.decision is not None and ok.decision.action == "allow"
    assert denied.status == "denied" and denied.error == "mail to outsiders is not allowed"
    assert invalid.status == "invalid" and "'body' is a required property" in (invalid.error or "")
    assert unknown.status == "invalid" and unknown.error == "unknown tool 'shell.exec'"
    assert small.ok and BANK.refunds[0][:2] == ("T1", 40.0) and BANK.mail == ["bob@example.com"]
    assert s.status == "completed"
    # A session is a run: listed, shown, ledgered, and its ledger verifies.
    runner = CliRunner()
    listed = runner.invoke(cli, ["runs", "--db", db_url])
    assert listed.exit_code == 0 and s.id in listed.output and "support-agent" in listed.output
    shown = runner.invoke(cli, ["runs", "show", s.id, "--json", "--db", db_url])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.output)
    assert body["run"]["status"] == "completed" if "run" in body else body["status"] == "completed"
    assert Ledger(db).verify().ok
    with db.read() as conn:
        kinds = [r.kind for r in conn.execute(sa.select(run_events.c.kind).where(run_events.c.run_id == s.id).order_by(run_events.c.seq))]
    assert kinds.count("proposal") == 5 and kinds.count("result") == 5 and kinds[-1] == "end"
    traced = runner.invoke(cli, ["runs", "show", s.id, "--trace", "--json", "--db", db_url])
    assert traced.exit_code == 0 and "execute_tool payments.refund" in traced.output


def test_an_approval_pauses_the_call_not_the_session(db: Database, db_url: str) -> None:
    s = _open(db)
    big = s.call("payments.refund", {"transaction_id": "T9", "amount_usd": 500})
    assert big.status == "pending_approval" and big.approval_id and BANK.refunds == []
    assert s.status == "waiting_approval" and s.pending() == [big.approval_id]
    assert s.call("send_email", {"to": "bob@example.com", "body": "we are on it"}).ok  # the session goes on
    assert s.wait(big.approval_id, timeout=0.05).status == "pending_approval"  # nobody decided yet
    runner = CliRunner()
    refused = runner.invoke(cli, ["approvals", "approve", big.approval_id, "--as", "alice", "--db", db_url])
    assert refused.exit_code != 0 and "started run" in refused.output  # segregation of duties, as for workflows
    decided = runner.invoke(cli, ["approvals", "approve", big.approval_id, "--as", "bob", "--db", db_url])
    assert decided.exit_code == 0, decided.output
    done = s.wait(big.approval_id, timeout=5)
    assert done.ok and done.approval_id == big.approval_id and BANK.refunds[0][:2] == ("T9", 500.0)
    assert s.status == "running" and s.pending() == []
    with pytest.raises(ApprovalError, match="already carried out"):
        s.resume_call(big.approval_id)
    with pytest.raises(ApprovalError, match="no call of session"):
        s.resume_call("apr_doesnotexist")
    s.close()


def test_a_rejected_call_ends_rejected_and_runs_nothing(db: Database) -> None:
    from tether.guardrails.approvals import ApprovalInbox

    s = _open(db)
    big = s.call("payments.refund", {"transaction_id": "T9", "amount_usd": 500})
    ApprovalInbox(db).decide(big.approval_id or "", approve=False, by="bob", reason="no receipt")
    r = s.resume_call(big.approval_id or "")
    assert r.status == "rejected" and r.error == "rejected by bob: no receipt" and BANK.refunds == []
    s.close()


_ELSEWHERE = """
import sys
sys.path.insert(0, {tests!r})
from tether.record.db import Database
import test_session as t
s = t.Session.open(Database({url!r}), tools=t.TOOLS, policy=t.POLICY, principal="alice", name="support-agent", deps=t.BANK)
r = s.call("payments.refund", {{"transaction_id": "T7", "amount_usd": 700}})
print(s.id, r.approval_id)
"""


def test_a_session_survives_its_process_and_is_reopened_by_id(db: Database, db_url: str) -> None:
    script = _ELSEWHERE.format(tests=str(Path(__file__).parent), url=db_url)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    session_id, approval_id = out.stdout.split()
    from tether.guardrails.approvals import ApprovalInbox

    ApprovalInbox(db).decide(approval_id, approve=True, by="bob")
    s = Session.reopen(db, session_id, tools=TOOLS, deps=BANK)
    assert s.pending() == [approval_id] and s.principal == "alice"
    r = s.resume_call(approval_id)
    assert r.ok and BANK.refunds[0][:2] == ("T7", 700.0)
    s.close()
    assert Ledger(db).verify().ok


def test_reopening_takes_the_session_over(db: Database) -> None:
    first = _open(db)
    second = Session.reopen(db, first.id, tools=TOOLS, deps=BANK)
    before = _count(db, run_events)
    with pytest.raises(RunTakenOver, match="reopened by another process"):
        first.call("send_email", {"to": "bob@example.com", "body": "x"})
    assert _count(db, run_events) == before and BANK.mail == []  # the old holder wrote and sent nothing
    assert second.call("send_email", {"to": "bob@example.com", "body": "x"}).ok
    with pytest.raises(WorkflowError, match="other tools"):
        Session.reopen(db, first.id, tools=TOOLS[:1])
    second.close()


def test_bad_calls_are_refused_whole(db: Database) -> None:
    s = _open(db)
    before = (_count(db, run_events), _count(db, runs))
    with pytest.raises(InvalidArguments, match="expected a JSON object, got list"):
        s.call("send_email", ["bob@example.com"])  # type: ignore[arg-type]
    with pytest.raises(InvalidArguments, match="not JSON"):
        s.call("send_email", {"to": object(), "body": "x"})
    assert (_count(db, run_events), _count(db, runs)) == before
    s.close()
    with pytest.raises(SessionClosed, match="has ended"):
        s.call("send_email", {"to": "bob@example.com", "body": "x"})
    with pytest.raises(SessionClosed, match="has ended"):
        Session.reopen(db, s.id, tools=TOOLS)
    with pytest.raises(WorkflowError, match="not 'halted'"):
        _open(db).close("halted")
    with pytest.raises(WorkflowError, match="session name 'two words'"):
        Session.open(db, tools=TOOLS, policy=POLICY, name="two words")
    with pytest.raises(WorkflowError, match="max_calls must be at least 1"):
        Session.open(db, tools=TOOLS, policy=POLICY, max_calls=0)
    from tether.errors import PolicyError

    with pytest.raises(PolicyError, match="never be checked"):
        Session.open(db, tools=TOOLS, policy=PolicySet.from_text(
            "policies:\n  - name: typo\n    if: {tool: payments.refund, amount: '> 5'}\n    then: {action: deny}\n"))
    assert _count(db, runs) == before[1] + 1  # the refused opens wrote nothing (the one more: `_open(db)` above)


def test_max_calls_ends_the_session(db: Database) -> None:
    s = _open(db, max_calls=1)
    assert s.call("send_email", {"to": "bob@example.com", "body": "one"}).ok
    with pytest.raises(SessionClosed, match="made its 1 calls"):
        s.call("send_email", {"to": "bob@example.com", "body": "two"})
    assert s.status == "budget_exhausted" and BANK.mail == ["bob@example.com"]


def test_a_killed_session_halts_and_refuses_calls(db: Database, db_url: str) -> None:
    s = _open(db)
    pending = s.call("payments.refund", {"transaction_id": "T3", "amount_usd": 300})
    res = CliRunner().invoke(cli, ["kill", "support-agent", "--reason", "incident 42", "--db", db_url])
    assert res.exit_code == 0, res.output
    with pytest.raises(SessionClosed, match="incident 42"):
        s.call("send_email", {"to": "bob@example.com", "body": "x"})
    assert s.status == "halted" and BANK.mail == []
    with db.read() as conn:
        status = conn.execute(sa.select(approvals.c.status).where(approvals.c.id == pending.approval_id)).scalar()
    assert status == "withdrawn"  # a decision arriving later carries nothing out
    from tether.errors import WorkflowKilled

    with pytest.raises(WorkflowKilled):
        _open(db)


def test_replay_of_a_session_under_another_policy(db: Database, db_url: str, tmp_path: Path) -> None:
    with _open(db) as s:
        s.call("send_email", {"to": "bob@example.com", "body": "hello"})
        s.call("payments.refund", {"transaction_id": "T1", "amount_usd": 40})
    runner = CliRunner()
    same = runner.invoke(cli, ["replay", s.id, "--db", db_url])
    assert same.exit_code == 0, same.output
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text("policies:\n  - name: refunds_by_people\n    if: {tool: payments.refund}\n"
                        "    then: {action: require_human_approval}\n")  # fmt: skip
    diff = runner.invoke(cli, ["replay", s.id, "--policies", str(stricter), "--json", "--db", db_url])
    assert diff.exit_code == 3, diff.output
    report = json.loads(diff.output)
    assert report["counts"] == {"same": 1, "changed": 1, "added": 0, "missing": 0}
    changed = next(d for d in report["diff"] if d["kind"] == "changed")
    assert changed["replayed"]["tool"] == "payments.refund" and changed["replayed"]["decision"] == "require_human_approval"


def test_a_session_is_not_resumed_like_a_workflow(db: Database, db_url: str) -> None:
    s = _open(db)
    res = CliRunner().invoke(cli, ["runs", "resume", s.id, "--db", db_url])
    assert res.exit_code != 0 and "governed session" in res.output
    s.close()


def test_trusted_text_the_user_wrote_vouches_for_a_value(db: Database) -> None:
    gated = PolicySet.from_text("policies:\n  - name: untrusted_recipient\n    if: {tool: send_email, provenance.to: '== untrusted'}\n"
                                "    then: {action: require_human_approval}\n")  # fmt: skip
    s = Session.open(db, tools=TOOLS, policy=gated, principal="alice", name="mailer")
    assert s.call("send_email", {"to": "carol@example.com", "body": "hi"}).status == "pending_approval"
    # The user's own request, as the agent's front end received it (a field holding the address).
    s.label({"request": "Please write to Carol about my card", "recipient": "carol@example.com"}, "user", "trusted")
    r = s.call("send_email", {"to": "carol@example.com", "body": "hi again"})
    assert r.ok and r.decision is not None and "to" not in r.decision.untrusted_args
    # The label is journaled: a reopened session knows it too.
    again = Session.reopen(db, s.id, tools=TOOLS)
    assert again.call("send_email", {"to": "carol@example.com", "body": "third"}).ok
    again.close()


def test_a_session_on_postgresql(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        s = _open(db)
        assert s.call("send_email", {"to": "bob@example.com", "body": "hi"}).ok
        big = s.call("payments.refund", {"transaction_id": "T5", "amount_usd": 500})
        with db.read() as conn:
            assert conn.execute(sa.select(runs.c.status).where(runs.c.id == s.id)).scalar() == "waiting_approval"
        from tether.guardrails.approvals import ApprovalInbox

        ApprovalInbox(db).decide(big.approval_id or "", approve=True, by="bob")
        assert Session.reopen(db, s.id, tools=TOOLS, deps=BANK).resume_call(big.approval_id or "").ok
        with db.read() as conn:
            assert conn.execute(sa.select(runs.c.status).where(runs.c.id == s.id)).scalar() == "running"
        Session.reopen(db, s.id, tools=TOOLS).close()
        with db.read() as conn:
            assert conn.execute(sa.select(runs.c.status).where(runs.c.id == s.id)).scalar() == "completed"
        assert Ledger(db).verify().ok
    finally:
        db.dispose()


def test_the_api_shows_a_session_and_decides_its_calls(db: Database) -> None:
    import httpx
    from _server import LiveServer

    from tether.server.app import create_app
    from tether.server.keys import create_key

    approver, _ = create_key(db, name="bob", role="approver", tools="payments.*")
    starter, _ = create_key(db, name="alice", role="approver", tools="payments.*")
    operator, _ = create_key(db, name="olga", role="operator")
    s = _open(db)
    big = s.call("payments.refund", {"transaction_id": "T8", "amount_usd": 800})
    server = LiveServer(create_app(db))
    try:
        def client(key: str) -> httpx.Client:
            return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        with client(operator) as c:
            run = c.get(f"/api/runs/{s.id}")
            assert run.status_code == 200, run.text
            assert s.id in run.text and "payments.refund" in run.text
            assert s.id in c.get("/api/approvals").text
        with client(starter) as c:  # alice opened the session: she may not decide its calls
            refused = c.post(f"/api/approvals/{big.approval_id}/approve", json={"reason": "mine"})
            assert refused.status_code == 403 and "started run" in refused.json()["error"]
        with client(approver) as c:
            ok = c.post(f"/api/approvals/{big.approval_id}/approve", json={"reason": "receipt checked"})
            assert ok.status_code == 200, ok.text
            assert ok.json()["run"] is None and "carries the call out" in ok.json()["note"]
    finally:
        server.stop()
    done = s.resume_call(big.approval_id or "")
    assert done.ok and BANK.refunds[0][:2] == ("T8", 800.0)
    s.close()


def test_the_agents_own_model_calls_are_metered_and_bounded(db: Database, db_url: str) -> None:
    s = _open(db, cost_ceiling_usd=0.01)
    cost = s.record_usage("openai:gpt-4.1-mini", input_tokens=1000, output_tokens=200)
    assert cost["cost_usd"] > 0 and cost["calls"][0]["price_version"]
    res = CliRunner().invoke(cli, ["costs", "--json", "--db", db_url])
    assert res.exit_code == 0 and "support-agent" in res.output
    again = Session.reopen(db, s.id, tools=TOOLS, deps=BANK)  # the spend so far stays with the session
    assert again.meter.spent == pytest.approx(cost["cost_usd"])
    with pytest.raises(SessionClosed, match="past the session's cost ceiling"):
        again.record_usage("openai:gpt-4.1-mini", input_tokens=100_000, output_tokens=10_000)
    with db.read() as conn:
        row = conn.execute(sa.select(runs.c.status, runs.c.cost_usd).where(runs.c.id == s.id)).first()
    assert row.status == "cost_ceiling" and row.cost_usd > 0.01
    with pytest.raises(WorkflowError, match="token counts"):
        _open(db).record_usage("openai:gpt-4.1-mini", input_tokens=-1, output_tokens=0)


def test_a_shared_pipeline_runs_only_the_sessions_own_tools(db: Database) -> None:
    from tether.orchestration.runtime import governed_pipeline
    from tether.tools.registry import ToolRegistry

    shared = governed_pipeline(db, ToolRegistry(TOOLS))
    mailer = Session.open(db, tools=TOOLS[:1], policy=POLICY, principal="alice", name="mailer", pipeline=shared)
    r = mailer.call("payments.refund", {"transaction_id": "T1", "amount_usd": 5})
    assert r.status == "invalid" and r.error == "unknown tool 'payments.refund'" and BANK.refunds == []
    assert mailer.call("send_email", {"to": "bob@example.com", "body": "x"}).ok
    mailer.close()
    shared.close()


def test_reopen_takes_the_tools_in_any_order_and_names_a_changed_one(db: Database) -> None:
    s = _open(db)
    again = Session.reopen(db, s.id, tools=list(reversed(TOOLS)), deps=BANK)
    changed = Tool.from_function(send_email, risk_tier="high")
    with pytest.raises(WorkflowError, match="tool send_email is not as it was"):
        Session.reopen(db, s.id, tools=[changed, TOOLS[1]])
    with pytest.raises(WorkflowError, match=r"missing: payments.refund"):
        Session.reopen(db, s.id, tools=TOOLS[:1])
    again.close()


def test_a_session_is_cancelled_from_outside(db: Database, db_url: str) -> None:
    s = _open(db)
    big = s.call("payments.refund", {"transaction_id": "T6", "amount_usd": 600})
    res = CliRunner().invoke(cli, ["runs", "cancel", s.id, "--as", "olga", "--reason", "agent is gone", "--db", db_url])
    assert res.exit_code == 0, res.output
    with db.read() as conn:
        row = conn.execute(sa.select(runs.c.status, runs.c.error).where(runs.c.id == s.id)).first()
        apr = conn.execute(sa.select(approvals.c.status).where(approvals.c.id == big.approval_id)).scalar()
    assert row.status == "cancelled" and "agent is gone" in row.error and apr == "withdrawn"
    with pytest.raises(RunTakenOver):  # the agent that held it writes nothing more
        s.call("send_email", {"to": "bob@example.com", "body": "x"})
    assert BANK.mail == [] and Ledger(db).verify().ok
    again = CliRunner().invoke(cli, ["runs", "cancel", s.id, "--as", "olga", "--db", db_url])
    assert again.exit_code != 0 and "has ended" in again.output


def test_wait_sees_an_approval_expire(db: Database) -> None:
    expiring = PolicySet.from_text("policies:\n  - name: quick\n    if: {tool: payments.refund}\n"
                                   "    then: {action: require_human_approval, expires_in: 1s}\n")  # fmt: skip
    s = Session.open(db, tools=TOOLS, policy=expiring, principal="alice", name="quick", deps=BANK)
    big = s.call("payments.refund", {"transaction_id": "T2", "amount_usd": 5})
    r = s.wait(big.approval_id or "", timeout=10, poll_s=0.2)
    assert r.status == "rejected" and r.error == "rejected by expiry: expired without a decision" and BANK.refunds == []
    s.close()


def test_the_callers_exception_is_the_one_raised_from_a_with_block(db: Database) -> None:
    with pytest.raises(ValueError, match="the agent broke"):
        with _open(db) as s:
            Session.reopen(db, s.id, tools=TOOLS)  # taken over inside the block
            raise ValueError("the agent broke")


def test_unpriced_usage_cannot_pass_a_ceiling(db: Database) -> None:
    s = _open(db, cost_ceiling_usd=1.0)
    s.record_usage("openai:gpt-4.1-mini", input_tokens=10, output_tokens=10)
    again = Session.reopen(db, s.id, tools=TOOLS)
    with pytest.raises(SessionClosed, match="has no price"):
        again.record_usage("mystery:model-x", input_tokens=10**9, output_tokens=0)
    with db.read() as conn:
        from tether.record.tables import model_calls

        ids = sorted(conn.execute(sa.select(model_calls.c.call_id).where(model_calls.c.run_id == s.id)).scalars())
    assert ids == ["usage.1", "usage.2"]  # one row per report, numbered across the reopen


def test_a_replayed_session_answers_its_approved_calls_from_the_recording(db: Database) -> None:
    from tether.guardrails.approvals import ApprovalInbox
    from tether.orchestration.replay import replay

    s = _open(db)
    big = s.call("payments.refund", {"transaction_id": "T4", "amount_usd": 400})
    ApprovalInbox(db).decide(big.approval_id or "", approve=True, by="bob")
    assert s.resume_call(big.approval_id or "").ok
    s.close()
    report = replay(db, s.id)
    assert report.same and report.counts["same"] == 1 and len(BANK.refunds) == 1  # nothing ran again


def test_policy_rate_limits_hold_across_a_sessions_calls(db: Database) -> None:
    limited = PolicySet.from_text("policies: []\nlimits:\n  - {name: mail, tool: send_email, per: run, rate: 1/minute}\n")
    s = Session.open(db, tools=TOOLS, policy=limited, principal="alice", name="limited")
    assert s.call("send_email", {"to": "bob@example.com", "body": "one"}).ok
    second = s.call("send_email", {"to": "bob@example.com", "body": "two"})
    assert second.status == "denied" and "rate limit mail reached" in (second.error or "") and BANK.mail == ["bob@example.com"]
    s.close()


def test_session_operations_refuse_a_workflow_run_and_bad_labels(db: Database) -> None:
    from tether.orchestration.session import cancel

    s = _open(db)
    with pytest.raises(WorkflowError, match="label's value must be JSON"):
        s.label(object(), "user", "trusted")
    s.close()
    with db.transaction() as conn:  # the same row, now a workflow's run
        conn.execute(runs.update().where(runs.c.id == s.id).values(workflow_ref="support_triage", status="running"))
    with pytest.raises(WorkflowError, match="not a session"):
        Session.reopen(db, s.id, tools=TOOLS)
    with pytest.raises(WorkflowError, match="not a session"):
        cancel(db, s.id, by="olga")
