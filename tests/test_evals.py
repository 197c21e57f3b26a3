from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether.cli import cli
from tether.evals.golden import Case, ExpectedAction, load_cases
from tether.evals.scoring import _match_actions, check_state
from tether.orchestration.replay import Action
from tether.workflows.triage import golden

GOLDEN = Path(__file__).resolve().parent.parent / "evals" / "support_triage.jsonl"


def test_golden_file_is_what_the_documented_script_builds() -> None:
    lines = GOLDEN.read_text().splitlines()
    built = [json.dumps(c, ensure_ascii=False, sort_keys=True) for c in golden.build()]
    assert lines == built and len(lines) >= 300
    cases = load_cases(GOLDEN)
    assert len({c.meta["intent"] for c in cases}) == 77


def _act(tool: str, **args: object) -> Action:
    return Action(step=1, state="s", tool=tool, args=dict(args), decision="allow", rules=[], status="ok")


def _case(match: str, *expected: ExpectedAction) -> Case:
    return Case.model_validate({"id": "c", "workflow": "w", "input": {}, "expected": {"match": match, "actions": [e.model_dump() for e in expected]}})


def test_action_matching_modes() -> None:
    a, b, c = _act("t.a", x=1, tags=["p", "q"]), _act("t.b", y="z"), _act("t.c")
    ea, eb = ExpectedAction(tool="t.a", args={"tags": ["q"]}), ExpectedAction(tool="t.b")
    assert _match_actions(_case("exact", ea, eb), [a, b]) is None
    assert "expected 2 actions, got 3" in (_match_actions(_case("exact", ea, eb), [a, c, b]) or "")
    assert _match_actions(_case("subset", ea, eb), [a, c, b]) is None
    assert _match_actions(_case("subset", eb, ea), [a, c, b]) is not None  # order matters
    assert _match_actions(_case("any_order", eb, ea), [a, c, b]) is None
    assert _match_actions(_case("exact", ExpectedAction(tool="t.a", args={"x": 2})), [a]) is not None
    assert _match_actions(_case("exact", ExpectedAction(tool="t.a", args={"x": True})), [a]) is not None  # True is not 1


def test_final_state_assertions() -> None:
    state = {"ticket": {"status": "solved", "tags": ["a", "b"]}, "refunds": [{"id": 1}]}
    assert check_state({"ticket.status": "solved", "ticket.tags": {"includes": ["b"]}, "refunds": {"len": 1}}, state) == []
    problems = check_state({"ticket.status": "open", "ticket.tags": ["a"], "ticket.queue": "x", "refunds": []}, state)
    assert [p.split(":")[0] for p in problems] == ["ticket.status", "ticket.tags", "ticket.queue", "refunds"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 golden cases plus the policy-relevant ones (refunds, freezes, account closure)."""
    lines = GOLDEN.read_text().splitlines()
    keep = lines[:60] + [l for l in lines[60:] if any(p in l for p in ('"refund"', '"freeze"', '"close"'))][:40]
    path = tmp_path_factory.mktemp("golden") / "small.jsonl"
    path.write_text("\n".join(keep) + "\n")
    return path


@pytest.fixture(scope="module")
def baseline(small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("eval")
    out, html = folder / "result.json", folder / "report.html"
    res = CliRunner().invoke(cli, ["eval", str(small), "--json", "--out", str(out), "--html", str(html), "-j", "2"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.output)
    assert json.loads(out.read_text())["task_success"] == data["task_success"]
    page = html.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 4 and "Confusion matrix" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: no outside assets
    return out, data


def test_eval_result_contract_and_figures(baseline: tuple[Path, dict]) -> None:
    _, r = baseline
    assert r["cases"] == 100
    for key in ("cases", "task_success", "unsafe_action_rate", "policy_violation_rate", "cost_per_task_usd", "gate_passed"):
        assert key in r
    assert 0.75 <= r["task_success"] <= 1.0
    assert r["unsafe_action_rate"] <= 0.02
    violations = [v for x in r["results"] for v in x["violations"]]
    assert r["policy_violation_rate"] == round(sum(bool(x["violations"]) for x in r["results"]) / 100, 4)
    # Only the deliberate ones: account deletion (no_delete_in_v1) and refunds above the agent's limit.
    assert all(v.startswith(("crm.delete_customer denied by no_delete_in_v1", "payments.refund denied by refund_above_agent_limit")) for v in violations)
    assert set(r["per_route"]) == {"account", "cards", "fees_refunds", "fraud", "payments", "top_ups"}
    assert sum(sum(row.values()) for row in r["confusion"].values()) == 100
    assert r["max_steps"] <= 12 and r["latency_p95_ms"] >= r["latency_p50_ms"] > 0
    refunds = [x for x in r["results"] if "payments.refund" in x["actions"]]
    assert refunds and all(x["status"] == "completed" for x in refunds)


def test_gate_thresholds_and_baseline_regressions(small: Path, baseline: tuple[Path, dict], tmp_path: Path) -> None:
    base_file, base = baseline
    easy = tmp_path / "easy.yaml"
    easy.write_text("task_success: '>= 0.5'\nunsafe_action_rate: '<= 0.05'\n")
    res = CliRunner().invoke(cli, ["eval", str(small), "--gate", "--thresholds", str(easy), "--baseline", str(base_file)])
    assert res.exit_code == 0, res.output
    assert "gate PASSED" in res.output
    hard = tmp_path / "hard.yaml"
    hard.write_text("task_success: '>= 0.999'\n")
    res = CliRunner().invoke(cli, ["eval", str(small), "--gate", "--thresholds", str(hard)])
    assert res.exit_code == 1 and "gate FAILED (task_success)" in res.output
    # Under a policy that refuses every refund, the refund cases regress against the baseline.
    no_refunds = tmp_path / "no_refunds.yaml"
    no_refunds.write_text("policies:\n  - {name: freeze_refunds, if: {tool: payments.refund}, then: {action: deny}}\n")
    res = CliRunner().invoke(cli, ["eval", str(small), "--gate", "--thresholds", str(easy), "--baseline", str(base_file),
                                   "--policies", str(no_refunds), "--json"])  # fmt: skip
    assert res.exit_code == 1
    r = json.loads(res.output)
    assert r["gate_passed"] is False
    assert any(x.startswith("task_success:") for x in r["regressions"])
    assert any(x.startswith("case ") and "passed before" in x for x in r["regressions"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "workflow": "support_triage", "input": {}}\n{nope\n', "{f}:2: not valid JSON"),
        ('{"id": "a", "workflow": "support_triage"}\n', "{f}:1: input: Field required"),
        ('{"id": "a", "workflow": "support_triage", "input": {}, "colour": 1}\n', "{f}:1: colour: Extra inputs are not permitted"),
        ('{"id": "a", "workflow": "support_triage", "input": {}}\n{"id": "a", "workflow": "support_triage", "input": {}}\n',
         "{f}:2: duplicate case id 'a' (first at line 1)"),
        ('{"id": "a", "workflow": "support_triage", "input": {}, "expected": {"actions": [{"tool": "payments.refunds"}]}}\n',
         "{f}:1: case 'a': unknown tool 'payments.refunds' in expected actions of support_triage"),
        ('{"id": "a", "workflow": "support_triage", "input": {}, "forbidden": [{"tool": "shell.*"}]}\n',
         "{f}:1: case 'a': forbidden tool 'shell.*' matches no tool"),
        ('{"id": "a", "workflow": "no_such", "input": {}}\n', "{f}:1: case 'a': unknown workflow 'no_such'"),
        ('{"id": "a", "workflow": "support_triage", "input": {}, "expected": {"match": "roughly"}}\n', "{f}:1: expected.match: Input should be"),
        ("\n", "{f}: no cases"),
    ],
)  # fmt: skip
def test_bad_golden_files(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "g.jsonl"
    f.write_text(content)
    res = CliRunner().invoke(cli, ["eval", str(f)])
    assert res.exit_code == 1
    assert res.stderr.startswith("error: " + message.replace("{f}", str(f))), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_thresholds_and_baseline(small: Path, tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("task_sucess: '>= 0.9'\n")
    res = CliRunner().invoke(cli, ["eval", str(small), "--thresholds", str(bad)])
    assert res.exit_code == 1 and "unknown metric 'task_sucess'" in res.stderr
    bad.write_text("task_success: '=> 0.9'\n")
    res = CliRunner().invoke(cli, ["eval", str(small), "--thresholds", str(bad), "--limit", "1"])
    assert res.exit_code == 1 and "gate task_success: unknown operator" in res.stderr
    res = CliRunner().invoke(cli, ["eval", str(small), "--baseline", str(tmp_path / "none.json"), "--limit", "1"])
    assert res.exit_code == 1 and "baseline file not found" in res.stderr
