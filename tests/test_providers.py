"""The real OpenAI and Anthropic SDKs against local servers speaking their wire formats."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from _flows import POLICY, TOOLS, Job, World
from _llm_servers import (
    anthropic_error,
    anthropic_server,
    anthropic_text,
    anthropic_tool_use,
    openai_content,
    openai_error,
    openai_server,
    openai_tool_call,
)
from click.testing import CliRunner

from tether import DecisionRequest, End, Runtime, Workflow
from tether.cli import cli
from tether.models.base import ModelError
from tether.models.config import ModelConfigError, model_from_env
from tether.models.providers import AnthropicModel, Fallback, OpenAIModel
from tether.models.router import Router
from tether.record.db import Database
from tether.record.tables import model_calls, prompts, run_events, runs
from tether.tools.secrets import SecretError

REFUND_SPEC = {"name": "payments.refund", "description": "Refund a transaction.", "parameters": {
    "type": "object", "properties": {"transaction_id": {"type": "string"}, "amount_usd": {"type": "number"}},
    "required": ["transaction_id", "amount_usd"], "additionalProperties": False}}  # fmt: skip
TOOL_REQ = DecisionRequest(point="action", options=["payments.refund"], tools=[REFUND_SPEC], observation={"text": "refund T1"})
LABEL_REQ = DecisionRequest(point="intent", options=["card_arrival", "lost_or_stolen_card"], observation={"text": "where is my card"})


def _openai(url: str, **kw: Any) -> OpenAIModel:
    return OpenAIModel("gpt-4.1-mini", api_key="sk-test-openai-123", base_url=url + "/v1", **{"max_retries": 1, **kw})


def _anthropic(url: str, **kw: Any) -> AnthropicModel:
    return AnthropicModel("claude-haiku-4-5", api_key="sk-ant-test-456", base_url=url, **{"max_retries": 1, **kw})


def test_openai_tool_call_is_parsed_validated_and_metered() -> None:
    with openai_server([openai_tool_call("payments__refund", '{"transaction_id": "T1", "amount_usd": 12.5}')]) as srv:
        choice = _openai(srv.url).choose(TOOL_REQ)
    assert (choice.option, choice.args, choice.ok) == ("payments.refund", {"transaction_id": "T1", "amount_usd": 12.5}, True)
    assert (choice.usage.input_tokens, choice.usage.output_tokens) == (120, 18)
    sent = srv.requests[0]
    assert sent["headers"]["authorization"] == "Bearer sk-test-openai-123"
    assert sent["json"]["tool_choice"] == "required"
    assert sent["json"]["tools"][0]["function"]["name"] == "payments__refund"  # dots are not allowed on the wire
    assert sent["json"]["tools"][0]["function"]["parameters"] == REFUND_SPEC["parameters"]


def test_openai_structured_output_for_labels() -> None:
    with openai_server([openai_content('{"option": "card_arrival", "confidence": 0.83}')]) as srv:
        choice = _openai(srv.url).choose(LABEL_REQ)
    assert (choice.option, choice.confidence) == ("card_arrival", 0.83)
    fmt = srv.requests[0]["json"]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["properties"]["option"]["enum"] == LABEL_REQ.options


def test_429_and_500_are_retried_by_the_sdk() -> None:
    script = [openai_error(429), openai_error(500, "boom"), openai_content('{"option": "card_arrival", "confidence": 0.9}')]
    with openai_server(script) as srv:
        choice = _openai(srv.url, max_retries=2).choose(LABEL_REQ)
    assert choice.option == "card_arrival" and len(srv.requests) == 3


def test_persistent_errors_fall_back_to_another_model() -> None:
    with openai_server([openai_error(500, "down")]) as o, anthropic_server(
        [anthropic_tool_use("choose", {"option": "lost_or_stolen_card", "confidence": 0.7})]
    ) as a:
        with pytest.raises(ModelError, match="HTTP 500 after retries"):
            _openai(o.url).choose(LABEL_REQ)
        o.requests.clear()
        choice = Fallback(_openai(o.url), _anthropic(a.url)).choose(LABEL_REQ)
    assert len(o.requests) == 2  # one try and one retry, then the next model
    assert (choice.option, choice.model) == ("lost_or_stolen_card", "claude-haiku-4-5")
    assert [c.model for c in choice.calls] == ["gpt-4.1-mini", "claude-haiku-4-5"] and "HTTP 500" in (choice.calls[0].error or "")
    h = a.requests[0]["headers"]  # this SDK version sends the key as a bearer token; older ones as x-api-key
    assert "sk-ant-test-456" in (h.get("x-api-key", ""), h.get("authorization", "").removeprefix("Bearer "))
    assert "anthropic-version" in h


def test_timeouts_end_in_a_model_error() -> None:
    with openai_server([("sleep", 1.5)]) as srv:
        with pytest.raises(ModelError, match="timed out"):
            _openai(srv.url, timeout_s=0.2, max_retries=0).choose(LABEL_REQ)
    with anthropic_server([("sleep", 1.5)]) as srv:
        with pytest.raises(ModelError, match="timed out"):
            _anthropic(srv.url, timeout_s=0.2, max_retries=0).choose(LABEL_REQ)


@pytest.mark.parametrize("bad", ['{"transaction_id": "T1", "amount_usd": ', '{"transaction_id": "T1"}',
                                 '{"transaction_id": "T1", "amount_usd": "lots"}',
                                 '{"transaction_id": "T1", "amount_usd": 1, "also": "delete everything"}'])  # fmt: skip
def test_malformed_tool_arguments_are_asked_again_then_refused(bad: str) -> None:
    good = openai_tool_call("payments__refund", '{"transaction_id": "T1", "amount_usd": 3}')
    with openai_server([openai_tool_call("payments__refund", bad), good]) as srv:
        choice = _openai(srv.url).choose(TOOL_REQ)
    assert choice.ok and choice.args == {"transaction_id": "T1", "amount_usd": 3}
    assert choice.usage.input_tokens == 240 and len(choice.calls) == 2 and choice.calls[0].error  # both attempts billed
    with openai_server([openai_tool_call("payments__refund", bad)]) as srv:
        choice = _openai(srv.url).choose(TOOL_REQ)
    assert not choice.ok and choice.option is None and "invalid model output after 2 attempt(s)" in (choice.error or "")


def test_a_tool_that_was_not_offered_is_refused() -> None:
    with openai_server([openai_tool_call("notes__delete_all", "{}")]) as srv:
        choice = _openai(srv.url, output_retries=0).choose(TOOL_REQ)
    assert not choice.ok and "not offered" in (choice.error or "")


def test_anthropic_tool_use_and_labels() -> None:
    with anthropic_server([anthropic_tool_use("payments__refund", {"transaction_id": "T9", "amount_usd": 5})]) as srv:
        choice = _anthropic(srv.url).choose(TOOL_REQ)
    assert (choice.option, choice.args, choice.usage.input_tokens) == ("payments.refund", {"transaction_id": "T9", "amount_usd": 5}, 140)
    sent = srv.requests[0]["json"]
    assert sent["tool_choice"] == {"type": "any"} and sent["tools"][0]["input_schema"] == REFUND_SPEC["parameters"]
    with anthropic_server([anthropic_error(529), anthropic_tool_use("choose", {"option": "card_arrival", "confidence": 0.66})]) as srv:
        choice = _anthropic(srv.url).choose(LABEL_REQ)
    assert (choice.option, choice.confidence, len(srv.requests)) == ("card_arrival", 0.66, 2)
    assert srv.requests[0]["json"]["tool_choice"] == {"type": "tool", "name": "choose"}
    with anthropic_server([anthropic_text("I think it is card_arrival")]) as srv:
        choice = _anthropic(srv.url).choose(LABEL_REQ)
    assert not choice.ok and "no tool_use block" in (choice.error or "")
    with anthropic_server([anthropic_tool_use("choose", {"option": "close_account", "confidence": 0.99})]) as srv:
        choice = _anthropic(srv.url).choose(LABEL_REQ)
    assert not choice.ok and "fails its schema" in (choice.error or "")


def test_a_refused_model_answer_never_reaches_a_tool(db: Database) -> None:
    """Malformed arguments every time: the step sees an invalid proposal, the tool never runs."""
    world = World()
    wf = Workflow("model_refunds", input=Job, tools=TOOLS, policy=POLICY, deps=lambda db: world)

    @wf.state(initial=True, goes_to=[])
    def refund(run: Any) -> Any:  # the model proposes the refund
        run.call("notes.add", {"text": "started"})
        r = run.act(run.choose("action", ["payments.refund"], {"text": "refund T1"}))
        return End("escalated" if not r.ok else "completed", r.status)

    with openai_server([openai_tool_call("payments__refund", '{"transaction_id": 7}')]) as srv:
        rt = Runtime(db, model=lambda: _openai(srv.url))
        r = rt.start(wf, {"amount_usd": 5})
    assert (r.status, r.outcome) == ("escalated", "invalid")
    assert [what for what, _ in world.effects] == ["note"]  # only the workflow's own note, no refund
    with db.read() as conn:
        row = conn.execute(sa.select(runs.c.cost_usd, runs.c.tokens).where(runs.c.id == r.run_id)).one()
    assert row.tokens == 2 * (120 + 18) and row.cost_usd == pytest.approx(2 * (120 * 0.40 + 18 * 1.60) / 1e6)


def test_configuration_picks_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TETHER_MODEL", "TETHER_ROUTER", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TETHER_SECRET_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert model_from_env(offline=lambda: "the offline model") == "the offline model"
    monkeypatch.setenv("TETHER_MODEL", "openai:gpt-4.1-mini")
    with pytest.raises(SecretError, match=r"OPENAI_API_KEY"):
        model_from_env(offline=lambda: None)
    monkeypatch.setenv("TETHER_SECRET_OPENAI_API_KEY", "sk-from-the-secret-store")
    m = model_from_env(offline=lambda: None)
    assert isinstance(m, OpenAIModel) and m.name == "openai:gpt-4.1-mini"
    monkeypatch.setenv("TETHER_MODEL", "compatible:llama3.1")
    with pytest.raises(ModelConfigError, match="TETHER_MODEL_BASE_URL"):
        model_from_env(offline=lambda: None)
    monkeypatch.setenv("TETHER_MODEL", "gemini:pro")
    with pytest.raises(ModelConfigError, match="unknown provider 'gemini'"):
        model_from_env(offline=lambda: None)
    monkeypatch.setenv("TETHER_MODEL", "openai:gpt-4.1-mini,anthropic:claude-haiku-4-5")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    assert isinstance(model_from_env(offline=lambda: None), Fallback)
    monkeypatch.setenv("TETHER_ROUTER", "offline,openai:gpt-4.1-mini,anthropic:claude-haiku-4-5")
    monkeypatch.setenv("TETHER_ROUTER_THRESHOLD", "0.7")
    r = model_from_env(offline=lambda: Fixed())
    assert isinstance(r, Router) and [m.name for m in r.tiers] == ["fixed", "openai:gpt-4.1-mini", "anthropic:claude-haiku-4-5"]
    assert r.thresholds == [0.7, 0.7, 0.7]
    monkeypatch.setenv("TETHER_ROUTER_THRESHOLD", "high")
    with pytest.raises(ModelConfigError, match=r"\$TETHER_ROUTER_THRESHOLD must be a number"):
        model_from_env(offline=lambda: Fixed())


class Fixed:
    name = "fixed"


def test_triage_on_an_openai_compatible_server_through_the_cli(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    """TETHER_MODEL + base URL: the reference workflow classifies with a local server; cost lands in the run."""
    answer = openai_content(json.dumps({"option": "card_arrival", "confidence": 0.91}), prompt=1500, completion=14)
    with openai_server([answer]) as srv:
        monkeypatch.setenv("TETHER_MODEL", "compatible:gpt-4.1-mini")
        monkeypatch.setenv("TETHER_MODEL_BASE_URL", srv.url + "/v1")
        monkeypatch.setenv("TETHER_SECRET_TETHER_MODEL_API_KEY", "sk-local-secret-789")
        r = CliRunner().invoke(cli, ["run", "support_triage", "--db", db_url, "--json",
                                     "--input", '{"customer_id": "C0001", "text": "My new card has still not arrived"}'])  # fmt: skip
    assert r.exit_code == 0, r.output + r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "completed", out
    assert srv.requests[0]["headers"]["authorization"] == "Bearer sk-local-secret-789"
    assert len(srv.requests[0]["json"]["response_format"]["json_schema"]["schema"]["properties"]["option"]["enum"]) == 77
    db = Database(db_url)
    with db.read() as conn:
        call = conn.execute(sa.select(model_calls)).one()
        assert (call.model, call.input_tokens, call.output_tokens, call.price_version) == ("compatible:gpt-4.1-mini", 1500, 14, "2026-11-01")
        assert call.cost_usd == pytest.approx((1500 * 0.40 + 14 * 1.60) / 1e6)
        for table in (run_events, prompts):  # the key never lands in the database
            assert "sk-local-secret-789" not in json.dumps([dict(r._mapping) for r in conn.execute(sa.select(table))], default=str)
    db.dispose()


def test_options_that_are_not_tools_are_offered_as_tools_too() -> None:
    req = DecisionRequest(point="next_action", options=["payments.refund", "done"], tools=[REFUND_SPEC], observation={"history": []})
    with openai_server([openai_tool_call("done", "{}")]) as srv:
        choice = _openai(srv.url).choose(req)
    assert (choice.option, choice.args) == ("done", {})
    assert [t["function"]["name"] for t in srv.requests[0]["json"]["tools"]] == ["payments__refund", "done"]


def test_a_bad_model_configuration_fails_before_the_run_exists(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    for var in ("OPENAI_API_KEY", "TETHER_SECRET_OPENAI_API_KEY", "TETHER_ROUTER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TETHER_MODEL", "openai:gpt-4.1-mini")
    r = CliRunner().invoke(cli, ["run", "support_triage", "--db", db_url, "--input", '{"customer_id": "C0001", "text": "where is my card"}'])
    assert r.exit_code == 1 and r.stderr.startswith("error: secret 'OPENAI_API_KEY' is not set")
    db = Database(db_url)
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 0
    db.dispose()


def test_anthropic_persistent_errors_end_in_a_model_error() -> None:
    with anthropic_server([anthropic_error(500, "api_error")]) as srv:
        with pytest.raises(ModelError, match="HTTP 500 after retries"):
            _anthropic(srv.url).choose(LABEL_REQ)
    assert len(srv.requests) == 2  # one try, one retry
    with anthropic_server([anthropic_error(429, "rate_limit_error")]) as srv:
        with pytest.raises(ModelError, match="HTTP 429 after retries"):
            _anthropic(srv.url, max_retries=2).choose(LABEL_REQ)
    assert len(srv.requests) == 3
