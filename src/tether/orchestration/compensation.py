"""Undoing a run's effects, newest first, each with its tool's declared compensation.

Every compensation is a governed call (validated, decided, ledgered) with a stable id
`undo:<call>` and the idempotency key of the step it undoes, so a resumed or replayed run
answers it from the journal instead of repeating it.

A call that was cleared (allowed or approved) but has no recorded result (the process died
while it ran) is first finished under its own idempotency key: the system of record answers
with what it did, or does it now, so it can be undone. A call without a compensation is never
finished here: stopping a run must not make an effect it may never have made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.orchestration._journal import recorded_call
from tether.tools.registry import ToolRegistry
from tether.tools.tool import idempotency_key
from tether.types import Approval, Decision, RunInfo, ToolCall, ToolResult

Propose = Callable[[ToolCall, RunInfo], ToolResult]  # a new governed call (decided afresh)
Finish = Callable[[ToolCall, RunInfo, Decision, Approval | None], ToolResult]  # a cleared call, as cleared then


@dataclass
class Undo:
    journal: Any  # the run's Journal
    tools: ToolRegistry
    workflow: str
    run_id: str
    tenant: str
    propose: Propose
    finish: Finish
    finishable: set[str] | None = None  # replay finishes only the calls the recorded run finished

    def run(self) -> tuple[list[ToolResult], list[str]]:
        """(the compensations' results, the calls that may have happened and are not undone)."""
        unsure = self.finish_in_flight()
        events = self.journal.call_events()
        results = [e for e in events if e.kind == "result" and e.data["status"] == "ok" and not str(e.call_id).startswith("undo:")]
        undone = []
        for ev in reversed(results):
            t = self.tools.get(ev.data["tool"]) if ev.data["tool"] in self.tools else None
            if t is None or t.compensate is None:
                continue
            proposal = next(e for e in self.journal.replayed(ev.call_id or "") if e.kind == "proposal")
            name, make_args = t.compensate
            try:
                args = make_args(dict(proposal.data["args"]), ev.data["output"],
                                 idempotency_key(self.run_id, proposal.step, ev.call_id or ""))  # fmt: skip
            except Exception as e:  # noqa: BLE001 - a broken compensation is reported, the others still run
                undone.append(ToolResult(call_id=f"undo:{ev.call_id}", tool=name, status="invalid",
                                         error=f"compensation arguments for {t.name} failed: {type(e).__name__}: {e}"))  # fmt: skip
                continue
            # The undo is judged on what the code had established for the call it undoes.
            call = ToolCall(call_id=f"undo:{ev.call_id}", tool=name, args=args, proposer=f"compensation:{self.workflow}",
                            facts=dict(proposal.data.get("facts") or {}))  # fmt: skip
            undone.append(self.propose(call, RunInfo(run_id=self.run_id, step=proposal.step, tenant=self.tenant)))
        return undone, unsure

    def finish_in_flight(self) -> list[str]:
        """Finish every cleared call that has no result and can be undone; returns by name those
        that may have happened and will not be undone."""
        unsure: list[str] = []
        events = self.journal.call_events()
        finished = {e.call_id for e in events if e.kind == "result"}
        by_call: dict[str, list[Any]] = {}
        for e in events:
            if e.call_id and e.call_id not in finished and not e.call_id.startswith("undo:"):
                by_call.setdefault(e.call_id, []).append(e)
        for call_id, evs in by_call.items():
            proposal = next((e for e in reversed(evs) if e.kind == "proposal"), None)
            decision = next((e for e in reversed(evs) if e.kind == "decision"), None)
            applied = next((e for e in reversed(evs) if e.kind == "approval"), None)
            if proposal is None or decision is None or (self.finishable is not None and call_id not in self.finishable):
                continue
            d = Decision.model_validate(decision.data)
            approval = None
            if applied is not None and applied.data["approved"]:
                approval = Approval(applied.data["approval_id"], True, applied.data["by"] or "", None, d)
            elif d.action != "allow":
                continue  # never cleared: nothing can have happened
            name = f"{proposal.data['tool']} ({call_id})"
            t = self.tools.get(proposal.data["tool"]) if proposal.data["tool"] in self.tools else None
            if t is not None and not t.side_effect:
                continue  # a read changed nothing
            if t is None or t.compensate is None:
                unsure.append(name)
                continue
            call = recorded_call(proposal)
            info = RunInfo(run_id=self.run_id, step=proposal.step, tenant=self.tenant)  # the key of the step it ran in
            if not self.finish(call, info, d, approval).ok:
                unsure.append(name)
        return unsure
