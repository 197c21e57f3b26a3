"""A governed session: the governed call for an agent loop tether does not own.

    with Session.open(db, tools=[send_email, refund], policy="policy.yaml", tenant="acme",
                      principal="alice", name="support-agent") as session:
        result = session.call("send_email", {"to": "bob@example.com", "body": "..."})
        if result.status == "pending_approval":
            result = session.wait(result.approval_id, timeout=600)

Every `session.call` goes the way a workflow's call goes (`CallPipeline`: validation,
policy, risk, provenance, limits, budgets, approval, credential, journal, ledger, trace).
A session is a run in the database (its `workflow_ref` is `session:NAME`), so `tether runs`,
`runs show`, the dashboard, `ledger verify` and `replay --policies` see it. An approval pauses
the call, not the process: the call returns `pending_approval` at once, and `wait` or a
later `resume_call` (in this process or another, after `Session.reopen`) carries it out
once a person decided. One process drives a session at a time: reopening it elsewhere takes
it over, and the old holder's next write fails (`RunTakenOver`), writing nothing.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets as _secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from tether.errors import (
    ApprovalConflict,
    ApprovalNotFound,
    InvalidArguments,
    PolicyError,
    RunTakenOver,
    SessionClosed,
    WorkflowError,
)
from tether.guardrails import approvals
from tether.guardrails.approvals import principal as _principal
from tether.guardrails.loading import Policy, load_policy, policy_from_text
from tether.guardrails.provenance import Origin, Provenance, Trust, learn_result
from tether.models import budgets
from tether.models.base import Choice, ModelCall, Usage
from tether.models.meter import RunMeter, env_ceiling
from tether.models.prices import load_prices
from tether.orchestration import rollout, spans
from tether.orchestration._journal import Journal, recorded_call
from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.orchestration.runtime import (
    RunResult,
    default_user,
    governed_pipeline,
    tool_is_novel,
)
from tether.record import ledger
from tether.record import runs as store
from tether.record.canonical import digest, plain_json
from tether.record.db import Database
from tether.record.tracing import RUN_ID, Tracing, ids, parent_context
from tether.tools.registry import ToolRegistry
from tether.tools.tool import Tool
from tether.types import Approval, Decision, RunInfo, RunStatus, ToolCall, ToolResult

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
SESSION_PREFIX = "session:"  # a session's workflow_ref: what tells a session's run from a workflow's
STATE = "session"
_ENDINGS = (RunStatus.COMPLETED, RunStatus.ESCALATED, RunStatus.FAILED, RunStatus.CANCELLED)


@functools.lru_cache(maxsize=1)
def _process_tracing() -> Tracing:
    """One tracer provider (and its exporters) for every session of this process: a session is
    opened per agent conversation, a provider per session would start exporters each time."""
    return Tracing()


def is_session(workflow_ref: str | None) -> bool:
    return bool(workflow_ref and workflow_ref.startswith(SESSION_PREFIX))


def describe(t: Tool) -> dict[str, Any]:
    """What a session records of a tool: enough to judge a call to it again (replay), no code."""
    return {"name": t.name, "description": t.description, "schema": t.schema, "side_effect": t.side_effect,
            "target": t.target, "risk_tier": t.risk_tier, "risk_amount": t.risk_amount, "risk_volume": t.risk_volume,
            "untrusted_output": t.untrusted_output, "timeout_s": t.timeout_s,
            "selects": list(t.selects) if t.selects is not None else None}  # fmt: skip


def recorded_tool(d: Mapping[str, Any], fn: Any) -> Tool:
    """A tool rebuilt from its recorded description, running `fn` (replay answers from the recording)."""
    u = d.get("untrusted_output", False)
    return Tool.from_schema(d["name"], d["schema"], fn, strict=False, description=d.get("description") or d["name"],
                            side_effect=d["side_effect"], target=d.get("target"), risk_tier=d["risk_tier"],
                            risk_amount=d.get("risk_amount"), risk_volume=d.get("risk_volume"),
                            untrusted_output=tuple(u) if isinstance(u, list) else u, timeout_s=d.get("timeout_s"),
                            selects=tuple(d["selects"]) if d.get("selects") is not None else None)  # fmt: skip


_GOVERNING = ("name", "schema", "side_effect", "target", "risk_tier", "risk_amount", "risk_volume", "untrusted_output",
              "selects")  # fmt: skip


def _governing(described: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What of each tool decides how a call to it is judged (not its description or timeout), by name."""
    return {d["name"]: {k: d.get(k) for k in _GOVERNING} for d in described}


def _version(described: list[dict[str, Any]]) -> str:
    return digest(sorted(_governing(described).items()))[:16]


def _difference(was: list[dict[str, Any]], now: list[dict[str, Any]]) -> str:
    before, after = _governing(was), _governing(now)
    if set(before) != set(after):
        gone, new = sorted(set(before) - set(after)), sorted(set(after) - set(before))
        return "it was opened with other tools" + (f" (missing: {', '.join(gone)})" if gone else "") + (
            f" (not in it: {', '.join(new)})" if new else "")
    changed = sorted(n for n in before if before[n] != after[n])
    if not changed:  # the same settings, recorded by another tether version
        return "its tools were recorded by another version of tether"
    return f"tool {changed[0]} is not as it was when the session opened (its schema or risk settings changed)"


def _plain_args(tool: str, args: Any) -> dict[str, Any]:
    """The arguments as plain JSON, or InvalidArguments before anything is written."""
    if not isinstance(args, Mapping):
        raise InvalidArguments(f"invalid arguments for {tool}: expected a JSON object, got {type(args).__name__}")
    try:
        out = plain_json(dict(args))
    except (TypeError, ValueError) as e:
        raise InvalidArguments(f"invalid arguments for {tool}: not JSON ({e})") from None
    if not all(isinstance(k, str) for k in out):
        raise InvalidArguments(f"invalid arguments for {tool}: argument names must be strings")
    return out  # type: ignore[no-any-return]


class Session:
    """A governed session. Open one with `Session.open`, continue one with `Session.reopen`.

    One thread drives a session at a time (as one process does): give each concurrent
    agent its own session."""

    def __init__(
        self, db: Database, *, run_id: str, name: str, tenant: str, principal: str, agent: str, policy: Policy,
        tools: ToolRegistry, journal: Journal, pipeline: CallPipeline, tracing: Tracing, deps: Any,
        trace_ids: tuple[str | None, str | None], max_calls: int | None, close_pipeline: bool, meter: RunMeter,
    ) -> None:  # fmt: skip
        """Use `Session.open` or `Session.reopen`."""
        self.db, self.id, self.name, self.tenant, self.principal = db, run_id, name, tenant, principal
        self.agent, self.policy, self.tools = agent, policy, tools
        self.status: str = RunStatus.RUNNING.value
        self.provenance = Provenance()
        self._journal, self._pipeline, self._tracing, self._deps = journal, pipeline, tracing, deps
        self._trace_ids = trace_ids
        self._max_calls = max_calls
        self._close_pipeline = close_pipeline
        self._pending: dict[str, ToolCall] = {}  # approval id -> the call waiting on it
        self._seen: set[str] = set()  # approval ids of calls already carried out
        self._taken = False  # another process reopened the session: this object writes nothing more
        self._usage_n = 0
        self._names = frozenset(tools.names())  # a shared pipeline may hold more tools: these are this session's
        self.meter = meter  # what the agent's own model calls cost (record_usage), against the ceiling

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        db: Database,
        *,
        tools: Iterable[Tool] | ToolRegistry,
        policy: Policy | str | Any,
        tenant: str = "default",
        principal: str | None = None,
        name: str = "session",
        agent: str = "agent",
        deps: Any = None,
        secrets: Any = None,
        tracing: Tracing | None = None,
        pipeline: CallPipeline | None = None,
        max_calls: int | None = None,
        cost_ceiling_usd: float | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Open a session: a new run named `name`, started by `principal` (who may then not approve
        its calls), whose calls are proposed by `agent` (a model: what it writes is untrusted unless a
        trusted source holds the same value). `policy` is a loaded policy or a policy file. A killed
        `name` or a spent tenant/feature budget refuses the session, writing nothing. `max_calls`
        ends the session (`budget_exhausted`) at the call past it, counted over its whole life.
        `pipeline` shares one governed call path (its credentials, limits and thread pool) among
        sessions; by default each session builds its own on `db`. `cost_ceiling_usd` (else
        $TETHER_COST_CEILING_USD) bounds what `record_usage` may report before the session ends."""
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise WorkflowError(f"session name {name!r} must be 1 to 100 letters, digits, '_', '-', '.' or ':'")
        registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        pol = load_policy(policy) if isinstance(policy, str) or hasattr(policy, "__fspath__") else policy
        if max_calls is not None and max_calls < 1:
            raise WorkflowError(f"session {name}: max_calls must be at least 1")
        if cost_ceiling_usd is not None and not cost_ceiling_usd >= 0:
            raise WorkflowError(f"session {name}: cost_ceiling_usd must be >= 0")
        ceiling = cost_ceiling_usd if cost_ceiling_usd is not None else env_ceiling()
        prices = load_prices()  # a broken $TETHER_PRICES fails here, before the session exists
        errors, _ = pol.lint({t.name: t.schema for t in registry})
        if errors:
            raise PolicyError(f"{errors[0]} (the rule would never be checked; fix the argument name)")
        started_by = _principal(principal or default_user())
        run_id = session_id or "ses_" + _secrets.token_hex(8)
        described = [describe(t) for t in registry]
        plain_input = {"session": name, "agent": agent, "tools": described}
        holder = store.new_driver(None)
        with db.transaction() as conn:
            rollout.refuse_if_killed(conn, name)
            budgets.check(conn, tenant, name)
            loaded = store.store_policy(conn, pol.hash, pol.source, pol.text)
            if loaded:
                ledger.append(conn, "policy_loaded", loaded)
            store.insert_run(conn, id=run_id, workflow=name, workflow_ref=SESSION_PREFIX + name,
                             workflow_version=_version(described), status=RunStatus.RUNNING.value, input=plain_input,
                             started_by=started_by, tenant=tenant, policy_hash=pol.hash, driver=holder,
                             cost_ceiling_usd=ceiling)  # fmt: skip
            ledger.append(conn, "run_started", {"workflow": name, "version": _version(described), "policy_hash": pol.hash,
                                                "started_by": started_by, "tenant": tenant, "session": True,
                                                "input_sha256": digest(plain_input)}, run_id=run_id)  # fmt: skip
        tracing = tracing or _process_tracing()
        root = tracing.tracer.start_span(f"invoke_agent {name}", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name, RUN_ID: run_id,
            "tether.policy.hash": pol.hash, "tether.tenant": tenant, "tether.session": True})  # fmt: skip
        root.end()  # the session's root: every call's span is its child, in whichever process makes it
        journal = Journal(db, run_id, [], driver=holder)
        journal.state = STATE
        trace_ids = ids(root)
        journal.set_run_values(trace_id=trace_ids[0], root_span_id=trace_ids[1])
        journal.flush(lambda conn: tracing.save(conn, run_id))
        own = pipeline is None
        return cls(db, run_id=run_id, name=name, tenant=tenant, principal=started_by, agent=agent, policy=pol,
                   tools=registry, journal=journal, pipeline=pipeline or governed_pipeline(db, registry, secrets),
                   tracing=tracing, deps=deps, trace_ids=trace_ids, max_calls=max_calls, close_pipeline=own,
                   meter=RunMeter(prices, ceiling))  # fmt: skip

    @classmethod
    def reopen(
        cls, db: Database, session_id: str, *, tools: Iterable[Tool] | ToolRegistry, deps: Any = None, secrets: Any = None,
        tracing: Tracing | None = None, pipeline: CallPipeline | None = None, max_calls: int | None = None,
    ) -> Session:  # fmt: skip
        """Continue a session, here, under the policy it was opened with. `tools` must be the tools it
        was opened with (same names and schemas): code is not stored, so it is given again. This
        process becomes the session's only writer."""
        with db.read() as conn:
            row = store.get_run(conn, session_id)
            source, text = store.policy_text(conn, row.policy_hash)
        if not is_session(row.workflow_ref):
            raise WorkflowError(f"run {session_id} is a run of workflow {row.workflow}, not a session")
        if row.status not in (RunStatus.RUNNING, RunStatus.WAITING_APPROVAL, RunStatus.INTERRUPTED):
            raise SessionClosed(f"session {session_id} has ended ({row.status}); open a new one")
        registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        described = [describe(t) for t in registry]
        if _version(described) != row.workflow_version:
            raise WorkflowError(f"session {session_id}: {_difference(row.input.get('tools', []), described)}; reopen "
                                "it with the tools it was opened with")  # fmt: skip
        pol = policy_from_text(text, source)
        journal, recorded = _take(db, row, "reopened")
        own = pipeline is None
        session = cls(db, run_id=session_id, name=row.workflow, tenant=row.tenant, principal=row.started_by,
                      agent=row.input.get("agent", "agent"), policy=pol, tools=registry, journal=journal,
                      pipeline=pipeline or governed_pipeline(db, registry, secrets), tracing=tracing or _process_tracing(),
                      deps=deps, trace_ids=(row.trace_id, row.root_span_id), max_calls=max_calls, close_pipeline=own,
                      meter=RunMeter(load_prices(), row.cost_ceiling_usd, row.cost_usd or 0.0, row.tokens or 0))  # fmt: skip
        session.status = row.status
        session._usage_n = sum(e.kind == "usage" for e in recorded)
        session._rebuild(recorded)
        return session

    def _rebuild(self, recorded: list[store.Event]) -> None:
        """What the session knew when its last holder stopped: labels, results, pending calls."""
        proposals: dict[str, ToolCall] = {}
        for e in recorded:
            if e.kind == "label":
                self.provenance.add(e.data["value"], e.data["source"], e.data["trust"], scope=e.data.get("scope"))
            elif e.kind == "proposal" and e.call_id:
                proposals[e.call_id] = recorded_call(e)
            elif e.kind == "approval_requested" and e.call_id in proposals:
                self._pending[e.data["approval_id"]] = proposals[e.call_id]
            elif e.kind == "result" and e.call_id in proposals:
                call = proposals[e.call_id]
                result = ToolResult.model_validate(e.data)
                if result.approval_id:
                    self._pending.pop(result.approval_id, None)
                    self._seen.add(result.approval_id)
                t = self.tools.get(call.tool) if call.tool in self.tools else None
                learn_result(self.provenance, t, _origins(call), result)

    # -- calls ---------------------------------------------------------------------
    def call(
        self, tool: str, args: Mapping[str, Any], *, facts: Mapping[str, Any] | None = None,
        risk: Mapping[str, Any] | None = None, proposer: str | None = None,
    ) -> ToolResult:  # fmt: skip
        """Propose a call and carry it out if the gate allows it. Returns the `ToolResult`:
        `ok`, `invalid` (unknown tool, bad arguments), `denied` (with the rule's reason), `error`,
        `timeout`, or `pending_approval` with `approval_id` (then `wait` or `resume_call`).
        `facts` are what your code (not the model) established: rules test `facts.NAME`.
        `proposer` defaults to `model:<agent>`."""
        self._check_open()
        plain = _plain_args(tool, args)
        if self._max_calls is not None and self._journal.step >= self._max_calls:
            self._end(RunStatus.BUDGET_EXHAUSTED, f"the session made its {self._max_calls} calls")
            raise SessionClosed(f"session {self.id} made its {self._max_calls} calls (max_calls); it has ended")
        self._journal.step += 1
        who = proposer or f"model:{self.agent}"
        t = self.tools.get(tool) if tool in self.tools else None
        origins = self.provenance.assess(plain, t.schema if t else None, who)
        novel = t is not None and self._novel(tool)
        call = ToolCall(call_id=f"{self._journal.step}.1", tool=tool, args=plain, proposer=who,
                        risk_context={**(risk or {}), "novel": novel}, facts=dict(facts or {}),
                        provenance={n: o.as_dict() for n, o in origins.items()})  # fmt: skip
        with self._holding(), self._span(call) as span:
            result = self._pipeline.propose(call, self._scope())
            spans.finish_tool_span(span, result, self.db.redactor)
        if result.status == "pending_approval" and result.approval_id:
            self._pending[result.approval_id] = call
        learn_result(self.provenance, t, origins, result)
        self._flush()
        return result

    def wait(self, approval_id: str, *, timeout: float | None = None, poll_s: float = 0.25) -> ToolResult:
        """Wait (polling the database) until a person decides `approval_id`, then carry the call out
        (or record its rejection). After `timeout` seconds the call is still `pending_approval`."""
        self._pending_call(approval_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self.resume_call(approval_id)
            if result.status != "pending_approval":
                return result
            if deadline is not None and time.monotonic() >= deadline:
                return result
            time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))

    def resume_call(self, approval_id: str) -> ToolResult:
        """Carry out the call waiting on `approval_id` if a person decided it: approved, it runs (a
        budget spent meanwhile or a rate limit still deny it); rejected or expired, it ends
        `rejected`. Still undecided: `pending_approval`, nothing written."""
        self._check_open()
        call = self._pending_call(approval_id)
        req = approvals.ApprovalInbox(self.db).current(approval_id)  # expired now if its time ran out
        decision_ev = next(e for e in reversed(self._journal.replayed(call.call_id)) if e.kind == "decision")
        decision = Decision.model_validate(decision_ev.data)
        if req.status == "pending":
            return ToolResult(call_id=call.call_id, tool=call.tool, status="pending_approval", decision=decision,
                              approval_id=approval_id)  # fmt: skip
        approved = req.status == "approved"
        by = req.decided_by or ("expiry" if req.status == "expired" else "")
        step = int(call.call_id.split(".")[0])
        t = self.tools.get(call.tool) if call.tool in self.tools else None
        with self._holding(), self._span(call) as span:
            self._journal.approval_applied(call, approval_id, approved, by)
            result = self._pipeline.execute_approved(call, self._scope(step), Approval(approval_id, approved, by, req.reason, decision))
            spans.finish_tool_span(span, result, self.db.redactor)
        del self._pending[approval_id]
        self._seen.add(approval_id)
        learn_result(self.provenance, t, _origins(call), result)
        self._flush()
        return result

    def record_usage(self, model: str, *, input_tokens: int, output_tokens: int, cached: bool = False) -> dict[str, Any]:
        """Report a call your agent made to its own model (`model` as priced: `openai:gpt-4.1-mini`),
        so the session's cost, `tether costs`, tenant and feature budgets see it. Returns what it
        cost. Past the session's cost ceiling, the session ends `cost_ceiling` (the usage is kept)
        and this raises SessionClosed."""
        self._check_open()
        if not (isinstance(input_tokens, int) and isinstance(output_tokens, int) and input_tokens >= 0 and output_tokens >= 0):
            raise WorkflowError(f"record_usage takes token counts >= 0, got {input_tokens!r} and {output_tokens!r}")
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        choice = Choice(point="agent", option=None, confidence=1.0, model=model, usage=usage,
                        calls=[ModelCall(model=model, usage=usage, cached=cached)])  # fmt: skip
        cost = self.meter.charge(choice)
        unpriced = cost["calls"][0]["price_version"] is None and not cached
        self._usage_n += 1
        op = f"usage.{self._usage_n}"  # the model_calls row's call id: one per reported call in this session object
        self._journal.add("usage", None, {"model": model, "cost": cost})
        self._journal.add_costs(op, self.tenant, self.name, cost["calls"])
        self._journal.set_run_values(cost_usd=round(self.meter.spent, 8), tokens=self.meter.tokens)
        self._flush()
        ceiling = self.meter.ceiling_usd
        why = None
        if ceiling is not None and unpriced:  # fail closed: what cannot be priced cannot be held to a ceiling
            why = f"model {model!r} has no price (add it with $TETHER_PRICES), so the session's cost ceiling cannot hold"
        elif ceiling is not None and self.meter.spent > ceiling:
            why = f"the agent's model calls cost ${self.meter.spent:.6f}, past the session's cost ceiling of ${ceiling:.4f}"
        if why:
            self._end(RunStatus.COST_CEILING, why)
            raise SessionClosed(f"session {self.id} ended: {why}")
        return cost

    def pending(self) -> list[str]:
        """Approval ids of this session's calls that wait for a person."""
        return list(self._pending)

    def label(self, value: Any, source: str, trust: Trust = "untrusted", *, scope: str | None = None) -> None:
        """Say where a value your agent saw came from, so calls built from it are judged by it:
        the user's own request (`trust="trusted"`), a web page or an e-mail (untrusted). `scope`
        makes a trusted value vouch only for the argument of that name (an authenticated
        `customer_id` is trusted as a customer id, not as whatever else equals it)."""
        self._check_open()
        if trust not in ("trusted", "untrusted"):
            raise WorkflowError(f"trust must be 'trusted' or 'untrusted', got {trust!r}")
        try:
            value = plain_json(value)
        except (TypeError, ValueError) as e:
            raise WorkflowError(f"a label's value must be JSON: {e}") from None
        self.provenance.add(value, source, trust, scope=scope)
        self._journal.add("label", None, {"source": source, "trust": trust, "value": value, "scope": scope})
        self._flush()  # a reopened session must know it too

    # -- ending --------------------------------------------------------------------
    def close(self, status: str = RunStatus.COMPLETED, *, outcome: str | None = None, error: str | None = None) -> RunResult:
        """End the session (`completed`, `escalated`, `failed` or `cancelled`). Its calls still
        waiting for a person are withdrawn: an approval decided later carries nothing out."""
        if status not in _ENDINGS:
            raise WorkflowError(f"a session ends completed, escalated, failed or cancelled, not {status!r}")
        self._check_open()
        return self._end(RunStatus(status), error, outcome)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            if self.status not in _FINAL and not self._taken:
                if exc is None:
                    self.close()
                else:  # the caller's exception is the one to see; a session that cannot end here says so in its row
                    with contextlib.suppress(SessionClosed, RunTakenOver):
                        self.close(RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self._release()

    def _end(self, status: RunStatus, error: str | None = None, outcome: str | None = None) -> RunResult:
        withdrawn = sorted(self._pending)
        self._journal.add("end", None, {"status": status.value, "outcome": outcome, "error": error,
                                        "withdrawn_approvals": withdrawn})  # fmt: skip
        self._journal.add_ledger("run_finished", {"status": status.value, "outcome": outcome, "steps": self._journal.step,
                                                  "error": self.db.redactor.text(error) if error else None,
                                                  "withdrawn_approvals": withdrawn})  # fmt: skip

        def finish(conn: Any) -> None:  # in the ending's transaction, after the driver check: all or nothing
            if withdrawn:
                approvals.withdraw(conn, self.id, self.principal, reason=f"session ended {status.value}")
            self._tracing.save(conn, self.id)

        with self._holding():
            self._journal.flush(finish, status=status.value, outcome=outcome, error=error)
        self.status = status.value
        self._pending.clear()
        self._release()
        return RunResult(self.id, self.name, status.value, outcome, self._journal.step, error)

    def _release(self) -> None:
        if self._close_pipeline:
            self._pipeline.close()
            self._close_pipeline = False

    # -- helpers -------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._taken:
            raise RunTakenOver(f"session {self.id} was reopened by another process; use that one")
        if self.status in _FINAL:
            raise SessionClosed(f"session {self.id} has ended ({self.status}); open a new one")
        why = rollout.kill_reason(self.db, self.name)
        if why:
            self._end(RunStatus.HALTED, f"halted by the kill switch: {why}")
            raise SessionClosed(f"session {self.id} is halted: {self.name} is killed ({why})")

    def _pending_call(self, approval_id: str) -> ToolCall:
        call = self._pending.get(approval_id)
        if call is None:
            if approval_id in self._seen:
                raise ApprovalConflict(f"approval {approval_id} of session {self.id} was already carried out")
            raise ApprovalNotFound(f"no call of session {self.id} waits on approval {approval_id!r}")
        return call

    def _scope(self, step: int | None = None) -> CallScope:
        run = RunInfo(run_id=self.id, step=step if step is not None else self._journal.step, tenant=self.tenant)
        return CallScope(run=run, policy=self.policy, recorder=self._journal, deps=self._deps, tools=self._names)

    def _span(self, call: ToolCall) -> Any:
        ctx = parent_context(*self._trace_ids)
        attrs = {RUN_ID: self.id, "tether.step": int(call.call_id.split(".")[0]), "tether.state": STATE,
                 **spans.tool_attributes(call)}  # fmt: skip
        return self._tracing.tracer.start_as_current_span(spans.tool_span_name(call), context=ctx, attributes=attrs,
                                                          record_exception=False)  # fmt: skip

    def _flush(self) -> None:
        """Each call's records are durable before the agent sees its result."""
        status = RunStatus.WAITING_APPROVAL if self._pending else RunStatus.RUNNING
        with self._holding():
            self._journal.flush(lambda conn: self._tracing.save(conn, self.id), status=status.value)
        self.status = status.value

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        """A write refused because another process reopened the session: this one stops, having written nothing."""
        try:
            yield
        except store.Superseded as e:
            self._taken = True
            self._release()
            raise RunTakenOver(f"session {self.id} was reopened by another process; this one stopped without writing ({e})") from None

    def _novel(self, tool: str) -> bool:
        return tool_is_novel(self.db, self.tenant, tool)


_FINAL = frozenset(s for s in RunStatus if s.final)


def _take(db: Database, row: Any, doing: str) -> tuple[Journal, list[store.Event]]:
    """Claim the session for this process (its holder so far writes nothing more) and its journal."""
    holder = store.new_driver(None)
    with db.transaction() as conn:
        if not store.claim_run(conn, row.id, row.status, row.status, driver=holder):
            raise RunTakenOver(f"session {row.id} changed while it was being {doing}; try again")
        recorded = store.load_events(conn, row.id)
    journal = Journal(db, row.id, recorded, driver=holder)
    journal.state, journal.step = STATE, max((e.step for e in recorded), default=0)
    return journal, recorded


def cancel(db: Database, session_id: str, *, by: str, reason: str | None = None) -> RunResult:
    """Stop a session from outside (its agent is gone, or must stop): its pending approvals are
    withdrawn and it ends `cancelled`, in one transaction. Whoever still holds it writes nothing
    more (its next call raises RunTakenOver). Its effects are not undone: a session declares no
    compensations; the ledger says what it did."""
    by = _principal(by)
    with db.read() as conn:
        row = store.get_run(conn, session_id)
    if not is_session(row.workflow_ref):
        raise WorkflowError(f"run {session_id} is a run of workflow {row.workflow}, not a session")
    if row.status in {s.value for s in _FINAL}:
        raise SessionClosed(f"session {session_id} has ended ({row.status})")
    journal, _ = _take(db, row, "cancelled")
    error = f"cancelled by {by}" + (f": {reason}" if reason else "")
    withdrawn: list[str] = []
    journal.add("cancel", None, {"by": by, "reason": reason})
    journal.add_ledger("run_cancelled", {"by": by, "reason": reason})

    def finish(conn: Any) -> None:
        withdrawn.extend(approvals.withdraw(conn, session_id, by, reason="session cancelled"))
        ledger.append(conn, "run_finished", {"status": RunStatus.CANCELLED.value, "outcome": None, "steps": journal.step,
                                             "error": db.redactor.text(error), "withdrawn_approvals": withdrawn},
                      run_id=session_id)  # fmt: skip

    journal.add("end", None, {"status": RunStatus.CANCELLED.value, "outcome": None, "error": error})
    journal.flush(finish, status=RunStatus.CANCELLED.value, error=error)
    return RunResult(session_id, row.workflow, RunStatus.CANCELLED.value, None, journal.step, error)


def _origins(call: ToolCall) -> dict[str, Origin]:
    return {n: Origin.from_dict(o) for n, o in (call.provenance or {}).items()}

