"""Crash harness: workers killed with SIGKILL at random moments must lose nothing and repeat nothing.

Starts N `tether worker` processes on SQLite and on PostgreSQL, queues triage
runs, kills random workers with SIGKILL (tools sleep after their effect and
before its record, so some kills land in that window), starts new workers,
approves the runs that wait for a person and queues their resumption, waits
for every run to end, then checks the systems of record and the ledger. Prints
one JSON line per database.

    python bench/crash.py [--runs 200] [--workers 3] [--kills 6] [--db sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
from pgtemp import TempPostgres  # noqa: E402

from tether.guardrails.approvals import ApprovalInbox  # noqa: E402
from tether.orchestration import engine  # noqa: E402
from tether.orchestration.runtime import FINAL_STATUSES, WAITING  # noqa: E402
from tether.record.db import Database, timestamp  # noqa: E402
from tether.record.ledger import Ledger  # noqa: E402
from tether.record.tables import ledger_entries, run_events, runs, workers  # noqa: E402
from tether.workflows.triage import data, systems  # noqa: E402
from tether.workflows.triage.flow import workflow  # noqa: E402

WORKER = [sys.executable, "-c", "from tether.cli import main; main()", "worker"]


def prepare(db: Database, n: int, seed: int) -> list[str]:
    """Seed the bank and file `n` inbound tickets; returns their ids."""
    bank = systems.Systems(db)
    data.seed_bank(bank)
    picked = data.demo_tickets(n, seed)
    ids = [f"TKT-crash-{i:04d}" for i in range(n)]
    now = timestamp()
    with db.transaction() as conn:
        conn.execute(systems.tickets.insert(), [
            {"id": t, "customer_id": c, "text": ex.text, "status": "new", "created_at": now, "updated_at": now}
            for t, (ex, c) in zip(ids, picked, strict=True)
        ])  # fmt: skip
    return ids


def enqueue_all(db: Database, tickets: list[str]) -> list[str]:
    client = engine.open_client(db)
    try:
        return [engine.enqueue(db, workflow, {"ticket_id": t}, started_by="intake", client=client) for t in tickets]
    finally:
        client.destroy()


def start_worker(url: str, concurrency: int, pause_s: float, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, systems.EFFECT_PAUSE_ENV: str(pause_s)}
    with log.open("ab") as out:
        return subprocess.Popen([*WORKER, "--db", url, "--concurrency", str(concurrency), "--heartbeat", "0.5",
                                 "--dead-after", "3"], env=env, stdout=out, stderr=out)  # fmt: skip


def statuses(db: Database, run_ids: list[str]) -> Counter[str]:
    with db.read() as conn:
        got = dict(conn.execute(sa.select(runs.c.id, runs.c.status).where(runs.c.id.in_(run_ids))).all())
    return Counter(got.get(r, "queued") for r in run_ids)


def owners(client: Any, db: Database) -> set[int]:
    """Process ids of the workers driving runs right now."""
    executors = {w.executor_id for w in client.list_workflows(status="PENDING", load_input=False, load_output=False)}
    with db.read() as conn:
        return set(conn.execute(sa.select(workers.c.pid).where(workers.c.id.in_(executors))).scalars())


def approve_waiting(db: Database, run_ids: list[str]) -> int:
    """A second person approves every waiting run; its resumption is queued."""
    inbox = ApprovalInbox(db)
    n = 0
    client = engine.open_client(db)
    try:
        for req in inbox.list():
            if req.run_id in run_ids:
                inbox.decide(req.id, approve=True, by="lead", reason="crash harness")
                engine.enqueue_resume(db, req.run_id, client=client)
                n += 1
    finally:
        client.destroy()
    return n


def check(db: Database, run_ids: list[str]) -> dict[str, Any]:
    """Compare the effects in the systems of record with what the journals say happened."""
    effectful = {t.name for t in workflow.tools if t.side_effect}
    expected: set[str] = set()
    journal_results: set[tuple[str, str]] = set()
    answered_by_key = 0  # effects made before a crash and not recorded: the resumed call got the recorded result
    with db.read() as conn:
        for run_id, step, call_id, ev in conn.execute(
            sa.select(run_events.c.run_id, run_events.c.step, run_events.c.call_id, run_events.c.data)
            .where(run_events.c.run_id.in_(run_ids), run_events.c.kind == "result")
        ):  # fmt: skip
            journal_results.add((run_id, call_id))
            answered_by_key += isinstance(ev.get("output"), dict) and ev["output"].get("replayed") is True
            if ev["tool"] in effectful and ev["status"] == "ok":
                expected.add(hashlib.sha256(f"{run_id}/{step}/{call_id}".encode()).hexdigest()[:32])
        seen = set(conn.execute(sa.select(systems.idempotency.c.key)).scalars())
        # Effects without a key of their own: more than one per ticket is a repeated effect.
        physical = 0
        for table, where in ((systems.replies, systems.replies.c.internal.is_(False)), (systems.refunds, sa.true()),
                             (systems.issues, sa.true())):  # fmt: skip
            counts = conn.execute(sa.select(table.c.ticket_id, sa.func.count()).where(where).group_by(table.c.ticket_id))
            physical += sum(n - 1 for _, n in counts if n > 1)
        entries = conn.execute(sa.select(ledger_entries.c.run_id, ledger_entries.c.kind, ledger_entries.c.body)
                               .where(ledger_entries.c.run_id.in_(run_ids))).all()  # fmt: skip
    per_run = Counter((r, k) for r, k, _ in entries)
    results = Counter((r, json.loads(b)["call_id"]) for r, k, b in entries if k == "result")
    ledger_dupes = sum(n - 1 for n in results.values() if n > 1) + sum(
        n - 1 for (_, k), n in per_run.items() if k in ("run_started", "run_finished") and n > 1
    )
    ledger_lost = len(journal_results - set(results)) + sum(1 for r in run_ids if per_run[(r, "run_started")] != 1)
    verify = Ledger(db).verify()
    return {
        "side_effects_expected": len(expected),
        "side_effects_seen": len(seen),
        "duplicate_side_effects": len(seen - expected) + physical,
        "effects_answered_by_key": answered_by_key,
        "ledger_ok": verify.ok and ledger_dupes == 0 and ledger_lost == 0,
        "ledger_entries": verify.entries,
        "ledger_duplicates": ledger_dupes,
        "ledger_lost": ledger_lost,
    }


def crash_run(url: str, *, n: int, workers: int, kills: int, concurrency: int, pause_s: float, seed: int,
              timeout_s: float, logdir: Path) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    db = Database(url)
    tickets = prepare(db, n, seed)
    t0 = time.perf_counter()
    run_ids = enqueue_all(db, tickets)
    log = logdir / f"workers-{db.url.get_backend_name()}.log"  # one per backend: counts must not mix
    procs = [start_worker(url, concurrency, pause_s, log) for _ in range(workers)]
    client = engine.open_client(db)
    done_kills, approved = 0, 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            st = statuses(db, run_ids)
            unsettled = n - sum(st[s] for s in (*FINAL_STATUSES, WAITING))
            if done_kills < kills and unsettled > 0:
                time.sleep(rng.uniform(0.3, 2.5))
                busy = [i for i, p in enumerate(procs) if p.pid in owners(client, db)]
                if not busy:  # kill only a worker in the middle of runs
                    continue
                victim = rng.choice(busy)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                done_kills += 1
                procs[victim] = start_worker(url, concurrency, pause_s, log)  # a new worker, a new id
                continue
            if unsettled == 0:
                if st[WAITING] == 0:
                    break
                approved += approve_waiting(db, run_ids)
            time.sleep(0.2)
    finally:
        client.destroy()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    wall = time.perf_counter() - t0
    st = statuses(db, run_ids)
    out = {
        "db": db.url.get_backend_name(),
        "runs": n,
        "finished": sum(st[s] for s in FINAL_STATUSES),
        "statuses": dict(st),
        "approved": approved,
        **check(db, run_ids),
        "kills": done_kills,
        "takeovers": len(re.findall(r"took over [1-9]", log.read_text())),
        "declared_dead": log.read_text().count("was declared dead"),  # stalled past --dead-after: exited
        "workers": workers,
        "wall_s": round(wall, 2),
    }
    db.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--pause", type=float, default=0.2, help="seconds each tool sleeps after its effect")
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--pg-url", default=None, help="an empty PostgreSQL database to use instead of starting one")
    args = ap.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="tether-crash-") as tmp:
        targets = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
        for which in targets:
            pg = None
            if which == "sqlite":
                url = f"sqlite:///{tmp}/crash.db"
            elif args.pg_url:
                url = args.pg_url
            else:
                pg = TempPostgres().start()
                url = pg.create_db("crash")
            try:
                res = crash_run(url, n=args.runs, workers=args.workers, kills=args.kills, concurrency=args.concurrency,
                                pause_s=args.pause, seed=args.seed, timeout_s=args.timeout, logdir=Path(tmp))  # fmt: skip
            finally:
                if pg:
                    pg.stop()
            print(json.dumps(res), flush=True)
            ok &= res["finished"] == res["runs"] and res["duplicate_side_effects"] == 0 and res["ledger_ok"]
            ok &= res["side_effects_seen"] == res["side_effects_expected"]
        if not ok:
            for log in sorted(Path(tmp).glob("workers-*.log")):
                print(log.read_text()[-3000:], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
