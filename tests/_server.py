"""A real uvicorn server on 127.0.0.1 in a thread, and a triage database with refunds waiting."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from tether.orchestration.runtime import Runtime
from tether.record.db import Database
from tether.workflows.triage import data, systems
from tether.workflows.triage.flow import refund_target, workflow
from tether.workflows.triage.intents import ROUTES


class LiveServer:
    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def refund_customers(db: Database, low: float = 100, high: float = 1000) -> list[str]:
    """Customers whose newest card payment would be refunded for an amount in (low, high]."""
    bank = systems.Systems(db)
    data.seed_bank(bank)
    found = []
    for i in range(data.CUSTOMERS):
        cid = data.customer_id(i)
        target = refund_target(ROUTES["request_refund"], bank.lookup_customer(cid)["transactions"])
        if target and low < target[1] <= high:
            found.append(cid)
    return found


def add_ticket(db: Database, tid: str, customer: str, text: str = "I would like a refund for my last purchase please") -> str:
    with db.transaction() as conn:
        conn.execute(systems.tickets.insert().values(id=tid, customer_id=customer, text=text, status="new",
                                                     created_at="t", updated_at="t"))  # fmt: skip
    return tid


def waiting_refund(db: Database, tid: str, customer: str, started_by: str = "intake") -> Any:
    add_ticket(db, tid, customer)
    runtime = Runtime(db)
    try:
        r = runtime.start(workflow, {"ticket_id": tid}, started_by=started_by)
    finally:
        runtime.close()
    assert r.status == "waiting_approval", r
    return r
