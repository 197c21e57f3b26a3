"""Rollout by routing-key hash, the kill switch (new runs refused, in-flight runs halted at their
next step, waiting runs halted when resumed), the CLI for both, and progress bars on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from _server import refund_customers, waiting_refund
from _slow_flow import slow
from click.testing import CliRunner

from tether.cli import cli
from tether.errors import WorkflowError, WorkflowKilled
from tether.orchestration import rollout
from tether.orchestration.runtime import Runtime
from tether.orchestration.workflow import load
from tether.record.db import Database
from tether.record.ledger import Ledger
from tether.record.tables import runs
from tether.workflows.triage import systems


def test_buckets_are_stable_shares_hold_and_grow_monotonically() -> None:
    keys = [f"TKT-{i:05d}" for i in range(10_000)]
    buckets = [rollout.bucket("support_triage", k) for k in keys]
    assert buckets == [rollout.bucket("support_triage", k) for k in keys]  # same key, same bucket, every time
    for pct in (5, 25):
        share = sum(b < pct * 100 for b in buckets) / len(keys)
        assert abs(share - pct / 100) < 0.01, (pct, share)
    at5 = {k for k, b in zip(keys, buckets, strict=True) if b < 500}
    at25 = {k for k, b in zip(keys, buckets, strict=True) if b < 2500}
    assert at5 < at25  # a ticket on the candidate at 5% stays on it at 25%


def test_route_follows_the_split(db: Database) -> None:
    base = load("support_triage")
    assert rollout.route(db, base, {"ticket_id": "T-1"}) is base  # no rollout
    with pytest.raises(WorkflowError, match="_slow_flow:slow is workflow 'slow_steps', not a version of 'support_triage'"):
        rollout.start(db, "support_triage", "_slow_flow:slow", by="ops")
    rollout.start(db, "support_triage", "_patched_triage:other_reply", by="ops", steps=[50, 100])
    picks = {k: rollout.route(db, base, {"ticket_id": k}).ref for k in (f"T-{i}" for i in range(200))}
    for k, ref in picks.items():
        assert ref == ("_patched_triage:other_reply" if rollout.bucket("support_triage", k) < 5000 else "support_triage")
    assert rollout.route(db, base, {"customer_id": "C0001", "text": "hi"}).ref == "support_triage"  # no key: stable
    with pytest.raises(WorkflowError, match="cannot load workflow ':0'"):  # found by the API fuzz
        load(":0")
    unchanged = load("_patched_triage:unchanged")
    assert rollout.route(db, unchanged, {"ticket_id": "T-1"}) is unchanged  # asked for by its own ref
    with pytest.raises(WorkflowError, match="under way at 50%"):
        rollout.start(db, "support_triage", "_patched_triage:unchanged", by="ops")
    rollout.rollback(db, "support_triage", by="ops", reason="replies look wrong")
    assert rollout.route(db, base, {"ticket_id": "T-1"}).ref == "support_triage"
    kinds = [e.kind for e in Ledger(db).entries()]
    assert kinds == ["rollout_started", "rollout_rolled_back"]


def test_kill_switch_halts_in_flight_runs_at_their_next_step_and_refuses_new_ones(db: Database) -> None:
    results: dict[str, object] = {}

    def drive(i: int) -> None:
        rt = Runtime(db)
        try:
            results[f"K-{i}"] = rt.start(slow, {"ticket_id": f"K-{i}", "steps": 100, "delay_ms": 20}, started_by="ops")
        finally:
            rt.close()

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with db.read() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(runs).where(runs.c.status == "running")).scalar() == 3:
                break
        time.sleep(0.01)
    r, in_flight = rollout.kill(db, "slow_steps", by="ops", reason="runaway loop")
    assert r.killed and in_flight == 3
    for t in threads:
        t.join(timeout=10)
    for res in results.values():
        assert res.status == "halted" and res.steps < 100, res  # type: ignore[attr-defined]
        assert "kill switch: runaway loop" in (res.error or "")  # type: ignore[attr-defined]
    with pytest.raises(WorkflowKilled, match="killed \\(runaway loop\\); new runs are refused"):
        Runtime(db).start(slow, {"ticket_id": "K-new"}, started_by="ops")
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 3  # nothing written for K-new
    entries = list(Ledger(db).entries())
    killed_at = next(e.seq for e in entries if e.kind == "workflow_killed")
    halted = [e for e in entries if e.kind == "run_finished" and e.body["status"] == "halted"]
    assert len(halted) == 3 and all(e.seq > killed_at for e in halted)
    rollout.restore(db, "slow_steps", by="ops")
    assert Runtime(db).start(slow, {"ticket_id": "K-after", "steps": 2, "delay_ms": 0}).status == "completed"
    assert Ledger(db).verify().ok


def test_a_waiting_run_is_halted_when_resumed_after_the_kill(db: Database, db_url: str) -> None:
    [cid, *_] = refund_customers(db)
    r = waiting_refund(db, "T-kill", cid)
    runner = CliRunner()
    res = runner.invoke(cli, ["kill", "support_triage", "--db", db_url])
    assert res.exit_code == 1 and "say why" in res.stderr
    res = runner.invoke(cli, ["kill", "support_triage", "--reason", "refunds misfire", "--as", "ops", "--db", db_url])
    assert res.exit_code == 0 and "1 in-flight run(s) halt at their next step" in res.output, res.stderr
    res = runner.invoke(cli, ["approvals", "approve", r.approval_id, "--as", "lead", "--db", db_url])
    assert res.exit_code == 0 and f"{r.run_id} halted" in res.output, res.output + res.stderr
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(systems.refunds)).scalar() == 0  # the approved call never ran
    res = runner.invoke(cli, ["runs", "--status", "halted", "--db", db_url])
    assert r.run_id in res.output  # the manual fallback queue
    res = runner.invoke(cli, ["run", "support_triage", "--input", '{"ticket_id": "T-kill"}', "--db", db_url])
    assert res.exit_code == 1 and "workflow support_triage is killed (refunds misfire)" in res.stderr
    res = runner.invoke(cli, ["kill", "support_triage", "--off", "--db", db_url])
    assert res.exit_code == 0 and "accepting runs" in res.output
    res = runner.invoke(cli, ["kill", "support_triage", "--off", "--db", db_url])
    assert res.exit_code == 1 and "is not killed" in res.stderr


def test_rollout_cli(db_url: str) -> None:
    runner = CliRunner()
    Database(db_url)

    def run(*args: str) -> tuple[int, str]:
        res = runner.invoke(cli, [*args, "--db", db_url])
        return res.exit_code, res.output + res.stderr

    assert run("rollout")[1].startswith("no rollouts")
    code, out = run("rollout", "start", "support_triage", "--candidate", "_patched_triage:other_reply", "--as", "ops")
    assert code == 0 and "5% of new runs (by ticket_id) to _patched_triage:other_reply" in out
    assert "25%" in run("rollout", "advance", "support_triage")[1]
    assert "100%" in run("rollout", "advance", "support_triage")[1]
    code, out = run("rollout", "advance", "support_triage")
    assert code == 1 and "at 100% already; promote it" in out
    code, out = run("rollout", "promote", "support_triage")
    assert code == 0 and "all new runs to _patched_triage:other_reply" in out
    for args, msg in [(("rollout", "advance", "nope"), "no rollout under way for nope"),
                      (("rollout", "start", "support_triage", "--candidate", "no.such:thing"), "cannot load workflow"),
                      (("rollout", "start", "support_triage", "--candidate", "support_triage", "--steps", "5,x"), "not a list of whole percents"),
                      (("kill", "no_such_workflow", "--reason", "x"), "unknown workflow 'no_such_workflow'")]:  # fmt: skip
        code, out = run(*args)
        assert code != 0 and msg in out, (args, out)
    kinds = [e.kind for e in Ledger(Database(db_url)).entries()]
    assert kinds == ["rollout_started", "rollout_advanced", "rollout_advanced", "rollout_promoted"]


def _on_a_terminal(args: list[str], cwd: Path) -> str:
    """Run the CLI with stderr on a pseudo-terminal; return what the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tether", *args], stdout=subprocess.PIPE, stderr=slave, cwd=cwd)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0
    return shown.decode(errors="replace")


def test_progress_bars_on_a_terminal_only_without_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    shown = _on_a_terminal(["demo", "--tickets", "6", "--db", url], tmp_path)
    assert "triaging tickets" in shown and "6/6" in shown
    shown = _on_a_terminal(["demo", "--tickets", "3", "--db", url, "--json"], tmp_path)
    assert "triaging tickets" not in shown
    shown = _on_a_terminal(["ledger", "export", "--db", url, "--out", str(tmp_path / "l.jsonl")], tmp_path)
    assert "exporting ledger" in shown
    # Not a terminal: no bar at all.
    res = subprocess.run([sys.executable, "-m", "tether", "ledger", "export", "--db", url, "--out", str(tmp_path / "m.jsonl")],
                         capture_output=True, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0 and b"exporting ledger" not in res.stderr and b"wrote" in res.stderr


def test_a_killed_workflow_refuses_queued_runs_too(db_url: str) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["kill", "support_triage", "--reason", "incident 42", "--db", db_url])
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(cli, ["run", "support_triage", "--queue", "--input", '{"ticket_id": "T-1"}', "--db", db_url])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "killed (incident 42)" in res.stderr
    with Database(db_url).read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 0
