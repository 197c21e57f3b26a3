"""The run's journal: recorded events, replayed on re-execution, appended live.

Events are buffered and written in the next transaction; a transaction is
forced before anything irreversible (an allowed call executes) and when the run
pauses or ends. Ledger entries ride in the same transactions, so the journal
and the ledger never disagree.

Every write first checks that this journal's driver still holds the run (the
`runs.driver` fence): a process that lost the run to another (it was paused
past its worker's heartbeat, say) fails its next write and writes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether.guardrails import approvals
from tether.guardrails.policy import Decision
from tether.record import ledger, redaction
from tether.record import runs as store
from tether.record.canonical import digest
from tether.record.db import Database, timestamp
from tether.record.tables import model_calls, prompts
from tether.tools.calls import ToolCall, ToolResult
from tether.tools.secrets import scrub


def recorded_call(proposal: store.Event) -> ToolCall:
    """The call a `proposal` event recorded (as validated), to judge or carry out again."""
    d = proposal.data
    return ToolCall(call_id=proposal.call_id or "", tool=d["tool"], args=dict(d["args"]), proposer=d["proposer"],
                    risk_context=dict(d.get("risk_context") or {}), provenance=d.get("provenance"),
                    facts=dict(d.get("facts") or {}))  # fmt: skip


@dataclass
class Journal:
    db: Database
    run_id: str
    recorded: list[store.Event]
    state: str = ""
    step: int = 0
    driver: str | None = None  # the driver id this process holds the run under; None: no fence (replay)
    _by_op: dict[str, list[store.Event]] = field(default_factory=lambda: defaultdict(list))
    _events: list[store.Event] = field(default_factory=list)
    _ledger: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _prompts: list[dict[str, Any]] = field(default_factory=list)
    _run_values: dict[str, Any] = field(default_factory=dict)
    _costs: list[dict[str, Any]] = field(default_factory=list)
    _next_seq: int = 1
    _recorded_ops: list[str] = field(default_factory=list)
    _asked: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for e in self.recorded:
            if e.call_id is not None:
                if e.call_id not in self._by_op:
                    self._recorded_ops.append(e.call_id)
                self._by_op[e.call_id].append(e)
        self._next_seq = (self.recorded[-1].seq + 1) if self.recorded else 1

    # -- reading what was recorded ------------------------------------------
    def replayed(self, op: str) -> list[store.Event]:
        self._asked.add(op)
        return self._by_op.get(op, [])

    def skipped(self) -> list[str]:
        """Recorded ops (model choices, calls) the code re-running the run has not asked for."""
        return [op for op in self._recorded_ops if op not in self._asked]

    def call_events(self) -> list[store.Event]:
        """Every event of every call, recorded or new, in the order it happened."""
        return sorted((e for evs in self._by_op.values() for e in evs), key=lambda e: e.seq)

    # -- buffering new events -----------------------------------------------
    def add(self, kind: str, op: str | None, data: dict[str, Any]) -> None:
        event = store.Event(self._next_seq, kind, self.step, self.state, op, data)
        self._next_seq += 1
        self._events.append(event)
        if op is not None:
            self._by_op[op].append(event)

    def add_ledger(self, kind: str, body: dict[str, Any]) -> None:
        self._ledger.append((kind, body))

    def set_run_values(self, **values: Any) -> None:
        """Values for the run's row, written with the next flush."""
        self._run_values.update(values)

    def add_prompt(self, call_id: str, point: str, model: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        """For the prompt store: callers pass values already redacted."""
        self._prompts.append({"run_id": self.run_id, "call_id": call_id, "point": point, "model": model,
                              "request": request, "response": response, "created_at": timestamp()})  # fmt: skip

    def add_costs(self, call_id: str, tenant: str, workflow: str, calls: list[dict[str, Any]]) -> None:
        """Priced model calls behind one choice, for the spend reports and budgets."""
        now = timestamp()
        self._costs.extend({"run_id": self.run_id, "call_id": call_id, "step": self.step, "tenant": tenant,
                            "workflow": workflow, "day": now[:10], "created_at": now, "action": None, **c} for c in calls)  # fmt: skip

    def flush(self, extra: Callable[[Any], Any] | None = None, **run_values: Any) -> None:
        """Write what is buffered in one transaction; `extra` writes more in it (the run's spans)."""
        with self.db.transaction() as conn:
            self._write(conn, **run_values)
            if extra is not None:
                extra(conn)

    def _write(self, conn: Any, **run_values: Any) -> None:
        # The run's row first: on PostgreSQL its row lock also orders this write against a rival claim.
        values = dict(steps=self.step, state=self.state, **scrub({**self._run_values, **run_values}))
        if self.driver is not None:
            store.update_held_run(conn, self.run_id, self.driver, **values)
        else:
            store.update_run(conn, self.run_id, **values)
        # No secret a tool was handed is written anywhere: event data is a scrubbing JSON column
        # (record.tables.ScrubbedJSON), and the ledger scrubs each body before hashing it.
        store.append_events(conn, self.run_id, self._events)
        ledger.append_many(conn, self._ledger, run_id=self.run_id)
        if self._prompts:
            conn.execute(prompts.insert(), scrub(self._prompts))
        if self._costs:
            conn.execute(model_calls.insert(), self._costs)
        self._events, self._ledger, self._prompts, self._run_values, self._costs = [], [], [], {}, []

    # -- the tool proxy's recorder ------------------------------------------
    def proposed(
        self, call: ToolCall, args: dict[str, Any] | None, error: str | None, schema: dict[str, Any] | None = None
    ) -> None:
        data = {"tool": call.tool, "args": args if args is not None else call.args, "proposer": call.proposer}
        for c in self._costs:  # the step's model calls so far led to this action (action budgets)
            if c["step"] == self.step and c["action"] is None:
                c["action"] = call.tool
        if call.risk_context:
            data["risk_context"] = call.risk_context
        if call.provenance:  # source names and trust only, never values: safe for the ledger
            data["provenance"] = call.provenance
        if call.facts:
            data["facts"] = call.facts
        if error:
            data["error"] = error
        # The journal keeps the call as made (replay needs it); the ledger only what compliance needs.
        red = self.db.redactor
        shown = {**data, "args": red.args(schema, data["args"]) if schema and redaction.marked(schema) else data["args"]}
        if error:
            shown["error"] = red.text(error)
        self.add_ledger("proposal", {"call_id": call.call_id, "step": self.step, **shown})
        # What the code sent (before defaults were filled), to detect changed code on replay.
        self.add("proposal", call.call_id, {**data, "sent_digest": digest(call.args)})

    def decided(self, call: ToolCall, decision: Decision) -> None:
        self.add("decision", call.call_id, decision.model_dump())
        self.add_ledger("decision", {"call_id": call.call_id, "tool": call.tool, **decision.model_dump()})
        if decision.action == "allow":
            self.flush()  # durable before the side effect

    def approval_requested(self, call: ToolCall, decision: Decision) -> str:
        with self.db.transaction() as conn:
            approval_id, body = approvals.request(
                conn, run_id=self.run_id, call_id=call.call_id, step=self.step, tool=call.tool,
                args=self._proposal_args(call), decision=decision, proposer=call.proposer,
            )  # fmt: skip
            self.add("approval_requested", call.call_id, {"approval_id": approval_id})
            self.add_ledger("approval_requested", body)
            self._write(conn, status="waiting_approval")
        return approval_id

    def approval_applied(self, call: ToolCall, approval_id: str, approved: bool, by: str | None) -> None:
        self.add("approval", call.call_id, {"approval_id": approval_id, "approved": approved, "by": by})
        self.flush()  # durable before the approved side effect, as a decision is

    def finished(self, call: ToolCall, result: ToolResult) -> None:
        self.add("result", call.call_id, result.model_dump(mode="json"))
        body: dict[str, Any] = {"call_id": call.call_id, "tool": call.tool, "status": result.status}
        if result.error:
            body["error"] = self.db.redactor.text(result.error)
        if result.output is not None:
            body["output_sha256"] = digest(result.output)
        if result.approval_id:
            body["approval_id"] = result.approval_id
        self.add_ledger("result", body)
        # Not flushed here: it rides with the next decision or the run's end. A
        # crash before that re-runs the call under the same idempotency key.

    def _proposal_args(self, call: ToolCall) -> dict[str, Any]:
        for e in reversed(self._by_op.get(call.call_id, [])):
            if e.kind == "proposal":
                return dict(e.data["args"])
        return call.args


@dataclass
class MemoryJournal(Journal):
    """A journal that writes nothing: replay re-executes a run without touching the database."""

    written: list[store.Event] = field(default_factory=list)
    run_values: dict[str, Any] = field(default_factory=dict)

    def flush(self, extra: Callable[[Any], Any] | None = None, **run_values: Any) -> None:
        self.written.extend(self._events)
        self._events, self._ledger, self._prompts, self._costs = [], [], [], []
        self.run_values.update(run_values, steps=self.step, state=self.state)

    def approval_requested(self, call: ToolCall, decision: Decision) -> str:
        approval_id = f"replay-{call.call_id}"
        self.add("approval_requested", call.call_id, {"approval_id": approval_id})
        return approval_id

    def events(self) -> list[store.Event]:
        return [*self.written, *self._events]
