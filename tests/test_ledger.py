from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tether import Database, Ledger
from tether.cli import cli
from tether.record.canonical import canonical_json, sha256_hex
from tether.record.ledger import GENESIS


@pytest.fixture
def filled(db: Database) -> Ledger:
    led = Ledger(db)
    for i in range(6):
        led.append("note", {"i": i, "text": f"entry {i}", "amount_usd": i * 10.5}, run_id=f"run_{i % 2}")
    return led


def _exec(db: Database, sql: str) -> None:
    with db.transaction() as conn:
        conn.exec_driver_sql(sql)


def test_chain_links_and_hashes_are_recomputable(filled: Ledger) -> None:
    entries = list(filled.entries())
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev_hash == GENESIS
    for prev, e in zip(entries, entries[1:], strict=False):
        assert e.prev_hash == prev.hash
    e = entries[3]
    payload = {"seq": e.seq, "ts": e.ts, "run_id": e.run_id, "kind": e.kind, "body": e.body, "prev_hash": e.prev_hash}
    assert sha256_hex(canonical_json(payload)) == e.hash  # any JCS implementation can check it
    report = filled.verify()
    assert report.ok and report.entries == 6 and report.head_hash == entries[-1].hash


@pytest.mark.parametrize(
    ("sql", "first_bad", "problem"),
    [
        ("UPDATE ledger_entries SET body = replace(body, 'entry 3', 'entry 9') WHERE seq = 4", 4, "altered"),
        ("UPDATE ledger_entries SET kind = 'other' WHERE seq = 2", 2, "altered"),
        ("DELETE FROM ledger_entries WHERE seq = 3", 3, "missing"),
        ("DELETE FROM ledger_entries WHERE seq = 6", 6, "tail removed"),
        ("UPDATE ledger_entries SET seq = seq + 100 WHERE seq >= 4; UPDATE ledger_entries SET seq = 5 WHERE seq = 104;"
         "UPDATE ledger_entries SET seq = 4 WHERE seq = 105; UPDATE ledger_entries SET seq = 6 WHERE seq = 106", 4, "prev_hash"),
        ("INSERT INTO ledger_entries (seq, ts, run_id, kind, body, prev_hash, hash) SELECT 7, ts, run_id, kind, body, hash, hash"
         " FROM ledger_entries WHERE seq = 6", 7, "altered"),
    ],
)  # fmt: skip
def test_tampering_is_found_at_the_first_bad_entry(filled: Ledger, sql: str, first_bad: int, problem: str) -> None:
    for stmt in sql.split(";"):
        _exec(filled.db, stmt)
    report = filled.verify()
    assert not report.ok
    assert report.first_bad == first_bad
    assert problem in (report.problem or "")


def test_insertion_in_the_middle_breaks_the_chain(filled: Ledger) -> None:
    _exec(filled.db, "UPDATE ledger_entries SET seq = seq + 100 WHERE seq >= 3")  # make room
    _exec(filled.db, "UPDATE ledger_entries SET seq = seq - 99 WHERE seq >= 100")
    _exec(filled.db, "INSERT INTO ledger_entries SELECT 3, ts, run_id, kind, body, prev_hash, hash FROM ledger_entries WHERE seq = 2")
    report = filled.verify()
    assert not report.ok and report.first_bad == 3


def test_a_forged_entry_with_a_valid_hash_is_caught_by_the_head(filled: Ledger) -> None:
    last = list(filled.entries())[-1]
    body = {"i": 99}
    h = sha256_hex(canonical_json({"seq": 7, "ts": last.ts, "run_id": None, "kind": "note", "body": body, "prev_hash": last.hash}))
    with filled.db.transaction() as conn:
        conn.exec_driver_sql(
            "INSERT INTO ledger_entries (seq, ts, run_id, kind, body, prev_hash, hash) VALUES (7, ?, NULL, 'note', ?, ?, ?)",
            (last.ts, canonical_json(body).decode(), last.hash, h),
        )
    report = filled.verify()
    assert not report.ok and report.first_bad == 7 and "added outside the ledger" in (report.problem or "")


def test_export_round_trip_and_verify_file(filled: Ledger, db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "ledger.jsonl"
    r = CliRunner().invoke(cli, ["ledger", "export", "--db", db_url, "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["prev_hash"] == GENESIS
    r = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(out)])
    assert r.exit_code == 0 and "ledger ok: 6 entries" in r.output
    doctored = lines[:2] + [lines[2].replace("entry 2", "entry X")] + lines[3:]
    out.write_text("\n".join(doctored) + "\n")
    r = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(out)])
    assert r.exit_code == 1 and "ledger broken at entry 3" in r.stderr
    out.write_text("not json\n")
    r = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(out)])
    assert r.exit_code == 1 and f"error: {out}:1: not a ledger entry" in r.stderr


def test_cli_verify_names_the_bad_entry(filled: Ledger, db_url: str) -> None:
    r = CliRunner().invoke(cli, ["ledger", "verify", "--db", db_url])
    assert r.exit_code == 0 and r.output.startswith("ledger ok: 6 entries")
    _exec(filled.db, "UPDATE ledger_entries SET body = '{\"i\":1}' WHERE seq = 2")
    r = CliRunner().invoke(cli, ["ledger", "verify", "--db", db_url])
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: ledger broken at entry 2: content does not match its hash (entry was altered)"
    r = CliRunner().invoke(cli, ["ledger", "verify", "--db", db_url, "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["first_bad"] == 2


def test_missing_and_corrupt_database(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "t.db"
    r = CliRunner().invoke(cli, ["ledger", "verify", "--db", f"sqlite:///{missing}"])
    assert r.exit_code == 1 and r.stderr.strip() == f"error: database not found: {missing} (run `tether demo` or pass --db)"
    assert not missing.exists() and not missing.parent.exists()  # nothing created

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    before = corrupt.read_bytes()
    for args in (["ledger", "verify"], ["runs"], ["approvals"], ["demo", "--tickets", "1"]):
        r = CliRunner().invoke(cli, [*args, "--db", f"sqlite:///{corrupt}"])
        assert r.exit_code == 1, args
        assert r.stderr.startswith(f"error: cannot read database sqlite:///{corrupt}: file is not a database")
    assert corrupt.read_bytes() == before  # untouched

    foreign = tmp_path / "foreign.db"
    eng = sa.create_engine(f"sqlite:///{foreign}")
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id INTEGER)")
    eng.dispose()
    r = CliRunner().invoke(cli, ["ledger", "verify", "--db", f"sqlite:///{foreign}"])
    assert r.exit_code == 1 and "is not a tether database" in r.stderr
    r = CliRunner().invoke(cli, ["ledger", "verify", "--db", "nosuchdialect://x"])
    assert r.exit_code == 1 and r.stderr.startswith("error: cannot open database")


def test_schema_revision_constant_matches_the_migrations() -> None:
    from alembic.script import ScriptDirectory

    from tether.record.db import _alembic_config
    from tether.record.migrations import SCHEMA_REVISION

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == SCHEMA_REVISION
