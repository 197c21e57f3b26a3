"""The router (cheap first, escalate on doubt) and plan-big/execute-small."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tether import Choice, DecisionRequest, Runtime, Usage
from tether.evals.golden import load_cases
from tether.evals.runner import run_cases
from tether.models.base import ModelError
from tether.models.planner import check_plan
from tether.models.router import Router, route_report
from tether.record.db import Database
from tether.record.tables import model_calls
from tether.workflows.triage import agents
from tether.workflows.triage.tools import TOOLS

REQ = DecisionRequest(point="intent", options=["a", "b"], observation={"text": "hello"})


class Fixed:
    def __init__(self, name: str, option: str | None, confidence: float, error: str | None = None, raises: bool = False) -> None:
        self.name, self.option, self.confidence, self.error, self.raises = name, option, confidence, error, raises
        self.asked = 0

    def choose(self, request: DecisionRequest) -> Choice:
        self.asked += 1
        if self.raises:
            raise ModelError(f"{self.name}: HTTP 429 after retries")
        return Choice(point=request.point, option=self.option, confidence=self.confidence, model=self.name,
                      error=self.error, usage=Usage(input_tokens=100, output_tokens=10))  # fmt: skip


def test_the_cheap_model_answers_when_sure() -> None:
    small, large = Fixed("small", "a", 0.9), Fixed("large", "b", 0.99)
    c = Router([small, large], threshold=0.6).choose(REQ)
    assert (c.option, c.model, large.asked) == ("a", "small", 0)


@pytest.mark.parametrize("small", [Fixed("small", "a", 0.3), Fixed("small", "zzz", 0.9), Fixed("small", None, 0.0, error="bad schema"),
                                   Fixed("small", "a", 0.9, raises=True)])  # fmt: skip
def test_doubt_schema_failure_or_an_error_escalates(small: Fixed) -> None:
    c = Router([small, Fixed("large", "b", 0.95)], threshold=0.6).choose(REQ)
    assert (c.option, c.model) == ("b", "large")
    assert [x.model for x in c.calls] == ["small", "large"]
    assert c.usage.input_tokens == (100 if small.raises else 200)  # every call made is counted


def test_the_largest_unsure_goes_to_a_human() -> None:
    c = Router([Fixed("small", "a", 0.2), Fixed("large", "b", 0.4)], threshold=0.6).choose(REQ)
    assert c.ok and c.confidence == 0.4  # below the threshold: the workflow hands it to a person
    report = route_report([c], ["b"], threshold=0.6)
    assert report["human_share"] == 1.0 and report["escalation_share"] == 1.0
    c = Router([Fixed("small", None, 0.0, error="x"), Fixed("large", "a", 0.9, raises=True)]).choose(REQ)
    assert not c.ok and "no tier gave a valid answer" in (c.error or "")


def test_triage_with_the_offline_classifier_then_a_large_model(db: Database) -> None:
    """The router on real golden tickets: per-route accuracy and escalation share are recorded."""
    from tether.workflows.triage.flow import workflow
    from tether.workflows.triage.model import classifier

    router = Router([classifier(), agents.StandIn("scripted:large")], threshold=0.6)
    rt = Runtime(db, model=lambda: router)
    from tether.workflows.triage import data as tdata
    from tether.workflows.triage import systems

    systems.Systems(db)
    picked = tdata.demo_tickets(60, 11)
    with db.transaction() as conn:
        conn.execute(systems.tickets.insert(), [{"id": f"R-{i}", "customer_id": c, "text": ex.text, "status": "new",
                                                 "created_at": "t", "updated_at": "t"} for i, (ex, c) in enumerate(picked)])  # fmt: skip
    choices, expected = [], []
    for i, (ex, _) in enumerate(picked):
        r = rt.start(workflow, {"ticket_id": f"R-{i}"})
        assert r.status in ("completed", "escalated", "waiting_approval")
        with db.read() as conn:
            from tether.record import runs as store

            ev = next(e for e in store.load_events(conn, r.run_id) if e.kind == "choice")
        choices.append(Choice.model_validate(ev.data["choice"]))
        expected.append(ex.intent)
    report = route_report(choices, expected, threshold=0.6)
    routes = report["routes"]
    assert set(routes) <= {"offline:banking77-intent", "scripted:large", "human"}
    assert 0 < report["escalation_share"] < 1 and routes["scripted:large"]["accuracy"] == 1.0  # the stand-in is an oracle
    assert routes["offline:banking77-intent"]["accuracy"] > 0.85
    with db.read() as conn:
        priced = dict(conn.execute(sa.select(model_calls.c.model, sa.func.sum(model_calls.c.cost_usd)).group_by(model_calls.c.model)).all())
    assert priced["offline:banking77-intent"] == 0.0 and priced["scripted:large"] > 0


GOLDEN = Path(__file__).resolve().parent.parent / "evals" / "support_triage.jsonl"
SPECS = {t.name: t.spec() for t in TOOLS}


def test_plans_are_checked_against_the_tool_schemas() -> None:
    ok, errors = check_plan({"steps": [{"tool": "helpdesk.route", "args": {"ticket_id": "T1", "queue": "cards", "priority": "low"}}]}, SPECS)
    assert ok is not None and errors == []
    _, errors = check_plan({"steps": [{"tool": "helpdesk.route", "args": {"ticket_id": "T1", "queue": "moon", "priority": "low"}}]}, SPECS)
    assert errors and "step 1 (helpdesk.route)" in errors[0] and "queue" in errors[0]
    _, errors = check_plan({"steps": [{"tool": "shell.exec", "args": {}}]}, SPECS)
    assert errors == ["step 1: 'shell.exec' is not one of the tools offered"]
    _, errors = check_plan({"steps": "everything"}, SPECS)
    assert errors[0].startswith("not a plan")


def test_plan_big_execute_small_on_golden_cases_uses_fewer_tokens() -> None:
    """Same tickets, same policy: the planned agent succeeds like the single loop with far fewer tokens.
    The case set includes policy denials (account closure, large refunds) that send the plan back to the planner."""
    every = load_cases(GOLDEN)
    cases = []
    for kind in ("answer", "refund", "freeze", "incident", "close"):
        cases += [c for c in every if c.meta["playbook"] == kind][:5]
    planned = run_cases(cases, workflow="tether.workflows.triage.agents:planned")
    loop = run_cases(cases, workflow="tether.workflows.triage.agents:loop")
    assert all(r.success for r in planned), [(r.id, r.failures) for r in planned if not r.success]
    assert sum(r.success for r in loop) == len(cases)
    t_plan, t_loop = sum(r.tokens for r in planned), sum(r.tokens for r in loop)
    assert t_plan < 0.6 * t_loop, (t_plan, t_loop)
    assert all(r.cost_usd > 0 for r in planned)


def test_a_denied_step_goes_back_to_the_planner(db: Database) -> None:
    from tether.workflows.triage import data as tdata
    from tether.workflows.triage import systems

    text = next(e.text for e in tdata.examples() if e.intent == "terminate_account")
    rt = Runtime(db)
    systems.Systems(db)
    tdata.seed_bank(systems.Systems(db))
    with db.transaction() as conn:
        conn.execute(systems.tickets.insert().values(id="P-1", customer_id="C0003", text=text, status="new", created_at="t", updated_at="t"))
    r = rt.start(agents.planned, {"ticket_id": "P-1"})
    assert r.status == "escalated"
    with db.read() as conn:
        from tether.record import runs as store

        events = store.load_events(conn, r.run_id)
    plans = [e for e in events if e.kind == "choice"]
    assert len(plans) == 2  # the first plan, and the one after the denial
    assert [s["tool"] for s in plans[1].data["choice"]["args"]["steps"]] == ["helpdesk.tag", "helpdesk.escalate"]
    proposals = [e.data["tool"] for e in events if e.kind == "proposal"]
    assert "crm.delete_customer" in proposals and proposals[-1] == "helpdesk.escalate"
    assert all(e.data["proposer"].startswith("planner:") for e in events if e.kind == "proposal" and e.data["tool"] != "helpdesk.get_ticket"
               and e.data["tool"] != "crm.lookup_customer")  # fmt: skip


def test_eval_under_a_configured_router_reports_model_routes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """TETHER_ROUTER: the offline classifier, then an OpenAI-compatible server; the eval records routes per model."""
    import json

    from _llm_servers import openai_content, openai_server
    from click.testing import CliRunner

    from tether.cli import cli

    with openai_server([openai_content('{"option": "card_arrival", "confidence": 0.95}', prompt=900, completion=12)]) as srv:
        monkeypatch.setenv("TETHER_ROUTER", "offline,compatible:gpt-4.1")
        monkeypatch.setenv("TETHER_MODEL_BASE_URL", srv.url + "/v1")
        out = tmp_path / "result.json"
        r = CliRunner().invoke(cli, ["eval", str(GOLDEN), "--limit", "60", "--out", str(out)])
    assert r.exit_code == 0, r.output + r.stderr
    res = json.loads(out.read_text())
    routes = res["model_routes"]
    assert routes["offline:banking77-intent"]["cases"] > 40 and routes["offline:banking77-intent"]["routing_accuracy"] > 0.85
    assert routes["compatible:gpt-4.1"]["cases"] == len(srv.requests) > 0  # every escalation reached the server
    assert res["model_escalation_share"] == pytest.approx(len(srv.requests) / 60, abs=1e-4)
    assert res["cost_total_usd"] == pytest.approx(len(srv.requests) * (900 * 2.0 + 12 * 8.0) / 1e6, abs=1e-6)
