"""Attack and failure paths: each one a way the spine could be bypassed or left inconsistent."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _flows import POLICY, TOOLS, Job, Scripted, World, make_workflow
from click.testing import CliRunner

from tether import (
    ApprovalError,
    ApprovalInbox,
    Args,
    Database,
    End,
    Ledger,
    PolicyError,
    PolicySet,
    RunContext,
    Runtime,
    ToolContext,
    Workflow,
    tool,
)  # fmt: skip
from tether.cli import cli
from tether.record.tables import ledger_entries


def test_model_cannot_run_a_tool_it_was_not_offered(db: Database) -> None:
    world = World()
    model = Scripted([{"option": "notes.delete_all", "args": {}, "confidence": 0.99}])
    wf = Workflow("offer", input=Job, tools=TOOLS, policy=PolicySet.from_text("policies: []"), deps=lambda d: world,
                  model=lambda: model)  # fmt: skip

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        choice = run.choose("act", options=["notes.add"], observation={"text": "x"})
        r = run.act(choice)
        return End("completed", f"{r.status}: {r.error}")

    r = Runtime(db).start(wf, {})
    assert r.outcome == "invalid: refused: model chose 'notes.delete_all', not one of the 1 options offered"
    assert world.effects == []
    [proposal] = [e.body for e in Ledger(db).entries(r.run_id) if e.kind == "proposal"]
    assert proposal["tool"] == "notes.delete_all" and proposal["error"].startswith("refused")


@pytest.mark.parametrize("name", ["ALICE", " alice ", "Ａｌｉｃｅ", "alice\u200b", "ali\x00ce"])
def test_self_approval_cannot_hide_behind_spelling(db: Database, name: str) -> None:
    r = Runtime(db).start(make_workflow(), {"amount_usd": 500}, started_by="alice")
    with pytest.raises(ApprovalError, match="started run|invisible or control"):
        ApprovalInbox(db).decide(r.approval_id or "", approve=True, by=name)
    assert ApprovalInbox(db).get(r.approval_id or "").status == "pending"


def test_run_starter_name_is_checked(db: Database) -> None:
    with pytest.raises(ApprovalError, match="invisible or control"):
        Runtime(db).start(make_workflow(), {}, started_by="bob\u202e")


def test_state_code_cannot_swallow_a_pause_or_the_budget(db: Database) -> None:
    world = World()
    wf = Workflow("swallow", input=Job, tools=TOOLS, policy=POLICY, deps=lambda d: world, max_calls_per_step=3)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        for i in range(1000):
            try:
                run.call("notes.add", {"text": str(i)})
            except Exception:  # noqa: BLE001 - what careless state code does
                pass
        return End()

    r = Runtime(db).start(wf, {})
    assert r.status == "budget_exhausted" and len(world.effects) == 3

    wf2 = Workflow("swallow2", input=Job, tools=TOOLS, policy=POLICY, deps=lambda d: world)

    @wf2.state(initial=True)
    def go2(run: RunContext[Job, World]) -> Any:
        try:
            run.call("payments.refund", {"transaction_id": "T", "amount_usd": 500})
        except Exception:  # noqa: BLE001
            return End("completed", "carried on")
        return End()

    r = Runtime(db).start(wf2, {}, started_by="alice")
    assert r.status == "waiting_approval"


def test_a_failing_resume_leaves_the_run_waiting(db: Database) -> None:
    world = World()
    wf = make_workflow(world=world)
    r = Runtime(db).start(wf, {"amount_usd": 500}, started_by="alice")
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="bob")
    with db.transaction() as conn:  # the input no longer parses, as after an incompatible code change
        conn.exec_driver_sql("UPDATE runs SET input = '{\"amount_usd\": \"lots\"}'")
    with pytest.raises(Exception, match="invalid input"):
        Runtime(db).resume(r.run_id, wf)
    assert Runtime(db).get(r.run_id).status == "waiting_approval"
    with db.transaction() as conn:
        conn.exec_driver_sql("UPDATE runs SET input = '{\"amount_usd\": 500}'")
    assert Runtime(db).resume(r.run_id, wf).status == "completed"
    assert [w for w, _ in world.effects] == ["note", "refund", "note"]


def test_a_stranded_run_is_resumed_by_hand_without_repeating_effects(db: Database) -> None:
    world = World()
    wf = make_workflow(world=world)
    r = Runtime(db).start(wf, {"amount_usd": 500}, started_by="alice")
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="bob")
    with db.transaction() as conn:  # a resumer claimed it, then its process died
        conn.exec_driver_sql("UPDATE runs SET status = 'running'")
    assert Runtime(db).resume(r.run_id, wf).status == "running"  # not without saying so
    assert Runtime(db).resume(r.run_id, wf, stranded=True).status == "completed"
    assert [w for w, _ in world.effects] == ["note", "refund", "note"]


def test_interrupt_marks_the_run_and_keeps_its_journal(db: Database) -> None:
    world = World()
    wf = Workflow("interrupt", input=Job, tools=TOOLS, policy=POLICY, deps=lambda d: world)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        run.call("notes.add", {"text": "done before"})
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Runtime(db).start(wf, {})
    with db.read() as conn:
        row = conn.execute(sa.text("select id, status from runs")).one()
    assert row.status == "interrupted"
    assert [e.kind for e in Ledger(db).entries(row.id)][-1] == "result"  # the finished call is durable


def test_policy_with_a_misspelt_argument_is_refused_at_start(db: Database, tmp_path: Path) -> None:
    typo = PolicySet.from_text('policies:\n  - {name: cap, if: {tool: payments.refund, amount: "> 100"}, then: {action: deny}}\n', "typo.yaml")
    with pytest.raises(PolicyError, match="typo.yaml:2: rule 'cap': no matching tool has an argument 'amount'"):
        Runtime(db, policy=typo).start(make_workflow(), {})
    with db.read() as conn:
        assert conn.execute(sa.text("select count(*) from runs")).scalar() == 0
    f = tmp_path / "typo.yaml"
    f.write_text(typo.text)
    res = CliRunner().invoke(cli, ["run", "support_triage", "--input", '{"ticket_id": "T1"}', "--policies", str(f)])
    assert res.exit_code == 1 and "no matching tool has an argument 'amount'" in res.stderr


class _When(Args):
    n: int


def test_tool_outputs_are_made_json_or_refused(db: Database) -> None:
    @tool("clock.now")
    def now(ctx: ToolContext[None], args: _When) -> Any:
        return {"at": dt.datetime(2026, 1, 2, 3, 4, 5), "nan": float("nan")} if args.n else {"at": dt.date(2026, 1, 2)}

    wf = Workflow("clock", input=Job, tools=[now], policy=POLICY)

    @wf.state(initial=True)
    def go(run: RunContext[Job, None]) -> Any:
        a, b = run.call("clock.now", {"n": 0}), run.call("clock.now", {"n": 1})
        return End("completed", f"{a.status}:{a.output}|{b.status}:{b.error}")

    r = Runtime(db).start(wf, {})
    assert r.outcome.startswith("ok:{'at': '2026-01-02'}|error:clock.now returned output that is not JSON")  # type: ignore[union-attr]
    assert Ledger(db).verify().ok


def test_ledger_orders_an_approval_request_after_its_decision(db: Database) -> None:
    r = Runtime(db).start(make_workflow(), {"amount_usd": 500}, started_by="alice")
    kinds = [(e.kind, e.body.get("call_id")) for e in Ledger(db).entries(r.run_id)]
    i = kinds.index(("approval_requested", "2.1"))
    assert kinds[i - 2 : i] == [("proposal", "2.1"), ("decision", "2.1")]


def test_duplicate_keys_in_a_stored_body_are_tampering(db: Database) -> None:
    Runtime(db).start(make_workflow(), {"amount_usd": 500}, started_by="alice")
    with db.transaction() as conn:
        seq, body = conn.execute(sa.select(ledger_entries.c.seq, ledger_entries.c.body).where(
            ledger_entries.c.body.like('%"require_human_approval"%'), ledger_entries.c.kind == "decision")).one()  # fmt: skip
        forged = body.replace('{"action":"require_human_approval"', '{"action":"allow","action":"require_human_approval"')
        assert forged != body
        conn.execute(ledger_entries.update().where(ledger_entries.c.seq == seq).values(body=forged))
    report = Ledger(db).verify()
    assert not report.ok and report.first_bad == seq and "not the canonical JSON" in (report.problem or "")


def test_partial_and_broken_exports(db: Database, db_url: str, tmp_path: Path) -> None:
    Runtime(db).start(make_workflow(), {"amount_usd": 5})
    r = Runtime(db).start(make_workflow(), {"amount_usd": 6})
    part = tmp_path / "run.jsonl"
    assert CliRunner().invoke(cli, ["ledger", "export", "--db", db_url, "--run", r.run_id, "--out", str(part)]).exit_code == 0
    first = min(e.seq for e in Ledger(db).entries(r.run_id))
    res = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(part)])
    assert res.exit_code == 0 and res.output.startswith(f"partial export (entries {first}..")
    lines = part.read_text().splitlines()
    part.write_text("\n".join([lines[0], lines[1].replace('"notes.add"', '"notes.del"')] + lines[2:]) + "\n")
    res = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(part)])
    assert res.exit_code == 1 and f"ledger broken at entry {first + 1}" in res.stderr
    for content, message in [
        (b"", "no ledger entries"),
        (b"\xff\xfe garbage", "not a text file"),
        (b'{"seq": "1", "ts": "t", "run_id": null, "kind": "k", "body": {}, "prev_hash": "0", "hash": "h"}\n', ":1: not a ledger entry (a field has the wrong type)"),
        (b'{"seq": 1, "seq": 2}\n', ":1: not a ledger entry (duplicate key 'seq')"),
    ]:
        f = tmp_path / "bad.jsonl"
        f.write_bytes(content)
        res = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(f)])
        assert res.exit_code == 1 and message in res.stderr, (content, res.stderr)


def test_approve_does_not_decide_when_the_run_cannot_resume(db: Database, db_url: str) -> None:
    r = Runtime(db).start(make_workflow(), {"amount_usd": 500}, started_by="alice")  # ref 'refunds' is not loadable
    res = CliRunner().invoke(cli, ["approvals", "approve", r.approval_id or "", "--as", "bob", "--db", db_url])
    assert res.exit_code == 1 and "unknown workflow 'refunds'" in res.stderr
    assert ApprovalInbox(db).get(r.approval_id or "").status == "pending"


def test_model_cache_is_never_the_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tether.models.offline import cache_dir

    monkeypatch.delenv("TETHER_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "tether" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tether" / "models"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "error: Missing argument 'WORKFLOW'. (see `tether run --help`)"),
        (["run", "support_triage"], "error: Missing option '--input'."),
        (["frobnicate"], "error: No such command 'frobnicate'."),
        (["policy", "check", "."], "is a directory"),
        (["approvals", "approve", "apr_x"], "error: Missing option '--as'."),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    p = subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_json_arguments_refuse_nan(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("policies: []\n")
    res = CliRunner().invoke(cli, ["policy", "explain", str(f), "--tool", "a.b", "--args", '{"amount_usd": NaN}'])
    assert res.exit_code == 1 and "error: --args is not valid JSON: NaN is not JSON" in res.stderr
    json.loads(CliRunner().invoke(cli, ["policy", "explain", str(f), "--tool", "a.b", "--json"]).output)
