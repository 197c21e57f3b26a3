"""The action ledger: append-only and hash-chained.

Entry n holds `prev_hash` (the hash of entry n-1, or 64 zeros for the first)
and `hash` = SHA-256 of the canonical JSON (RFC 8785) of
{seq, ts, run_id, kind, body, prev_hash}. Changing, deleting, inserting or
reordering entries breaks the chain at the first entry touched; the
`ledger_head` row (updated in the same transaction as each append) catches a
truncated tail. An attacker who can rewrite every row *and* the head can forge a
consistent chain: anchor the head outside the database (export manifests) for that.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import sqlalchemy as sa

from tether.errors import LedgerError
from tether.record.canonical import canonical_json, sha256_hex
from tether.record.db import LEDGER_LOCK, Database, pg_lock, timestamp
from tether.record.secrets import scrub
from tether.record.tables import ledger_entries, ledger_head

GENESIS = "0" * 64


@dataclass(frozen=True)
class LedgerEntry:
    """One hash-chained ledger entry: its kind, body, run, and the hashes linking it to the one before."""

    seq: int
    ts: str
    run_id: str | None
    kind: str
    body: dict[str, Any]
    prev_hash: str
    hash: str
    # The body as stored; it must be exactly the canonical JSON of `body`, or a
    # reader of the text (SQL json functions take the first of duplicate keys)
    # could see other values than the hash covers.
    stored_body: str | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "run_id": self.run_id,
            "kind": self.kind,
            "body": self.body,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def entry_hash(seq: int, ts: str, run_id: str | None, kind: str, body: Any, prev_hash: str) -> str:
    return _hash(seq, ts, run_id, kind, canonical_json(body), prev_hash)


def _hash(seq: int, ts: str, run_id: str | None, kind: str, body_bytes: bytes, prev_hash: str) -> str:
    # The canonical JSON (RFC 8785) of {seq, ts, run_id, kind, body, prev_hash}, built
    # around the body's canonical bytes: JCS orders keys, and these keys are ASCII.
    parts = [b'{"body":', body_bytes]
    for key, value in (("kind", kind), ("prev_hash", prev_hash), ("run_id", run_id), ("seq", seq), ("ts", ts)):
        parts += [b',"', key.encode(), b'":', canonical_json(value)]
    parts.append(b"}")
    return sha256_hex(b"".join(parts))


@dataclass(frozen=True)
class VerifyReport:
    """The result of checking the ledger's hash chain: ok, how many entries, and the first bad one."""

    ok: bool
    entries: int
    first_bad: int | None = None
    problem: str | None = None
    head_hash: str | None = None

    def message(self) -> str:
        if self.ok:
            return f"ledger ok: {self.entries} entries, head {self.head_hash or GENESIS}"
        return f"ledger broken at entry {self.first_bad}: {self.problem}"


def append(conn: sa.Connection, kind: str, body: dict[str, Any], run_id: str | None = None) -> LedgerEntry:
    """Append one entry inside the caller's transaction (it commits with it)."""
    return append_many(conn, [(kind, body)], run_id)[0]


def append_many(conn: sa.Connection, items: Sequence[tuple[str, dict[str, Any]]], run_id: str | None = None) -> list[LedgerEntry]:
    """Append entries in order inside the caller's transaction: one head lock, one insert."""
    if not items:
        return []
    pg_lock(conn, LEDGER_LOCK)  # FOR UPDATE below cannot lock a head row that does not exist yet
    head = conn.execute(
        sa.select(ledger_head.c.seq, ledger_head.c.hash).where(ledger_head.c.id == 1).with_for_update()
    ).first()
    seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS)
    ts = timestamp()
    out: list[LedgerEntry] = []
    rows = []
    for kind, body in items:
        seq += 1
        body_bytes = canonical_json(scrub(body))  # no handed-out secret is hashed into the chain or stored
        h = _hash(seq, ts, run_id, kind, body_bytes, prev_hash)
        text = body_bytes.decode()
        rows.append({"seq": seq, "ts": ts, "run_id": run_id, "kind": kind, "body": text, "prev_hash": prev_hash, "hash": h})
        out.append(LedgerEntry(seq, ts, run_id, kind, json.loads(text), prev_hash, h))
        prev_hash = h
    conn.execute(ledger_entries.insert(), rows)
    if head:
        conn.execute(ledger_head.update().where(ledger_head.c.id == 1).values(seq=seq, hash=prev_hash))
    else:
        conn.execute(ledger_head.insert().values(id=1, seq=seq, hash=prev_hash))
    return out


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _body_is_canonical(text: str) -> bool:
    try:
        return canonical_json(json.loads(text, object_pairs_hook=_strict_object)).decode() == text
    except (ValueError, TypeError):
        return False


def _entry_problem(e: LedgerEntry) -> str | None:
    if e.stored_body is not None and not _body_is_canonical(e.stored_body):
        return "stored body is not the canonical JSON its hash covers (entry was altered)"
    if entry_hash(e.seq, e.ts, e.run_id, e.kind, e.body, e.prev_hash) != e.hash:
        return "content does not match its hash (entry was altered)"
    return None


def verify_entries(entries: Iterable[LedgerEntry], head: tuple[int, str] | None = None) -> VerifyReport:
    """Check a whole ledger (from the database or a full export) in order from entry 1."""
    expected_seq, expected_prev, count = 1, GENESIS, 0
    for e in entries:
        if e.seq != expected_seq:
            what = "missing" if e.seq > expected_seq else "out of order or duplicated"
            return VerifyReport(False, count, expected_seq, f"entry {expected_seq} is {what} (found seq {e.seq})")
        if e.prev_hash != expected_prev:
            return VerifyReport(False, count, e.seq, "prev_hash does not match the previous entry's hash")
        problem = _entry_problem(e)
        if problem:
            return VerifyReport(False, count, e.seq, problem)
        expected_seq, expected_prev, count = e.seq + 1, e.hash, count + 1
    last = expected_prev
    if head is not None and head != (count, last):
        head_seq = head[0]
        if head_seq > count:
            return VerifyReport(False, count, count + 1, f"entries {count + 1}..{head_seq} are missing (tail removed)")
        if head_seq < count:
            return VerifyReport(False, count, head_seq + 1, f"entry {head_seq + 1} was added outside the ledger")
        return VerifyReport(False, count, count, "last entry does not match the recorded ledger head")
    return VerifyReport(True, count, head_hash=last)


def verify_partial(entries: Iterable[LedgerEntry]) -> VerifyReport:
    """Check a partial export (one run's entries, or a slice): every entry's own hash,
    and the chain link wherever two entries are consecutive. Gaps are expected."""
    prev: LedgerEntry | None = None
    count = 0
    for e in entries:
        if prev is not None and e.seq <= prev.seq:
            return VerifyReport(False, count, e.seq, f"entry {e.seq} is out of order (after {prev.seq})")
        if prev is not None and e.seq == prev.seq + 1 and e.prev_hash != prev.hash:
            return VerifyReport(False, count, e.seq, "prev_hash does not match the previous entry's hash")
        problem = _entry_problem(e)
        if problem:
            return VerifyReport(False, count, e.seq, problem)
        prev, count = e, count + 1
    return VerifyReport(True, count, head_hash=prev.hash if prev else None)


class Ledger:
    """The action ledger: append-only, hash-chained entries; query, verify, export."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, kind: str, body: dict[str, Any], run_id: str | None = None) -> LedgerEntry:
        with self.db.transaction() as conn:
            return append(conn, kind, body, run_id)

    def entries(self, run_id: str | None = None) -> Iterator[LedgerEntry]:
        with self.db.read() as conn:
            yield from _entries(conn, run_id)

    def head(self) -> tuple[int, str]:
        with self.db.read() as conn:
            return _head(conn)

    def verify(self) -> VerifyReport:
        """Entries and head from one snapshot, so appends while verifying are no false alarm."""
        with self.db.read() as conn:
            if conn.dialect.name != "sqlite":  # SQLite's read transaction is already a snapshot
                conn.execution_options(isolation_level="REPEATABLE READ")
            head = _head(conn)
            return verify_entries(_entries(conn, None), head=head)

    def export(self, out: TextIO, run_id: str | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        total = self.head()[0] if progress else 0
        n = 0
        for e in self.entries(run_id):
            out.write(json.dumps(e.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
            if progress and n % 1000 == 0:
                progress(min(e.seq, total), total)
        if progress:
            progress(total, total)
        return n


def _entries(conn: sa.Connection, run_id: str | None) -> Iterator[LedgerEntry]:
    q = sa.select(ledger_entries).order_by(ledger_entries.c.seq)
    if run_id is not None:
        q = q.where(ledger_entries.c.run_id == run_id)
    for r in conn.execute(q).yield_per(1000):
        try:
            body = json.loads(r.body)
        except ValueError:
            body = {"__unparseable__": r.body}
        yield LedgerEntry(r.seq, r.ts, r.run_id, r.kind, body, r.prev_hash, r.hash, stored_body=r.body)


def _head(conn: sa.Connection) -> tuple[int, str]:
    row = conn.execute(sa.select(ledger_head.c.seq, ledger_head.c.hash)).first()
    return (row.seq, row.hash) if row else (0, GENESIS)


def read_export(lines: Iterable[str], source: str = "export") -> Iterator[LedgerEntry]:
    """Parse a JSONL export back into entries (for verifying an auditor's copy)."""
    lineno = 0
    try:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            d = json.loads(line, object_pairs_hook=_strict_object)
            entry = LedgerEntry(d["seq"], d["ts"], d["run_id"], d["kind"], d["body"], d["prev_hash"], d["hash"])
            types = (int, str, (str, type(None)), str, dict, str, str)
            if isinstance(entry.seq, bool) or not all(isinstance(v, t) for v, t in zip(entry.to_json().values(), types, strict=True)):
                raise TypeError("a field has the wrong type")
            yield entry
    except UnicodeDecodeError as e:  # before ValueError, of which it is a kind
        raise LedgerError(f"{source}: not a text file ({e.reason})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise LedgerError(f"{source}:{lineno}: not a ledger entry ({e})") from None
