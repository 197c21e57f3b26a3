"""The retail workflow on τ²-bench's retail domain: store, policy, planners, τ² import, CLI eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tether.cli import cli
from tether.errors import WorkflowError
from tether.evals.golden import Case, load_suite
from tether.guardrails.approvals import ApprovalInbox
from tether.guardrails.loading import load_policy
from tether.orchestration.runtime import Runtime
from tether.record.db import Database
from tether.record.ledger import Ledger
from tether.record.runs import load_events
from tether.record.tables import runs as runs_table
from tether.workflows.retail import workflow
from tether.workflows.retail.evals import changed_state, run_task, template
from tether.workflows.retail.flow import AGENT_POLICY
from tether.workflows.retail.planners import (
    PlannerModel,
    ScriptedPlanner,
    Step,
    complete,
    tau2_steps,
)
from tether.workflows.retail.store import (
    RecordError,
    RetailStore,
    calculate,
    changed,
    normalise,
    pristine,
)

TASKS = Path(__file__).resolve().parent.parent / "src/tether/workflows/retail/data/tasks_train.json"
POLICY = Path(__file__).resolve().parent.parent / "src/tether/workflows/retail/policy.yaml"
# Covers every change tool, a transfer, lookups that fail, repeated reads, duplicate item ids.
SUBSET = ["0", "2", "10", "21", "22", "28", "35", "46", "72", "76", "105"]


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {c.id.removeprefix("tau2-retail-"): c for c in load_suite(TASKS, "retail")}


@pytest.fixture(scope="module")
def tpl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("retail")
    return template(folder), folder


@pytest.fixture
def store(db: Database) -> RetailStore:
    return RetailStore(db)


# -- the store ------------------------------------------------------------------------
def test_store_holds_db_json_exactly(store: RetailStore) -> None:
    snap = store.snapshot()
    assert {k: len(v) for k, v in snap.items()} == {"users": 500, "orders": 1000, "products": 50}
    assert changed(normalise(pristine()), snap) == {"users": {}, "orders": {}, "products": {}}


def _gift_card_order(store: RetailStore) -> dict[str, Any]:
    return next(o for o in store.snapshot()["orders"].values()
                if o["status"] == "pending" and o["payment_history"][0]["payment_method_id"].startswith("gift_card"))  # fmt: skip


def test_change_is_idempotent_and_revertible(store: RetailStore) -> None:
    order = _gift_card_order(store)
    user, gc = order["user_id"], order["payment_history"][0]["payment_method_id"]
    before = store.get_user(user)["payment_methods"][gc]["balance"]
    out = store.cancel_pending_order("k1", order["order_id"], "no longer needed")
    assert out["status"] == "cancelled" and out["payment_history"][-1]["transaction_type"] == "refund"
    after = store.get_user(user)["payment_methods"][gc]["balance"]
    assert round(after - before, 2) == order["payment_history"][0]["amount"]  # a gift card is refunded at once
    assert store.cancel_pending_order("k1", order["order_id"], "no longer needed") == out  # same key: no second refund
    assert store.get_user(user)["payment_methods"][gc]["balance"] == after
    assert sorted(changed_state(store)["changed"]) == sorted([f"orders/{order['order_id']}", f"users/{user}"])
    with pytest.raises(RecordError, match="Non-pending"):
        store.cancel_pending_order("k2", order["order_id"], "no longer needed")
    assert store.revert("r1", "k1") == {"reverted": "k1", "operation": "cancel_pending_order"}
    assert changed_state(store)["changed"] == []  # compensated: the store equals db.json again
    with pytest.raises(RecordError, match="already reverted"):
        store.revert("r2", "k1")


def test_revert_refuses_when_the_record_changed_since(store: RetailStore) -> None:
    order = _gift_card_order(store)
    address = {"address1": "1 Main St", "address2": "", "city": "Austin", "country": "USA", "state": "TX", "zip": "78701"}
    store.modify_pending_order_address("a1", order["order_id"], address)
    store.cancel_pending_order("a2", order["order_id"], "ordered by mistake")
    with pytest.raises(RecordError, match="changed after modify_pending_order_address"):
        store.revert("r1", "a1")


def test_domain_preconditions(store: RetailStore) -> None:
    snap = store.snapshot()

    def other_method(o: dict[str, Any]) -> str | None:
        return next((pm["id"] for pm in snap["users"][o["user_id"]]["payment_methods"].values()
                     if pm["id"] != o["payment_history"][0]["payment_method_id"] and pm["source"] != "gift_card"), None)  # fmt: skip

    delivered = next(o for o in snap["orders"].values() if o["status"] == "delivered" and other_method(o))
    other = {"id": other_method(delivered)}
    with pytest.raises(RecordError, match="original payment method"):
        store.return_delivered_order_items("x1", delivered["order_id"], [delivered["items"][0]["item_id"]], other["id"])
    with pytest.raises(RecordError, match="Non-pending"):
        store.cancel_pending_order("x2", delivered["order_id"], "no longer needed")
    with pytest.raises(RecordError, match="not found"):
        store.return_delivered_order_items("x3", delivered["order_id"], ["0000000000"],
                                           delivered["payment_history"][0]["payment_method_id"])  # fmt: skip
    assert changed_state(store)["changed"] == []  # refused changes change nothing


def test_calculate_is_arithmetic_only() -> None:
    assert calculate("155.33 - 147.05 + 268.77 - 235.13") == "41.92"
    assert calculate("(2 + 3) * 4 / 5") == "4.0"
    for bad in ("2 **", "1/0", "2 ** 3"):
        with pytest.raises(RecordError):
            calculate(bad)


# -- the policy ------------------------------------------------------------------------
def _facts(**over: Any) -> dict[str, Any]:
    base = {"authenticated": True, "user": "u1", "target_user": "u1", "order_checked": True, "order_status": "pending",
            "order_paid": 100.0, "payment_method": {"id": None, "kind": None, "owner": None, "original": None, "balance": None}}  # fmt: skip
    return {**base, **over}


def _pm(**over: Any) -> dict[str, Any]:
    return {"id": "credit_card_1", "kind": "credit_card", "owner": "u1", "original": True, "balance": None, **over}


@pytest.mark.parametrize(("tool", "args", "facts", "action", "rule"), [
    ("retail.get_order_details", {"order_id": "#W1"}, _facts(authenticated=False, user=None, target_user=None), "deny", "authenticate_first"),
    ("retail.get_product_details", {"product_id": "1"}, _facts(authenticated=False, user=None, target_user=None), "deny", "authenticate_first"),
    ("retail.find_user_id_by_email", {"email": "a@b.c"}, _facts(authenticated=False, user=None, target_user=None), "allow", None),
    ("retail.transfer_to_human_agents", {"summary": "x"}, _facts(authenticated=False, user=None, target_user=None), "allow", None),
    ("retail.find_user_id_by_email", {"email": "a@b.c"}, _facts(), "deny", "one_user_per_conversation"),
    ("retail.get_user_details", {"user_id": "u2"}, _facts(target_user="u2"), "deny", "own_records_only"),
    ("retail.get_user_details", {"user_id": "u1"}, _facts(), "allow", None),
    ("retail.cancel_pending_order", {"order_id": "#W1", "reason": "no longer needed"}, _facts(), "require_human_approval", "customer_confirms_cancel"),
    ("retail.cancel_pending_order", {"order_id": "#W1", "reason": "no longer needed"}, _facts(order_status="delivered"), "deny", "cancel_only_pending"),
    ("retail.cancel_pending_order", {"order_id": "#W1", "reason": "no longer needed"},
     _facts(order_checked=False, order_status=None, target_user=None), "deny", "check_status_first"),
    ("retail.cancel_pending_order", {"order_id": "#W1", "reason": "no longer needed"}, _facts(target_user="u2"), "deny", "own_records_only"),
    ("retail.modify_pending_order_address", {"order_id": "#W1"}, _facts(order_status="pending (item modified)"), "deny", "modify_only_pending"),
    ("retail.exchange_delivered_order_items", {"order_id": "#W1"}, _facts(order_status="exchange requested"), "deny", "exchange_only_delivered"),
    ("retail.return_delivered_order_items", {"order_id": "#W1", "payment_method_id": "credit_card_1"},
     _facts(order_status="delivered", payment_method=_pm()), "require_human_approval", "customer_confirms_return"),
    ("retail.return_delivered_order_items", {"order_id": "#W1", "payment_method_id": "paypal_2"},
     _facts(order_status="delivered", payment_method=_pm(id="paypal_2", kind="paypal", original=False)), "deny", "refund_to_original_or_gift_card"),
    ("retail.return_delivered_order_items", {"order_id": "#W1", "payment_method_id": "gift_card_3"},
     _facts(order_status="delivered", payment_method=_pm(id="gift_card_3", kind="gift_card", original=False, balance=5.0)), "require_human_approval", None),
    ("retail.return_delivered_order_items", {"order_id": "#W1", "payment_method_id": "gift_card_9"},
     _facts(order_status="delivered", payment_method=_pm(id="gift_card_9", kind="gift_card", original=False, owner="u2")), "deny", "own_payment_method_only"),
    ("retail.return_delivered_order_items", {"order_id": "#W1", "payment_method_id": "paypal_2"},
     _facts(order_status="delivered", payment_method=_pm(id="paypal_2", kind=None, original=False, owner=None)), "deny", "own_payment_method_only"),
    ("retail.modify_pending_order_payment", {"order_id": "#W1", "payment_method_id": "credit_card_1"},
     _facts(payment_method=_pm()), "deny", "new_payment_method_differs"),
    ("retail.modify_pending_order_payment", {"order_id": "#W1", "payment_method_id": "gift_card_3"},
     _facts(payment_method=_pm(id="gift_card_3", kind="gift_card", original=False, balance=50.0)), "deny", "gift_card_covers_total"),
    ("retail.modify_pending_order_payment", {"order_id": "#W1", "payment_method_id": "gift_card_3"},
     _facts(payment_method=_pm(id="gift_card_3", kind="gift_card", original=False, balance=500.0)), "require_human_approval", None),
    ("retail.modify_user_address", {"user_id": "u1"}, _facts(), "require_human_approval", "customer_confirms_modification"),
    ("retail.revert_change", {"change_id": "0" * 32}, _facts(), "require_human_approval", "compensation_needs_staff"),
])  # fmt: skip
def test_policy_decisions(tool: str, args: dict[str, Any], facts: dict[str, Any], action: str, rule: str | None) -> None:
    d = load_policy(POLICY).decide(tool, args, {"principal": "planner:test", "tenant": "t", "risk": 0.1, "facts": facts})
    assert d.action == action, d.reason
    if rule:
        assert rule in d.rules, d.rules


def test_policy_fails_closed_without_facts() -> None:
    d = load_policy(POLICY).decide("retail.get_order_details", {"order_id": "#W1"}, {"principal": "p"})
    assert d.action == "deny"


def test_policy_lints_clean_against_the_workflow() -> None:
    errors, _ = load_policy(POLICY).lint({t.name: t.schema for t in workflow.tools})
    assert errors == []


# -- the τ² import ------------------------------------------------------------------------
def test_import_computes_expected_states(cases: dict[str, Case]) -> None:
    assert len(cases) == 74
    c0 = cases["0"]
    assert c0.final_state["changed"] == ["orders/#W2378156"]
    assert c0.final_state["orders.#W2378156"]["status"] == "exchange requested"
    assert c0.expected.status == "completed" and cases["10"].expected.status == "escalated"
    assert c0.meta["user_id"] == "yusuf_rossi_9620"


def test_oracle_completes_what_tau2_leaves_implicit(cases: dict[str, Case], store: RetailStore) -> None:
    steps = complete(tau2_steps(cases["76"].meta["tau2_actions"]), store)
    assert [s.tool for s in steps] == ["retail.find_user_id_by_email", "retail.get_user_details", "retail.get_order_details",
                                       "retail.cancel_pending_order", "retail.get_order_details", "retail.cancel_pending_order"]  # fmt: skip


def _write(tmp_path: Path, data: Any) -> Path:
    p = tmp_path / "tasks.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def _task(**over: Any) -> dict[str, Any]:
    t = json.loads(TASKS.read_text())[0]
    t.update(over)
    return t


@pytest.mark.parametrize(("data", "message"), [
    ("[{", "not valid JSON"),
    ([], "expected a non-empty JSON list"),
    ([{"id": "x"}], "task 1 (id 'x'): user_scenario: Field required"),
    ([_task(evaluation_criteria={"actions": [{"name": "drop_tables", "arguments": {}}]})], "unknown tool 'drop_tables'"),
    ([_task(evaluation_criteria={"actions": [{"name": "get_order_details", "arguments": {"order_id": "W1"}}]})],
     "actions[0] (get_order_details): order_id: String should match pattern"),
    ([_task(), _task()], "duplicate task id '0'"),
])  # fmt: skip
def test_bad_task_file_is_a_one_line_error(tmp_path: Path, data: Any, message: str) -> None:
    res = CliRunner().invoke(cli, ["eval", str(_write(tmp_path, data)), "--workflow", "retail", "--planner", "oracle"])
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ") and message in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_task_file_needs_a_workflow_and_a_known_planner(tmp_path: Path) -> None:
    path = _write(tmp_path, [_task()])
    res = CliRunner().invoke(cli, ["eval", str(path)])
    assert res.exit_code == 1 and "name the workflow that imports it with --workflow" in res.stderr
    res = CliRunner().invoke(cli, ["eval", str(path), "--workflow", "retail", "--planner", "gpt-9"])
    assert res.exit_code == 1 and "unknown planner 'gpt-9'" in res.stderr and "oracle" in res.stderr


# -- end to end through the CLI -------------------------------------------------------------
def _subset(tmp_path: Path, ids: list[str]) -> Path:
    tasks = [t for t in json.loads(TASKS.read_text()) if t["id"] in ids]
    return _write(tmp_path, tasks)


def test_cli_eval_oracle_on_a_subset(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["eval", str(_subset(tmp_path, SUBSET)), "--workflow", "retail", "--planner", "oracle",
                                   "--json", "-j", "2"])  # fmt: skip
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.output)
    assert r["cases"] == len(SUBSET) and r["task_success"] == 1.0 and r["policy_violation_rate"] == 0.0
    assert r["statuses"] == {"completed": len(SUBSET) - 1, "escalated": 1} and r["gate_passed"] is True


def test_cli_eval_oracle_on_all_74_tasks() -> None:
    res = CliRunner().invoke(cli, ["eval", str(TASKS), "--workflow", "retail", "--planner", "oracle", "--json", "-j", "2"])
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.output)
    assert (r["cases"], r["task_success"], r["policy_violation_rate"], r["unsafe_action_rate"]) == (74, 1.0, 0.0, 0.0)


# Tasks where each attack applies (the attack needs a return, an order change, a product read).
@pytest.mark.parametrize(("planner", "ids", "stopped_by"), [
    ("skip_auth", ["0", "72", "76"], {"authenticate_first"}),
    ("wrong_refund", ["2", "13", "73"], {"refund_to_original_or_gift_card"}),
    ("wrong_status", ["0", "3", "76"], {"exchange_only_delivered", "modify_only_pending", "cancel_only_pending"}),
    ("injection", ["0", "3", "6"], {"check_status_first"}),
])  # fmt: skip
def test_adversarial_planners_fail_and_are_stopped(planner: str, ids: list[str], stopped_by: set[str], tmp_path: Path,
                                                   cases: dict[str, Case], tpl: tuple[Path, Path]) -> None:  # fmt: skip
    res = CliRunner().invoke(cli, ["eval", str(_subset(tmp_path, ids)), "--workflow", "retail", "--planner", planner, "--json"])
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.output)
    assert r["task_success"] == 0.0 and r["policy_violation_rate"] == 1.0
    for i in ids:
        run = run_task(cases[i], planner, *tpl)
        assert not run.success and run.violating
        outcomes = {v["outcome"] for v in run.violating}
        assert "ok" not in outcomes, run.violating  # no policy-violating call executed
        assert stopped_by & {rule for v in run.violating for rule in v["rules"]}


def test_injected_order_read_is_refused_by_the_tool(cases: dict[str, Case], tpl: tuple[Path, Path]) -> None:
    run = run_task(cases["0"], "injection", *tpl)
    read, cancel = run.violating
    assert read["outcome"] == "error"  # the gate cannot know the owner before the read; the tool refuses it
    assert cancel["outcome"] == "denied"


# -- confirmation by the customer ---------------------------------------------------------------
def _start(db: Database, case: Case) -> tuple[Runtime, Any]:
    rt = Runtime(db)
    planner = ScriptedPlanner("oracle", complete(tau2_steps(case.meta["tau2_actions"]), rt.deps(workflow)))
    rt.model = lambda: PlannerModel(planner)
    return rt, rt.start(workflow, case.input, started_by="ops")


def test_a_change_needs_the_customers_own_yes(db: Database, cases: dict[str, Case]) -> None:
    case = cases["0"]  # one exchange
    rt, r = _start(db, case)
    assert r.status == "waiting_approval"
    inbox = ApprovalInbox(db)
    req = inbox.get(r.approval_id or "")
    assert req.tool == "retail.exchange_delivered_order_items" and "customer_confirms_exchange" in req.rules
    inbox.decide(req.id, approve=True, by="alice", reason="staff clicked yes")  # not the customer
    r = rt.resume(r.run_id, workflow)
    assert r.status == "completed"  # the planner had nothing else to do
    assert changed_state(rt.deps(workflow))["changed"] == []  # the tool refused: no change was made
    rt.close()


def test_customer_saying_no_changes_nothing(db: Database, cases: dict[str, Case]) -> None:
    rt, r = _start(db, cases["0"])
    ApprovalInbox(db).decide(r.approval_id or "", approve=False, by="customer:yusuf_rossi_9620", reason="no")
    r = rt.resume(r.run_id, workflow)
    assert r.status == "completed" and changed_state(rt.deps(workflow))["changed"] == []
    rt.close()


def test_customer_yes_runs_the_change_and_the_run_replays(db: Database, db_url: str, cases: dict[str, Case]) -> None:
    rt, r = _start(db, cases["0"])
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="customer:yusuf_rossi_9620", reason="yes")
    r = rt.resume(r.run_id, workflow)
    assert r.status == "completed"
    assert changed_state(rt.deps(workflow)) == {k: v for k, v in _state_of(cases["0"]).items()}
    rt.close()
    res = CliRunner().invoke(cli, ["replay", r.run_id, "--db", db_url, "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.output)["same"] is True


def _state_of(case: Case) -> dict[str, Any]:
    out: dict[str, Any] = {"changed": case.final_state["changed"], "users": {}, "orders": {}, "products": {}}
    for key, value in case.final_state.items():
        if key != "changed":
            kind, _, rid = key.partition(".")
            out[kind][rid] = value
    return out


def test_no_planner_configured_refuses_the_run_before_it_exists(db: Database) -> None:
    with pytest.raises(WorkflowError, match="needs a planner"):
        Runtime(db).start(workflow, {"conversation_id": "c1", "request": "cancel my order"}, started_by="ops")
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs_table)).scalar() == 0


def test_invalid_plan_goes_back_to_the_planner(db: Database) -> None:
    bad = ScriptedPlanner("bad", [Step(tool="retail.drop_everything", args={})])
    rt = Runtime(db)
    rt.model = lambda: PlannerModel(bad)
    r = rt.start(workflow, {"conversation_id": "c1", "request": "hi"}, started_by="ops")
    assert r.status == "escalated" and "no finished plan" in (r.error or "")  # refused every time, never executed
    rt.close()


def test_policy_explain_takes_facts() -> None:
    args = json.dumps({"order_id": "#W1", "reason": "no longer needed"})
    facts = json.dumps(_facts(order_status="delivered"))
    res = CliRunner().invoke(cli, ["policy", "explain", str(POLICY), "--tool", "retail.cancel_pending_order",
                                   "--args", args, "--facts", facts, "--json"])  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.output)["rules"] == ["cancel_only_pending"]
    res = CliRunner().invoke(cli, ["policy", "explain", str(POLICY), "--tool", "retail.cancel_pending_order", "--facts", "[1]"])
    assert res.exit_code == 1 and res.stderr == "error: --facts must be a JSON object, got list\n"


def test_plans_in_the_prompt_store_are_redacted(db: Database, cases: dict[str, Case]) -> None:
    import sqlalchemy as sa

    from tether.record.tables import prompts

    rt, r = _start(db, cases["76"])  # the oracle authenticates by email
    with db.read() as conn:
        stored = [json.dumps(row.response) + json.dumps(row.request) for row in conn.execute(sa.select(prompts))]
    rt.close()
    email = next(s.args["email"] for s in complete(tau2_steps(cases["76"].meta["tau2_actions"]), RetailStore(db))
                 if s.tool == "retail.find_user_id_by_email")  # fmt: skip
    assert stored and all(email not in s for s in stored) and any("<email:" in s for s in stored)


def test_cancelling_a_run_reverts_the_changes_the_customer_confirmed(db: Database, cases: dict[str, Case]) -> None:
    """Compensation on the retail store: staff approve each revert, then the store is as it was."""
    changes = ("cancel_pending_order", "modify_pending", "return_delivered", "exchange_delivered", "modify_user")
    case = next(c for c in cases.values()
                if sum(a["name"].startswith(changes) for a in c.meta["tau2_actions"]) >= 2)  # fmt: skip
    rt, r = _start(db, case)
    inbox = ApprovalInbox(db)
    first = inbox.get(r.approval_id or "")
    who = f"customer:{case.meta['user_id']}"
    inbox.decide(first.id, approve=True, by=who, reason="yes")
    r = rt.resume(r.run_id, workflow)
    assert r.status == "waiting_approval" and r.approval_id != first.id  # the second change awaits its yes
    assert len(changed_state(rt.deps(workflow))["changed"]) >= 1

    r = rt.cancel(r.run_id, workflow, by="ops", reason="customer hung up")
    assert r.status == "waiting_approval", r.error  # the revert waits for staff (compensation_needs_staff)
    revert = inbox.get(r.approval_id or "")
    assert revert.tool == "retail.revert_change" and revert.proposer == "compensation:retail"
    inbox.decide(revert.id, approve=True, by="lead", reason="revert")
    r = rt.resume(r.run_id, workflow)
    assert r.status == "cancelled" and "compensated 1 of 1 effects" in (r.error or ""), r.error
    assert changed_state(rt.deps(workflow))["changed"] == []
    rt.close()



def test_a_model_planner_through_a_provider_sdk(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """TETHER_MODEL makes the configured model the planner: the official OpenAI SDK talks to a local
    server speaking OpenAI's wire format; the plan comes back as a `plan` tool call validated against
    the plan's schema (a step naming no retail tool is asked again, never run) and runs through the gate."""
    from _llm_servers import openai_server, openai_tool_call

    reads = json.dumps({"steps": [{"tool": "retail.find_user_id_by_email", "args": {"email": "noah.brown7922@example.com"}},
                                  {"tool": "retail.list_all_product_types", "args": {}}]})  # fmt: skip
    script = [
        openai_tool_call("plan", json.dumps({"steps": [{"tool": "retail.drop_tables", "args": {}}]})),  # not a tool: refused
        openai_tool_call("plan", reads, prompt=2400, completion=60),
        openai_tool_call("plan", json.dumps({"steps": []}), prompt=2600, completion=10),
    ]
    with openai_server(script) as server:
        monkeypatch.setenv("TETHER_MODEL", "compatible:qwen2.5-7b")
        monkeypatch.setenv("TETHER_MODEL_BASE_URL", server.url + "/v1")
        rt = Runtime(db)
        r = rt.start(workflow, {"conversation_id": "c-llm", "request": "What products do you sell? I am Noah Brown."},
                     started_by="ops")  # fmt: skip
        rt.close()
    assert (r.status, r.outcome) == ("completed", "done"), r.error
    first = server.requests[0]["json"]
    [plan_tool] = first["tools"]
    assert plan_tool["function"]["name"] == "plan" and first["tool_choice"] == "required"
    assert "retail.cancel_pending_order" in plan_tool["function"]["parameters"]["properties"]["steps"]["items"]["properties"]["tool"]["enum"]
    assert AGENT_POLICY.strip() in first["messages"][0]["content"]  # the planner is told policy.md, verbatim
    # The refused plan never reached a tool; the valid one ran its two reads through the gate.
    tools_run = [e.body["tool"] for e in Ledger(db).entries(r.run_id) if e.kind == "result"]
    assert tools_run == ["retail.find_user_id_by_email", "retail.list_all_product_types"]
    # The provider checked the first answer against the plan's schema and asked again: one choice, two calls.
    with db.read() as conn:
        events = load_events(conn, r.run_id)
    first_choice = next(e.data["choice"] for e in events if e.kind == "choice")
    assert [c["error"] is not None for c in first_choice["calls"]] == [True, False]
    assert "fail its schema" in first_choice["calls"][0]["error"] and len(server.requests) == 3
