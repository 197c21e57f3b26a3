"""The control plane under load, on 127.0.0.1: `tether serve` in a subprocess (real uvicorn).

- listing runs (GET /api/runs?limit=50) with concurrent clients: requests/s, p50, p99
- approving waiting refunds (POST /api/approvals/ID/approve, each resumes and finishes its run)
- the kill switch (POST /api/workflows/W/kill) to the last in-flight run halted, for runs
  driven by another process's threads, at two step lengths; and the per-step cost of the check

    python bench/server.py [--tickets 200] [--clients 8] [--requests 400] [--approvals 120] [--inflight 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from pydantic import BaseModel

from tether import End, PolicySet, RunContext, Runtime, Workflow
from tether.orchestration import rollout
from tether.record.db import Database
from tether.server.keys import create_key
from tether.workflows.triage import data, systems
from tether.workflows.triage.demo import run_demo
from tether.workflows.triage.flow import refund_target, workflow
from tether.workflows.triage.intents import ROUTES


class Job(BaseModel):
    ticket_id: str
    steps: int = 1000
    delay_ms: int = 10


# The server loads no workflow code for a kill, so these runs need no import path of their own.
ALLOW = PolicySet.from_text("default: allow\npolicies: []\n", "slow.yaml")


def work(run: RunContext[Job, None]) -> str | End:
    time.sleep(run.input.delay_ms / 1000)
    return End("completed") if run.step >= run.input.steps else "work"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def load(url: str, key: str, clients: int, jobs: list[tuple[str, str, Any]]) -> tuple[float, list[float], dict[int, int]]:
    """Send `jobs` (method, path, body) from `clients` threads, each with its own connection."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    shares = [jobs[i::clients] for i in range(clients)]

    def client(mine: list[tuple[str, str, Any]]) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            for method, path, body in mine:
                t0 = time.perf_counter()
                r = c.request(method, path, json=body)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1

    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, codes


def report(name: str, wall: float, lat: list[float], codes: dict[int, int]) -> None:
    print(f"{name:<34} {len(lat) / wall:8.1f} req/s   p50 {percentile(lat, 50) * 1000:7.1f} ms   "
          f"p99 {percentile(lat, 99) * 1000:7.1f} ms   statuses {codes}")  # fmt: skip


def kill_latency(db: Database, url: str, key: str, inflight: int, delay_ms: int) -> tuple[float, float, list[int]]:
    """Seconds from sending the kill to its answer and to the last in-flight run halted; the halted runs' steps."""
    name = f"bench_slow_{delay_ms}"
    wf = Workflow(name, input=Job, tools=[], policy=ALLOW, max_steps=2000, ref=name)
    wf.state("work", initial=True, goes_to=["work"])(work)
    ended: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def drive(i: int) -> None:
        rt = Runtime(db)
        try:
            r = rt.start(wf, {"ticket_id": f"B-{delay_ms}-{i}", "delay_ms": delay_ms}, started_by="bench")
        finally:
            rt.close()
        with lock:
            ended.append((time.perf_counter(), r))

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(inflight)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every run is well into its steps
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        t0 = time.perf_counter()
        r = c.post(f"/api/workflows/{name}/kill", json={"reason": "bench"})
        answered = time.perf_counter() - t0
        assert r.status_code == 200, r.text
    for t in threads:
        t.join()
    assert all(res.status == "halted" for _, res in ended), [res.status for _, res in ended]
    return answered, max(t for t, _ in ended) - t0, sorted(res.steps for _, res in ended)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--approvals", type=int, default=120)
    ap.add_argument("--inflight", type=int, default=8)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-server-"))
    db_url = f"sqlite:///{tmp / 'tether.db'}"
    db = Database(db_url)
    t0 = time.perf_counter()
    run_demo(db, tickets=args.tickets)
    bank = systems.Systems(db)
    data.seed_bank(bank)
    customers = [c for c in (data.customer_id(i) for i in range(data.CUSTOMERS))
                 if (t := refund_target(ROUTES["request_refund"], bank.lookup_customer(c)["transactions"])) and 100 < t[1] <= 1000]  # fmt: skip
    customers = customers[: args.approvals]
    with db.transaction() as conn:
        conn.execute(systems.tickets.insert(), [
            {"id": f"B-REF-{i}", "customer_id": c, "text": "I would like a refund for my last purchase please",
             "status": "new", "created_at": "t", "updated_at": "t"} for i, c in enumerate(customers)])  # fmt: skip
    rt = Runtime(db)
    try:
        waiting = [rt.start(workflow, {"ticket_id": f"B-REF-{i}"}, started_by="intake") for i in range(len(customers))]
    finally:
        rt.close()
    approvals = [r.approval_id for r in waiting if r.approval_id]
    with db.read() as conn:
        total_runs = conn.execute(sa.text("SELECT count(*) FROM runs")).scalar()
    print(f"setup: {total_runs} runs, {len(approvals)} refunds waiting, in {time.perf_counter() - t0:.1f} s")
    keys = {"op": create_key(db, name="olga", role="operator")[0], "alice": create_key(db, name="alice", role="approver", tools="payments.*")[0]}

    port = free_port()
    env = {**os.environ, "TETHER_TRACE_STORE": os.environ.get("TETHER_TRACE_STORE", "on")}
    server = subprocess.Popen([sys.executable, "-m", "tether", "serve", "--host", "127.0.0.1", "--port", str(port), "--db", db_url],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start: {server.stderr.read().decode() if server.stderr else ''}")
            time.sleep(0.1)
        print(f"tether serve on {url} (uvicorn, 1 process); {os.cpu_count()} cores shared with the clients")

        for clients in sorted({1, args.clients}):
            jobs = [("GET", "/api/runs?limit=50", None)] * args.requests
            report(f"list runs, {clients} clients", *load(url, keys["op"], clients, jobs))
        jobs = [("GET", "/api/runs?limit=50&status=completed&workflow=support_triage", None)] * args.requests
        report(f"list runs filtered, {args.clients} clients", *load(url, keys["op"], args.clients, jobs))

        half = len(approvals) // 2
        jobs = [("POST", f"/api/approvals/{a}/approve", {"reason": "bench"}) for a in approvals[:half]]
        report("approve + resume, 1 client", *load(url, keys["alice"], 1, jobs))
        jobs = [("POST", f"/api/approvals/{a}/approve", {"reason": "bench"}) for a in approvals[half:]]
        report(f"approve + resume, {args.clients // 2} clients", *load(url, keys["alice"], max(1, args.clients // 2), jobs))

        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            rollout.kill_reason(db, "support_triage")
        print(f"kill-switch check, paid before every step of every run: {(time.perf_counter() - t0) / n * 1e6:.0f} us")
        for delay in (10, 100):
            answered, secs, steps = kill_latency(db, url, keys["op"], args.inflight, delay)
            print(f"kill switch (steps of {delay} ms): answered in {answered * 1000:.1f} ms; last of {args.inflight} in-flight "
                  f"runs halted {secs * 1000:.1f} ms after the request (halted after {steps[0]}..{steps[-1]} steps)")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
