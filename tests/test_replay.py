from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tether import ApprovalInbox, Database, Ledger, PolicySet, Runtime
from tether.cli import cli
from tether.errors import TetherError
from tether.evals.golden import load_cases
from tether.orchestration.replay import IncompatibleRecording, replay
from tether.record import runs as store
from tether.workflows.triage import data, systems
from tether.workflows.triage.demo import run_demo
from tether.workflows.triage.flow import refund_target, workflow
from tether.workflows.triage.intents import ROUTES


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """A database with 40 demo runs and one approved refund, shared by the tests below (they only read)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('replay') / 'tether.db'}"
    db = Database(url)
    run_demo(db, tickets=40, seed=11)
    bank = systems.Systems(db)
    cid, target = next(
        (data.customer_id(i), t) for i in range(data.CUSTOMERS)
        if (t := refund_target(ROUTES["request_refund"], bank.lookup_customer(data.customer_id(i))["transactions"]))
        and 100 < t[1] <= 1000
    )  # fmt: skip
    bank.open_ticket("k", "T-approved", cid, "I would like a refund for my last purchase please")
    rt = Runtime(db)
    r = rt.start(workflow, {"ticket_id": "T-approved"}, started_by="intake")
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="lead")
    assert rt.resume(r.run_id, workflow).status == "completed"
    with db.read() as conn:
        ids = [row.id for row in store.list_runs(conn)]
    db.dispose()
    return url, ids


def _ledger_size(url: str) -> int:
    return Ledger(Database(url)).head()[0]


def test_every_recorded_run_replays_to_the_same_actions(recorded: tuple[str, list[str]]) -> None:
    url, ids = recorded
    before = _ledger_size(url)
    db = Database(url)
    reports = [replay(db, i) for i in ids]
    assert len(reports) == 41
    assert all(r.same and r.replay_status == r.original_status for r in reports), [r for r in reports if not r.same][:1]
    assert _ledger_size(url) == before  # replay wrote nothing


def test_replay_under_a_stricter_policy_reports_the_divergence(recorded: tuple[str, list[str]], tmp_path: Path) -> None:
    url, ids = recorded
    strict = tmp_path / "strict.yaml"
    strict.write_text("policies:\n  - name: route_needs_ok\n    if: {tool: helpdesk.route}\n    then: {action: require_human_approval}\n")
    db = Database(url)
    completed = next(i for i in ids if Runtime(db).get(i).status == "completed")
    r = replay(db, completed, policy=PolicySet.load(strict))
    assert not r.same and r.replay_status == "waiting_approval"
    changed = [d for d in r.diff if d.kind == "changed"]
    assert [d.replayed.tool for d in changed if d.replayed] == ["helpdesk.route"]
    assert changed[0].replayed and changed[0].replayed.decision == "require_human_approval"
    assert r.first_divergence == changed[0].step
    assert [d.kind for d in r.diff].count("missing") >= 1  # what came after the route never happened
    res = CliRunner().invoke(cli, ["replay", completed, "--db", url, "--policies", str(strict), "--json"])
    assert res.exit_code == 3
    out = json.loads(res.output)
    assert out["same"] is False and out["first_divergence"] == r.first_divergence
    res = CliRunner().invoke(cli, ["replay", completed, "--db", url])
    assert res.exit_code == 0 and "same actions" in res.output


def test_recorded_approval_is_reused_and_a_looser_policy_shows(recorded: tuple[str, list[str]], tmp_path: Path) -> None:
    url, ids = recorded
    db = Database(url)
    with db.read() as conn:
        run_id = conn.execute(sa.text("select run_id from approvals where status = 'approved'")).scalar()
    r = replay(db, run_id)
    assert r.same  # the recorded approval answered the gate again
    loose = tmp_path / "loose.yaml"
    loose.write_text("policies: []\n")
    r = replay(db, run_id, policy=PolicySet.load(loose))
    [changed] = [d for d in r.diff if d.kind == "changed"]
    assert (changed.original.decision, changed.replayed.decision) == ("require_human_approval", "allow")  # type: ignore[union-attr]
    assert r.replay_status == "completed"


def test_patched_code_replays_until_it_needs_the_live_world(recorded: tuple[str, list[str]]) -> None:
    url, ids = recorded
    db = Database(url)
    answered = next(i for i in ids if (Runtime(db).get(i).outcome or "").startswith("answered:"))
    r = replay(db, answered, workflow=__import__("_patched_triage").unchanged)
    assert r.same
    r = replay(db, answered, workflow=__import__("_patched_triage").other_reply)
    assert r.replay_status == "stopped" and not r.same
    assert "helpdesk.reply with these arguments was never executed" in (r.stopped or "")
    assert r.diff[-1].kind == "changed" and r.diff[-1].replayed and r.diff[-1].replayed.tool == "helpdesk.reply"
    res = CliRunner().invoke(cli, ["replay", answered, "--db", url, "--workflow", "_patched_triage:other_reply"])
    assert res.exit_code == 3 and "stopped: step 5: helpdesk.reply" in res.output


def test_replay_refuses_what_it_cannot_replay(recorded: tuple[str, list[str]], tmp_path: Path) -> None:
    url, ids = recorded
    copy = tmp_path / "copy.db"
    import sqlite3

    sqlite3.connect(url.removeprefix("sqlite:///")).backup(sqlite3.connect(copy))
    db = Database(f"sqlite:///{copy}")
    with db.transaction() as conn:
        conn.exec_driver_sql(f"UPDATE runs SET record_format = 99 WHERE id = '{ids[0]}'")
        conn.exec_driver_sql(f"UPDATE runs SET status = 'running' WHERE id = '{ids[1]}'")
    with pytest.raises(IncompatibleRecording, match=f"run {ids[0]} was recorded in format 99"):
        replay(db, ids[0])
    for args, msg in [
        ([ids[0]], f"error: run {ids[0]} was recorded in format 99; this tether replays format 1"),
        ([ids[1]], f"error: run {ids[1]} is still running"),
        (["run_nope"], "error: no run with id 'run_nope'"),
        ([ids[2], "--workflow", "nope:nothing"], "error: cannot load workflow 'nope:nothing'"),
        ([ids[2], "--policies", "missing.yaml"], "error: missing.yaml: policy file not found"),
    ]:
        res = CliRunner().invoke(cli, ["replay", *args, "--db", f"sqlite:///{copy}"])
        assert res.exit_code == 1 and res.stderr.startswith(msg), res.stderr


def test_save_case_turns_a_run_into_a_regression_case(recorded: tuple[str, list[str]], tmp_path: Path) -> None:
    url, ids = recorded
    target = ids[0]  # the newest: the refund a lead approved
    golden = tmp_path / "regressions.jsonl"
    res = CliRunner().invoke(cli, ["replay", target, "--db", url, "--save-case", str(golden)])
    assert res.exit_code == 0, res.stderr
    res = CliRunner().invoke(cli, ["replay", ids[1], "--db", url, "--save-case", str(golden)])
    [c1, c2] = load_cases(golden)
    assert c1.id.endswith(target) and c1.expected.match == "exact" and c1.approvals == "approve"
    assert "payments.refund" in [a.tool for a in c1.expected.actions] and len(c1.final_state["refunds"]) == 1
    assert c1.setup["tickets"][0]["id"] == c1.input["ticket_id"]
    assert c1.final_state["ticket.status"] in ("solved", "open", "escalated")
    # The saved case passes when evaluated on a fresh copy of the bank: the run is reproduced.
    res = CliRunner().invoke(cli, ["eval", str(golden), "--json"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.output)
    assert out["cases"] == 2 and out["task_success"] == 1.0, [r["failures"] for r in out["results"]]


def test_bad_recordings_raise_tether_errors() -> None:
    assert issubclass(IncompatibleRecording, TetherError)
