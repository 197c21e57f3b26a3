"""`tether demo` and the commands around it, through the real console script."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

TETHER = [sys.executable, "-m", "tether"]


def tether(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TETHER, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cwd = tmp_path_factory.mktemp("demo")
    p = tether("demo", "--json", cwd=cwd)
    assert p.returncode == 0, p.stderr
    return cwd, json.loads(p.stdout)


def test_demo_summary_matches_the_systems_of_record(demo: tuple[Path, dict]) -> None:
    cwd, s = demo
    assert s["tickets"] == 200 and s["ledger_ok"] is True
    assert s["completed"] + s["escalated"] + s["awaiting_approval"] + s["failed"] == 200
    assert s["failed"] == 0 and s["completed"] >= 150
    assert 1 <= s["max_steps"] <= 12
    assert s["denied"] >= 1 and s["awaiting_approval"] == len(s["pending_approvals"])

    db = sqlite3.connect(cwd / ".tether" / "tether.db")  # the default database, no --db given
    batch = f"TKT-{s['batch']}-%"
    status = dict(db.execute("select status, count(*) from helpdesk_tickets where id like ? group by status", (batch,)).fetchall())
    assert status.get("escalated", 0) == s["escalated"]
    # Completed runs either solved their ticket or left it open for an engineering issue.
    assert status.get("solved", 0) + s["actions"].get("tracker.open_issue", 0) == s["completed"]
    assert db.execute("select count(*) from payments_refunds").fetchone()[0] == s["actions"].get("payments.refund", 0)
    assert db.execute("select count(*) from helpdesk_replies where internal = 0").fetchone()[0] == s["actions"]["helpdesk.reply"]
    runs = dict(db.execute("select status, count(*) from runs group by status").fetchall())
    assert runs.get("waiting_approval", 0) == s["awaiting_approval"]
    # Every executed refund above $100 has an approval by someone other than the run's starter.
    rows = db.execute(
        "select r.amount_cents, a.decided_by, a.status from payments_refunds r "
        "left join approvals a on a.args like '%' || r.transaction_id || '%' and a.status = 'approved'"
    ).fetchall()
    assert all(cents <= 10000 or (by not in (None, "demo")) for cents, by, _ in rows)


def test_cli_around_the_demo(demo: tuple[Path, dict]) -> None:
    cwd, s = demo
    p = tether("ledger", "verify", cwd=cwd)
    assert p.returncode == 0 and p.stdout.startswith("ledger ok:")
    p = tether("runs", "stats", "--json", cwd=cwd)
    assert json.loads(p.stdout)["runs"] == 200
    p = tether("runs", "--limit", "1", "--json", cwd=cwd)
    [row] = json.loads(p.stdout)
    p = tether("runs", "show", row["id"], cwd=cwd)
    assert p.returncode == 0 and "choice" in p.stdout and "intent ->" in p.stdout
    p = tether("runs", "show", "run_nope", cwd=cwd)
    assert p.returncode == 1 and p.stderr.strip() == "error: no run with id 'run_nope'"
    if s["pending_approvals"]:
        apr = s["pending_approvals"][0]
        p = tether("approvals", "--json", cwd=cwd)
        assert apr in {a["id"] for a in json.loads(p.stdout)}
        p = tether("approvals", "approve", apr, "--as", "demo", cwd=cwd)
        assert p.returncode == 1 and "demo started run" in p.stderr
        p = tether("approvals", "deny", apr, "--as", "auditor1", "--reason", "no receipt", cwd=cwd)
        assert p.returncode == 0 and "escalated" in p.stdout
    p = tether("approvals", "approve", "apr_missing", "--as", "x", cwd=cwd)
    assert p.returncode == 1 and p.stderr.strip() == "error: no approval request with id 'apr_missing'"


def test_tampered_ledger_is_named(demo: tuple[Path, dict], tmp_path: Path) -> None:
    cwd, _ = demo
    copy = tmp_path / "copy.db"
    src = sqlite3.connect(cwd / ".tether" / "tether.db")
    src.backup(sqlite3.connect(copy))
    db = sqlite3.connect(copy)
    db.execute("update ledger_entries set body = replace(body, '\"allow\"', '\"deny\"') where seq = (select min(seq) from ledger_entries where kind = 'decision')")
    db.commit()
    bad = db.execute("select min(seq) from ledger_entries where kind = 'decision'").fetchone()[0]
    p = tether("ledger", "verify", "--db", f"sqlite:///{copy}", cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: ledger broken at entry {bad}: content does not match its hash (entry was altered)"


def test_human_summary(tmp_path: Path) -> None:
    p = tether("demo", "--tickets", "20", "--seed", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for line in ("tickets               20", "ledger                verified", "runs/s", "denied by policy", "max steps in a run"):
        assert line in p.stdout
