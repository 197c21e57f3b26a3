"""One admission path for every new run (admission.admit): parsing, policy lint, rollout routing,
kill switch and budgets, the same from the CLI, the API, the queue and Runtime.start; and the Client."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from _admit_flow import candidate, stable
from _flows import POLICY
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tether.cli import cli
from tether.errors import (
    ApprovalError,
    PolicyError,
    TetherError,
    WorkflowError,
    WorkflowKilled,
)
from tether.guardrails.approvals import ApprovalInbox
from tether.guardrails.policy import PolicySet
from tether.models import budgets
from tether.orchestration import engine, rollout
from tether.orchestration.admission import Admission, admit, lint
from tether.orchestration.client import Client
from tether.orchestration.runtime import Runtime
from tether.record import runs as store
from tether.record.db import Database, timestamp
from tether.record.ledger import Ledger
from tether.record.tables import ledger_entries, policies, rollouts, runs
from tether.server.app import create_app
from tether.server.keys import create_key

TYPO = PolicySet.from_text('policies:\n  - {name: cap, if: {tool: payments.refund, amount: "> 100"}, then: {action: deny}}\n',
                           "typo.yaml")  # fmt: skip


class FakeEngine:
    """Stands in for the engine's client: records what would be queued."""

    def __init__(self) -> None:
        self.queued: list[tuple[Any, ...]] = []

    def enqueue(self, options: dict[str, Any], *args: Any) -> None:
        self.queued.append((options["workflow_id"], *args))

    def destroy(self) -> None:
        pass


def _written(db: Database) -> tuple[int, int, int]:
    with db.read() as conn:
        return tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in (runs, ledger_entries, policies))  # type: ignore[return-value]


def _rollout_of_admit_flow(db: Database, percent: int | None = 50) -> None:
    """admit_flow is not a registered name: its rollout names the stable version by module:attribute."""
    with db.transaction() as conn:
        conn.execute(rollouts.insert().values(workflow="admit_flow", stable_ref=stable.ref, candidate_ref=None, percent=0,
                                              steps=[5, 25, 100], key_field="ticket_id", killed=False, kill_reason=None,
                                              updated_at=timestamp(), updated_by="ops"))  # fmt: skip
    if percent is not None:
        rollout.start(db, "admit_flow", candidate.ref, by="ops", steps=[percent, 100] if percent < 100 else [100])


def _keys() -> tuple[str, str]:
    """A ticket id the 50% split sends to the candidate, and one it keeps on the stable version."""
    ids = [f"T-{i}" for i in range(100)]
    on_candidate = next(k for k in ids if rollout.bucket("admit_flow", k) < 5000)
    on_stable = next(k for k in ids if rollout.bucket("admit_flow", k) >= 5000)
    return on_candidate, on_stable


def _ref_of(db: Database, run_id: str) -> str:
    with db.read() as conn:
        return store.get_run(conn, run_id).workflow_ref


# -- admit() --------------------------------------------------------------------------
def test_admit_parses_resolves_the_policy_and_writes_nothing(db: Database) -> None:
    before = _written(db)
    a = admit(db, stable, {"ticket_id": "T-1", "amount_usd": "12.5"}, tenant="acme", started_by="  alice ")
    assert isinstance(a, Admission) and a.workflow is stable and a.requested is stable and not a.routed
    assert a.input.amount_usd == 12.5 and a.plain_input == {"ticket_id": "T-1", "amount_usd": 12.5}
    assert a.policy is POLICY and a.tenant == "acme" and a.started_by == "alice"
    assert admit(db, stable, {}, policy=PolicySet.from_text("default: allow\npolicies: []\n", "x.yaml")).policy.source == "x.yaml"
    assert _written(db) == before


def test_each_refusal_is_one_line_and_writes_nothing(db: Database) -> None:
    _rollout_of_admit_flow(db, percent=None)
    fake = FakeEngine()
    job = {"ticket_id": "T-1"}
    before = _written(db)

    def refused(exc: type[Exception], match: str, *, tenant: str = "default", **kw: Any) -> None:
        for attempt in (lambda: admit(db, stable, kw.get("input", job), tenant=tenant, policy=kw.get("policy"),
                                      started_by=kw.get("by")),
                        lambda: Runtime(db).start(stable, kw.get("input", job), tenant=tenant, policy=kw.get("policy"),
                                                  started_by=kw.get("by")),
                        lambda: engine.enqueue(db, stable, kw.get("input", job), started_by=kw.get("by") or "ops", tenant=tenant,
                                               policy=kw.get("policy"), client=fake),
                        lambda: Client(db, policy=kw.get("policy")).queue(stable, kw.get("input", job), tenant=tenant,
                                                                           started_by=kw.get("by"), engine_client=fake)):  # fmt: skip
            with pytest.raises(exc, match=match) as e:
                attempt()
            assert "\n" not in str(e.value)
        assert _written(db) == before and fake.queued == []

    refused(WorkflowError, r"invalid input for admit_flow: ticket_id: String should match pattern", input={"ticket_id": "t 1"})
    refused(WorkflowError, r"invalid input for admit_flow: amount_usd: ", input={"amount_usd": "lots"})
    refused(PolicyError, r"typo.yaml:2: rule 'cap': no matching tool has an argument 'amount' \(payments.refund\) \(the rule would never be checked",
            policy=TYPO)  # fmt: skip
    refused(ApprovalError, "contains invisible or control characters", by="al\u200bice")
    rollout.kill(db, "admit_flow", by="ops", reason="incident 7")
    before = _written(db)  # the kill is ledgered
    refused(WorkflowKilled, r"workflow admit_flow is killed \(incident 7\); new runs are refused")
    rollout.restore(db, "admit_flow", by="ops")
    with db.transaction() as conn:
        budgets.set_budget(conn, "tenant", "acme", "daily", 0.0)
        budgets.set_budget(conn, "feature", "admit_flow", "monthly", 0.0)
    before = _written(db)
    refused(budgets.BudgetExceeded, r"daily budget of tenant 'acme' is spent .*; new runs are refused until", tenant="acme")
    refused(budgets.BudgetExceeded, r"monthly budget of feature 'admit_flow' is spent", tenant="other")
    with db.transaction() as conn:
        budgets.remove_budget(conn, "feature", "admit_flow", "monthly")
    assert Runtime(db).start(stable, job, tenant="other").status == "completed"  # and admitted again once lifted


def test_kill_and_budget_are_checked_again_in_the_insert_transaction(db: Database) -> None:
    """An admission read before the kill switch was thrown does not slip a run in: start_admitted
    refuses it in the transaction that would insert it (or, for a queued run, records the refusal)."""
    _rollout_of_admit_flow(db, percent=None)
    rt = Runtime(db)
    early = rt.admit(stable, {"ticket_id": "T-2"}, started_by="alice")
    rollout.kill(db, "admit_flow", by="ops", reason="too late")
    before = _written(db)
    with pytest.raises(WorkflowKilled, match="too late"):
        rt.start_admitted(early)
    assert _written(db) == before
    with pytest.raises(WorkflowKilled):  # refuse_now: checked at once, as the queue does
        admit(db, stable, {"ticket_id": "T-2"})
    admit(db, stable, {"ticket_id": "T-2"}, refuse_now=False)  # left to the caller's transaction
    with db.read() as conn, pytest.raises(WorkflowKilled):
        early.refuse(conn)
    kept = rt.start_admitted(early, run_id="run_late", record_refusal=True)
    assert kept.status == "halted" and "too late" in (kept.error or "")
    assert [e.kind for e in Ledger(db).entries("run_late")] == ["run_refused"]


def test_the_lint_is_cached_per_version_and_policy(db: Database) -> None:
    calls = []

    class Counting:
        hash, source, text = POLICY.hash, POLICY.source, POLICY.text

        def lint(self, schemas: Any) -> tuple[list[str], list[str]]:
            calls.append(sorted(schemas))
            return POLICY.lint(schemas)

    cache: set[tuple[str, str]] = set()
    for _ in range(3):
        admit(db, stable, {}, policy=Counting(), linted=cache)  # type: ignore[arg-type]
    assert len(calls) == 1 and cache == {(stable.version, POLICY.hash)}
    admit(db, candidate, {}, policy=Counting(), linted=cache)  # type: ignore[arg-type]
    assert len(calls) == 2  # another version is linted again
    with pytest.raises(PolicyError):
        lint(stable, TYPO, cache)
    assert (stable.version, TYPO.hash) not in cache  # a failed lint is not cached


def test_every_entry_point_routes_by_the_rollout_the_same_way(db: Database, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _rollout_of_admit_flow(db, percent=50)
    fake = FakeEngine()
    monkeypatch.setattr(engine, "open_client", lambda _db: fake)  # `tether run --queue` queues into the fake
    secret, _ = create_key(db, name="olga", role="operator")
    api = TestClient(create_app(db), headers={"Authorization": f"Bearer {secret}"})
    runner = CliRunner()
    for key, expected in zip(_keys(), (candidate, stable), strict=True):
        job = {"ticket_id": key}
        picked: dict[str, str] = {}
        picked["admit"] = admit(db, stable, job).workflow.ref
        r = Runtime(db).start(stable, job, started_by="alice")
        assert r.outcome == expected.ref.split(":")[1]  # the version that ran says so
        picked["Runtime.start"] = _ref_of(db, r.run_id)
        with Client(db) as client:
            picked["Client.start"] = _ref_of(db, client.start(stable.ref, job, started_by="alice").run_id)
            client.queue(stable, job, started_by="alice", engine_client=fake)
            picked["Client.queue"] = fake.queued[-1][2]
        res = runner.invoke(cli, ["run", stable.ref, "--input", json.dumps(job), "--db", db_url, "--json"])
        assert res.exit_code == 0, res.stderr
        picked["tether run"] = _ref_of(db, json.loads(res.output)["run_id"])
        res = runner.invoke(cli, ["run", stable.ref, "--queue", "--input", json.dumps(job), "--db", db_url, "--json"])
        assert res.exit_code == 0, res.stderr
        picked["tether run --queue"] = fake.queued[-1][2]
        engine.enqueue(db, stable, job, started_by="alice", client=fake)
        picked["engine.enqueue"] = fake.queued[-1][2]
        out = api.post("/api/runs", json={"workflow": stable.ref, "input": job})
        assert out.status_code == 201, out.text
        picked["POST /api/runs"] = out.json()["workflow_ref"]
        assert _ref_of(db, out.json()["run_id"]) == expected.ref
        assert picked == dict.fromkeys(picked, expected.ref), (key, picked)
    # A queued run starts on the version it was queued with, whatever the split says by the time a worker takes it.
    _, run_id, ref, plain, by, tenant, options = next(q for q in fake.queued if q[2] == candidate.ref)
    rollout.rollback(db, "admit_flow", by="ops", reason="enough")
    assert admit(db, stable, {"ticket_id": _keys()[0]}).workflow is stable  # new runs: the stable version again
    monkeypatch.setattr(engine, "_db", db)
    done = engine.advance(run_id, ref, plain, by, tenant, driver=f"engine:{run_id}", options=options)
    assert done["status"] == "completed" and done["outcome"] == "candidate"
    assert _ref_of(db, run_id) == candidate.ref
    assert Ledger(db).verify().ok


def test_a_version_asked_for_by_its_own_ref_is_not_rerouted(db: Database) -> None:
    _rollout_of_admit_flow(db, percent=100)
    assert admit(db, stable, {"ticket_id": "T-3"}).workflow is candidate  # the stable ref is routed
    assert admit(db, candidate, {"ticket_id": "T-3"}).workflow is candidate
    assert admit(db, stable, {"ticket_id": "T-3"}, route=False).workflow is stable
    r = Runtime(db).start(stable, {"ticket_id": "T-3"}, route=False)
    assert r.outcome == "stable"
    a = admit(db, stable, {})  # no routing key: the stable version
    assert a.workflow is stable and not a.routed


# -- Client -----------------------------------------------------------------------------
def test_client_starts_decides_resumes_cancels_and_gets(db: Database) -> None:
    with Client(db) as client:
        waiting = client.start(stable, {"ticket_id": "T-10", "amount_usd": 500}, started_by="alice")
        assert waiting.status == "waiting_approval" and waiting.approval_id
        got = client.get(waiting.run_id)
        assert (got.run_id, got.workflow, got.status, got.steps) == (waiting.run_id, "admit_flow", "waiting_approval", waiting.steps)
        with pytest.raises(ApprovalError):
            client.decide(waiting.approval_id, approve=True, by="alice")  # not the run's own starter
        decided = client.decide(waiting.approval_id, approve=True, by="lead", reason="fine")
        assert decided.approval.status == "approved" and decided.run is not None and decided.run.status == "completed"
        assert client.get(waiting.run_id).status == "completed"
        with pytest.raises(TetherError, match=f"run {waiting.run_id} already ended \\(completed\\)"):
            client.resume(waiting.run_id)

        # Decided elsewhere (say, the decider's process died before resuming): resumed here.
        other = client.start(stable.ref, {"ticket_id": "T-11", "amount_usd": 500}, started_by="alice")
        ApprovalInbox(db).decide(other.approval_id or "", approve=False, by="lead")
        resumed = client.resume(other.run_id)
        assert resumed.status == "escalated" and resumed.outcome == "refund rejected"

        third = client.start(stable, {"ticket_id": "T-12", "amount_usd": 500}, started_by="alice")
        cancelled = client.cancel(third.run_id, by="ops", reason="duplicate")
        assert cancelled.status == "cancelled" and client.get(third.run_id).status == "cancelled"
        assert ApprovalInbox(db).get(third.approval_id or "").status != "pending"  # withdrawn

        with db.transaction() as conn:
            conn.execute(runs.update().where(runs.c.id == third.run_id).values(status="running"))
        with pytest.raises(TetherError, match="is running; pass --stranded"):
            client.resume(third.run_id)
    assert Ledger(db).verify().ok


def test_client_queues_runs_and_resumptions(db: Database) -> None:
    fake = FakeEngine()
    client = Client(db, policy=POLICY)
    run_id = client.queue(stable, {"ticket_id": "T-20"}, started_by="alice", tenant="acme", engine_client=fake)
    assert fake.queued == [(run_id, run_id, stable.ref, {"ticket_id": "T-20", "amount_usd": 50.0}, "alice", "acme",
                            {"policy_hash": POLICY.hash})]  # fmt: skip
    waiting = client.start(stable, {"ticket_id": "T-21", "amount_usd": 500}, started_by="alice")
    segment = client.queue_resume(waiting.run_id, engine_client=fake)
    assert segment.startswith(f"{waiting.run_id}:resume:") and fake.queued[-1][0] == segment
    client.close()


def test_client_leaves_a_runtime_it_was_given_open(db: Database) -> None:
    rt = Runtime(db)
    with Client(db, runtime=rt) as client:
        assert client.runtime is rt
        client.start(stable, {"ticket_id": "T-30"})
    assert client.runtime is rt  # not closed and dropped: the caller owns it
    rt.close()
