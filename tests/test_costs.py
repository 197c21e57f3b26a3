"""The cost meter, the per-run ceiling, budgets and `tether costs`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _flows import POLICY, TOOLS, Job, World, ask_refund_ask
from click.testing import CliRunner

from tether import Choice, DecisionRequest, End, Runtime, Usage, Workflow
from tether.cli import cli
from tether.models.budgets import BudgetExceeded, set_budget
from tether.models.prices import PriceError, load_prices
from tether.record.db import Database
from tether.record.tables import model_calls, runs


class Priced:
    """A stand-in priced as gpt-4.1 that reports fixed usage per call."""

    def __init__(self, name: str = "gpt-4.1", usage: tuple[int, int] = (1000, 100)) -> None:
        self.name = name
        self.usage = usage
        self.asked: list[DecisionRequest] = []

    def choose(self, request: DecisionRequest) -> Choice:
        self.asked.append(request)
        return Choice(point=request.point, option=request.options[0], confidence=0.9, model=self.name,
                      usage=Usage(input_tokens=self.usage[0], output_tokens=self.usage[1]))  # fmt: skip


def _asking_workflow(name: str = "asker", questions: int = 3) -> Workflow[Job, World]:
    wf: Workflow[Job, World] = Workflow(name, input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: World())

    @wf.state(initial=True, goes_to=[])
    def ask(run: Any) -> Any:
        for i in range(questions):
            run.choose(f"q{i}", ["yes", "no"], {"text": "x" * 400})
        return End("completed", "asked")

    return wf


ONE_CALL = (1000 * 2.00 + 100 * 8.00) / 1e6  # $0.0028 at gpt-4.1 prices


def test_each_call_step_and_run_is_priced(db: Database) -> None:
    r = Runtime(db, model=lambda: Priced()).start(_asking_workflow(), {}, tenant="acme")
    assert r.status == "completed"
    with db.read() as conn:
        rows = conn.execute(sa.select(model_calls).order_by(model_calls.c.id)).all()
        run = conn.execute(sa.select(runs.c.cost_usd, runs.c.tokens).where(runs.c.id == r.run_id)).one()
    assert [(x.call_id, x.step, x.tenant, x.workflow, x.model, x.price_version) for x in rows] == [
        (f"1.{i}", 1, "acme", "asker", "gpt-4.1", "2026-11-01") for i in (1, 2, 3)]
    assert all(x.cost_usd == pytest.approx(ONE_CALL) for x in rows)
    assert run.cost_usd == pytest.approx(3 * ONE_CALL) and run.tokens == 3 * 1100


def test_the_ceiling_ends_the_run_before_the_call_that_would_pass_it(db: Database) -> None:
    model = Priced()
    r = Runtime(db, model=lambda: model, cost_ceiling_usd=0.005).start(_asking_workflow(), {})
    assert r.status == "cost_ceiling" and "would take the run past its cost ceiling of $0.0050" in (r.error or "")
    assert len(model.asked) == 1  # the second call was never made
    with db.read() as conn:
        assert conn.execute(sa.select(runs.c.cost_usd).where(runs.c.id == r.run_id)).scalar() == pytest.approx(ONE_CALL)
    r = Runtime(db, model=lambda: Priced(), cost_ceiling_usd=1.0).start(_asking_workflow(), {})
    assert r.status == "completed"
    r = Runtime(db, model=lambda: Priced(name="offline:free"), cost_ceiling_usd=0.0).start(_asking_workflow(), {})
    assert r.status == "completed"  # a free model never reaches a zero ceiling


def test_a_bad_ceiling_in_the_environment_fails_before_the_run_exists(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_COST_CEILING_USD", "ten dollars")
    with pytest.raises(Exception, match=r"TETHER_COST_CEILING_USD must be a number"):
        Runtime(db, model=lambda: Priced()).start(_asking_workflow(), {})
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 0
    monkeypatch.setenv("TETHER_COST_CEILING_USD", "0.004")
    assert Runtime(db, model=lambda: Priced()).start(_asking_workflow(), {}).status == "cost_ceiling"


def test_budgets_refuse_new_runs_once_spent(db: Database) -> None:
    rt = Runtime(db, model=lambda: Priced())
    with db.transaction() as conn:
        set_budget(conn, "tenant", "acme", "daily", 0.005)
        set_budget(conn, "feature", "asker", "monthly", 0.02)
    assert rt.start(_asking_workflow(), {}, tenant="acme").status == "completed"  # spends $0.0084
    with pytest.raises(BudgetExceeded, match=r"daily budget of tenant 'acme' is spent \(\$0\.0084 of \$0\.0050\); new runs are refused until"):
        rt.start(_asking_workflow(), {}, tenant="acme")
    assert rt.start(_asking_workflow(), {}, tenant="globex").status == "completed"  # other tenants go on
    with pytest.raises(BudgetExceeded, match="monthly budget of feature 'asker'"):
        for _ in range(3):
            rt.start(_asking_workflow(), {}, tenant="initech")
    assert rt.start(_asking_workflow("other_feature"), {}, tenant="initech").status == "completed"
    with db.read() as conn:
        statuses = conn.execute(sa.select(runs.c.status)).scalars().all()
    assert set(statuses) == {"completed"}  # a refused run leaves nothing behind


def test_costs_command_and_budget_cli(db_url: str) -> None:
    db = Database(db_url)
    rt = Runtime(db, model=lambda: Priced())
    rt.start(_asking_workflow(), {}, tenant="acme")
    rt.start(_asking_workflow("other"), {}, tenant="globex")
    Runtime(db, model=lambda: Priced(name="claude-haiku-4-5", usage=(500, 50))).start(_asking_workflow(), {}, tenant="acme")
    cli_run = CliRunner()
    r = cli_run.invoke(cli, ["costs", "--db", db_url, "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    haiku = (500 * 1.00 + 50 * 5.00) / 1e6
    assert out["total_usd"] == pytest.approx(6 * ONE_CALL + 3 * haiku, abs=1e-6)
    assert {t["name"]: t["calls"] for t in out["by_tenant"]} == {"acme": 6, "globex": 3}
    assert {w["name"]: w["cost_usd"] for w in out["by_workflow"]} == pytest.approx({"asker": 3 * ONE_CALL + 3 * haiku, "other": 3 * ONE_CALL}, abs=1e-6)
    assert {m["name"] for m in out["by_model"]} == {"gpt-4.1", "claude-haiku-4-5"}
    assert len(out["by_day"]) == 1 and out["completed_runs"] == 3
    r = cli_run.invoke(cli, ["costs", "--db", db_url, "--tenant", "globex", "--json"])
    assert json.loads(r.stdout)["total_usd"] == pytest.approx(3 * ONE_CALL, abs=1e-6)
    r = cli_run.invoke(cli, ["costs", "--db", db_url])
    assert r.exit_code == 0 and "by model:" in r.stdout and "gpt-4.1" in r.stdout
    r = cli_run.invoke(cli, ["costs", "budget", "tenant", "acme", "--daily", "0.01", "--db", db_url])
    assert r.exit_code == 0, r.stderr
    r = cli_run.invoke(cli, ["costs", "budget", "feature", "support_triage", "--daily", "0", "--db", db_url])
    r = cli_run.invoke(cli, ["run", "support_triage", "--db", db_url, "--input", '{"customer_id": "C0001", "text": "where is my card"}'])
    assert r.exit_code == 1 and r.stderr.startswith("error: daily budget of feature 'support_triage' is spent ($0.0000 of $0.0000)")
    cli_run.invoke(cli, ["costs", "budget", "feature", "support_triage", "--daily", "0", "--remove", "--db", db_url])
    with db.read() as conn:
        from tether.models.budgets import list_budgets

        assert [(b["name"], b["period"], b["limit_usd"]) for b in list_budgets(conn)] == [("acme", "daily", 0.01)]
    db.dispose()


@pytest.mark.parametrize("args, message", [
    (["costs", "--since", "last week"], "--since must be a day like 2026-11-01"),
    (["costs", "budget", "tenant", "acme"], "give --daily USD and/or --monthly USD"),
    (["costs", "budget", "tenant", "acme", "--daily", "-1"], "a budget limit must be >= 0 USD"),
    (["costs", "budget", "team", "acme", "--daily", "1"], "'team' is not one of 'tenant', 'feature', 'action'"),
])  # fmt: skip
def test_costs_bad_input_is_one_line(db_url: str, args: list[str], message: str) -> None:
    Database(db_url).dispose()
    p = subprocess.run([sys.executable, "-c", "from tether.cli import main; main()", *args, "--db", db_url],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode != 0 and p.stderr.startswith("error: ") and message in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_costs_on_a_missing_database_is_an_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["costs", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert r.exit_code == 1 and r.stderr.startswith("error:")


def test_price_files_override_and_are_checked(tmp_path: Path) -> None:
    f = tmp_path / "prices.yaml"
    f.write_text("version: '2026-12-01'\nmodels:\n  my-llama: {input: 0.05, output: 0.10}\n  gpt-4.1: {input: 1.0, output: 4.0}\n")
    table = load_prices(str(f))
    assert table.cost("compatible:my-llama", Usage(input_tokens=1_000_000, output_tokens=1_000_000)) == (pytest.approx(0.15), "2026-12-01")
    assert table.cost("gpt-4.1", Usage(input_tokens=1_000_000))[0] == pytest.approx(1.0)
    assert table.cost("unknown-model", Usage(input_tokens=10)) == (0.0, None)
    f.write_text("version: '2026-12-01'\nmodels:\n  my-llama: {input: -1, output: 0.10}\n")
    with pytest.raises(PriceError, match="model 'my-llama' needs input and output"):
        load_prices(str(f))
    f.write_text("models: {}\n")
    with pytest.raises(PriceError, match="needs `version"):
        load_prices(str(f))


def test_demo_json_reports_cost_and_tokens(db_url: str) -> None:
    r = CliRunner().invoke(cli, ["demo", "--tickets", "3", "--db", db_url, "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cost_usd"] == 0.0 and out["tokens"] == 0  # the offline classifier is free and uses no LLM tokens


def test_runs_show_reports_cost_per_run_and_step(db_url: str) -> None:
    db = Database(db_url)
    r = Runtime(db, model=lambda: Priced()).start(_asking_workflow(), {})
    db.dispose()
    out = json.loads(CliRunner().invoke(cli, ["runs", "show", r.run_id, "--db", db_url, "--json"]).stdout)
    assert out["cost_usd"] == pytest.approx(3 * ONE_CALL) and out["tokens"] == 3300
    assert out["cost_by_step"] == {"1": pytest.approx(3 * ONE_CALL)}
    text = CliRunner().invoke(cli, ["runs", "show", r.run_id, "--db", db_url]).stdout
    assert "q0 -> yes (0.90, gpt-4.1 $0.002800)" in text


def test_a_resumed_run_keeps_what_it_spent_before_the_pause(db: Database) -> None:
    from tether import ApprovalInbox

    wf = ask_refund_ask()

    model = Priced()
    rt = Runtime(db, model=lambda: model, cost_ceiling_usd=0.005)
    r = rt.start(wf, {}, started_by="alice")
    assert r.status == "waiting_approval" and len(model.asked) == 1
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="bob", reason="ok")
    r = Runtime(db, model=lambda: model, cost_ceiling_usd=0.005).resume(r.run_id, wf)
    assert r.status == "cost_ceiling" and len(model.asked) == 1  # $0.0028 spent before the pause still counts


def test_the_costs_migration_matches_the_tables(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tether.record.tables import metadata

    mine = {"model_calls", "budgets", "answer_cache", "memory_items", "observations"}
    with db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    def touches(d: Any) -> bool:
        text = repr(d)
        return any(t in text for t in mine) or "cost_usd" in text or "'tokens'" in text
    assert [d for d in diffs if touches(d)] == []


def test_chat_spans_carry_the_cost(db: Database) -> None:
    from tether.record.tables import spans

    r = Runtime(db, model=lambda: Priced()).start(_asking_workflow(), {})
    with db.read() as conn:
        rows = conn.execute(sa.select(spans.c.name, spans.c.attributes).where(spans.c.run_id == r.run_id)).all()
    chats = [a for n, a in rows if n.startswith("chat ")]
    assert len(chats) == 3 and all(a["tether.cost.usd"] == pytest.approx(ONE_CALL) for a in chats)


def test_an_action_budget_set_in_this_process_applies_at_once(db: Database) -> None:
    """A budget set in this process applies at once, even when a check runs between the write
    and its commit (the change counts when it commits)."""
    from tether.models.budgets import ActionBudgets, set_budget

    ab = ActionBudgets(db, refresh_s=3600)
    assert ab.refuse("payments.refund") is None
    with db.transaction() as conn:
        set_budget(conn, "action", "payments.refund", "daily", 0.0)  # $0: spent at once
        ab.refuse("payments.refund")  # another thread of this process asks meanwhile
    assert ab.refuse("payments.refund") is not None


def test_action_budget_checks_cost_no_query_for_tools_without_one(db: Database) -> None:
    """The names of budgeted tools are read once per refresh: a call to another tool makes no
    query, and a budget written by another process applies once the names are read again."""
    import time

    from tether.models.budgets import ActionBudgets
    from tether.record.db import timestamp
    from tether.record.tables import budgets

    ab = ActionBudgets(db, refresh_s=0.2)
    assert ab.refuse("notes.add") is None  # reads the (empty) names
    queries: list[str] = []
    sa.event.listen(db.engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
    for _ in range(50):
        assert ab.refuse("notes.add") is None
    assert queries == []
    with db.transaction() as conn:  # as another process would: no in-process notice
        conn.execute(budgets.insert().values(scope="action", name="notes.add", period="daily", limit_usd=0.0,
                                             created_at=timestamp()))  # fmt: skip
    time.sleep(0.25)
    assert "budget of action 'notes.add' is spent" in (ab.refuse("notes.add") or "")
