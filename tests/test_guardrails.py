"""Risk, tiered approvals, credentials, secrets, limits, Cedar, policy tests, audit, fuzzing."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from _flows import TOOLS, Job, World
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether import (
    ApprovalError,
    ApprovalInbox,
    Args,
    Database,
    End,
    Ledger,
    PolicyError,
    PolicySet,
    RunContext,
    Runtime,
    ToolCall,
    ToolContext,
    ToolProxy,
    ToolRegistry,
    Workflow,
    load_policy,
    tool,
)  # fmt: skip
from tether.cli import cli
from tether.guardrails.risk import RiskFeatures, calibrate, score
from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.record.tables import ledger_entries, prompts, run_events, spans
from tether.tools.credentials import MAX_TTL_S, CredentialError, Credentials
from tether.tools.secrets import FileSecrets

# -- risk ---------------------------------------------------------------------------------


def test_risk_grows_with_each_feature() -> None:
    base = score(RiskFeatures(tier="low"))
    assert 0 < base < score(RiskFeatures(tier="high")) < score(RiskFeatures(tier="critical")) < 1
    assert score(RiskFeatures(tier="high", amount=50)) < score(RiskFeatures(tier="high", amount=5000))
    assert score(RiskFeatures(tier="high", confidence=0.95)) < score(RiskFeatures(tier="high", confidence=0.4))
    assert score(RiskFeatures(customer_tier="metal")) > score(RiskFeatures(customer_tier="standard"))
    assert score(RiskFeatures(novel=True)) > score(RiskFeatures())
    threshold, sent = calibrate([i / 100 for i in range(100)], 0.07)
    assert threshold == 0.93 and sent == 0.07
    with pytest.raises(ValueError):
        calibrate([], 0.1)


class Pay(Args):
    transaction_id: str
    amount_usd: float


def _pay_workflow(policy: str, world: World, name: str = "pay") -> Workflow[Job, World]:
    @tool("payments.refund", target="transaction_id", risk_tier="high", risk_amount="amount_usd")
    def refund(ctx: ToolContext[World], args: Pay) -> dict[str, Any]:
        ctx.check_credential(args.transaction_id)
        return ctx.deps.apply(ctx.idempotency_key, "refund", args.amount_usd)

    wf = Workflow(name, input=Job, tools=[refund], policy=PolicySet.from_text(policy, f"{name}.yaml"), deps=lambda d: world)

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        r = run.call("payments.refund", {"transaction_id": "X000001", "amount_usd": run.input.amount_usd},
                     risk={"customer_tier": "metal", "confidence": 0.6})  # fmt: skip
        return End("completed" if r.ok else "escalated", f"{r.status}:{r.decision.risk if r.decision else None}")

    return wf


def test_policies_act_on_risk_and_calibration_reports_the_share(db: Database, db_url: str) -> None:
    world = World()
    wf = _pay_workflow('policies:\n  - {name: risky, if: {tool: "payments.*", risk: "> 0.85"}, then: {action: deny}}\n', world)
    small = Runtime(db).start(wf, {"amount_usd": 5})
    big = Runtime(db).start(wf, {"amount_usd": 9000})
    risk_small = float((small.outcome or "").split(":")[1])
    risk_big = float((big.outcome or "").split(":")[1])
    assert small.status == "completed" and risk_small <= 0.85 < risk_big and big.outcome.startswith("denied")  # type: ignore[union-attr]
    res = CliRunner().invoke(cli, ["policy", "calibrate", "--db", db_url, "--share", "0.5", "--json"])
    out = json.loads(res.output)
    assert out["calls"] == 2 and out["threshold"] == risk_big and out["share_sent"] == 0.5


# -- tiered approvals -----------------------------------------------------------------------

TIERED = """
policies:
  - name: two_people
    if: {tool: "payments.refund", amount_usd: "> 100"}
    then: {action: require_human_approval, approvers: 2, role: payments_approver, expires_in: 2h}
  - name: fast_or_lead
    if: {tool: "payments.refund", amount_usd: "> 5000"}
    then: {action: require_human_approval, expires_in: 30m, on_expiry: escalate, escalate_to: payments_lead}
"""


def test_two_distinct_approvers_with_the_role(db: Database, db_url: str) -> None:
    from tether.guardrails.approvals import add_approver

    world = World()
    wf = _pay_workflow(TIERED, world)
    add_approver(db, "bob", "payments_approver", "payments.*")
    add_approver(db, "carol", "payments_approver", "payments.*")
    add_approver(db, "dave", "support_approver", "helpdesk.*")
    r = Runtime(db).start(wf, {"amount_usd": 500}, started_by="alice")
    inbox = ApprovalInbox(db)
    req = inbox.get(r.approval_id or "")
    assert (req.required, req.role, req.status) == (2, "payments_approver", "pending") and req.expires_at and req.risk
    with pytest.raises(ApprovalError, match="dave does not hold role 'payments_approver'"):
        inbox.decide(req.id, approve=True, by="dave")
    assert inbox.decide(req.id, approve=True, by="bob").status == "pending"
    with pytest.raises(ApprovalError, match="already voted"):
        inbox.decide(req.id, approve=True, by="BOB")  # the same person cannot fill two slots
    assert inbox.decide(req.id, approve=True, by="carol").status == "approved"
    assert Runtime(db).resume(r.run_id, wf).status == "completed" and len(world.effects) == 1
    kinds = [e.kind for e in Ledger(db).entries(r.run_id)]
    assert kinds.count("approval_vote") == 2 and "approval_decided" in kinds


def test_one_deny_vote_decides(db: Database) -> None:
    from tether.guardrails.approvals import add_approver

    wf = _pay_workflow(TIERED, World())
    add_approver(db, "bob", "payments_approver", "payments.*")
    r = Runtime(db).start(wf, {"amount_usd": 500}, started_by="alice")
    assert ApprovalInbox(db).decide(r.approval_id or "", approve=False, by="bob", reason="no receipt").status == "denied"
    assert Runtime(db).resume(r.run_id, wf).outcome.startswith("rejected")  # type: ignore[union-attr]


def test_expiry_denies_or_escalates(db: Database, db_url: str) -> None:
    from tether.guardrails.approvals import add_approver

    world = World()
    wf = _pay_workflow(TIERED, world)
    r = Runtime(db).start(wf, {"amount_usd": 500}, started_by="alice")
    inbox = ApprovalInbox(db)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    [expired] = inbox.expire(now=later)
    assert expired.status == "expired"
    with pytest.raises(ApprovalError, match="already expired"):
        inbox.decide(r.approval_id or "", approve=True, by="bob")
    assert Runtime(db).resume(r.run_id, wf).outcome.startswith("rejected")  # type: ignore[union-attr]
    assert world.effects == []
    # Above $5,000 the soonest expiry (30 minutes) escalates to the lead instead.
    add_approver(db, "erin", "payments_lead", "payments.*")
    r2 = Runtime(db).start(wf, {"amount_usd": 6000}, started_by="alice")
    req = inbox.get(r2.approval_id or "")
    assert req.required == 2 and req.role == "payments_approver"
    [esc] = inbox.expire(now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=31))
    assert (esc.status, esc.role) == ("pending", "payments_lead")
    kinds = [e.kind for e in Ledger(db).entries(r2.run_id)]
    assert "approval_escalated" in kinds and "approval_expired" in [e.kind for e in Ledger(db).entries(r.run_id)]


def test_tier_keys_are_linted() -> None:
    for bad, msg in [
        ("then: {action: deny, approvers: 2}", "only go with require_human_approval"),
        ("then: {action: require_human_approval, approvers: 9}", "approvers must be a whole number from 1 to 5"),
        ("then: {action: require_human_approval, expires_in: soon}", "is not a duration"),
        ("then: {action: require_human_approval, expires_in: 1h, on_expiry: escalate}", "needs escalate_to"),
    ]:
        with pytest.raises(PolicyError, match=msg):
            PolicySet.from_text(f"policies:\n  - name: r\n    if: {{tool: a.b}}\n    {bad}\n", "t.yaml")


# -- credentials ----------------------------------------------------------------------------


def test_credentials_refuse_every_bad_token(db: Database) -> None:
    c = Credentials(db)
    good = dict(tool="payments.refund", target="X1", run_id="r", step=1, call_id="1.1")
    token = c.mint(**good)
    assert c.verify(token, tool="payments.refund", target="X1")["target"] == "X1"
    with pytest.raises(CredentialError, match="already used"):
        c.verify(token, tool="payments.refund", target="X1")
    with pytest.raises(CredentialError, match="expired"):
        c.verify(c.mint(**good, now=time.time() - 1000), tool="payments.refund", target="X1")
    with pytest.raises(CredentialError, match="is for cards.freeze"):
        c.verify(c.mint(**{**good, "tool": "cards.freeze"}), tool="payments.refund", target="X1")
    with pytest.raises(CredentialError, match="is for object 'X2'"):
        c.verify(c.mint(**{**good, "target": "X2"}), tool="payments.refund", target="X1")
    t = c.mint(**good)
    head, body, sig = t.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["target"] = "X9"
    forged = ".".join([head, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), sig])
    with pytest.raises(CredentialError, match="refused"):
        c.verify(forged, tool="payments.refund", target="X9")
    other = Credentials(db, key=__import__("cryptography.hazmat.primitives.asymmetric.ed25519", fromlist=["x"]).Ed25519PrivateKey.generate())
    with pytest.raises(CredentialError, match="refused"):
        c.verify(other.mint(**good), tool="payments.refund", target="X1")
    with pytest.raises(ValueError):
        Credentials(db, ttl_s=MAX_TTL_S + 1)
    with pytest.raises(CredentialError, match="no credential"):
        c.verify(None, tool="payments.refund", target="X1")


def test_tools_check_the_credential_of_their_call(db: Database) -> None:
    world = World()
    r = Runtime(db).start(_pay_workflow("policies: []", world), {"amount_usd": 5})
    assert r.status == "completed" and len(world.effects) == 1
    proxy = ToolProxy(ToolRegistry(_pay_workflow("policies: []", world, "p2").tools))  # no credentials minted
    from tether.types import RunInfo

    class Rec:
        def proposed(self, *a: Any) -> None: ...
        def decided(self, *a: Any) -> None: ...
        def approval_requested(self, *a: Any) -> str: return ""
        def finished(self, *a: Any) -> None: ...

    res = CallPipeline(proxy).propose(ToolCall(call_id="1.1", tool="payments.refund", args={"transaction_id": "X000001", "amount_usd": 5},
                              proposer="t"), CallScope(RunInfo("r", 1, "t"), PolicySet.from_text("policies: []"), Rec(), world))  # fmt: skip
    assert res.status == "error" and "no credential was issued" in (res.error or "") and len(world.effects) == 1


# -- secrets --------------------------------------------------------------------------------

CANARY = "canary-5ecret-Zq81xV"


class Fetch(Args):
    path: str


def test_a_canary_secret_is_never_written(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "helpdesk_token").write_text(CANARY)
    (folder / "helpdesk_token").chmod(0o600)

    @tool("upstream.fetch")
    def fetch(ctx: ToolContext[None], args: Fetch) -> dict[str, Any]:
        token = ctx.secrets.get("helpdesk_token")
        if args.path == "/boom":
            raise RuntimeError(f"upstream refused Authorization: Bearer {token}")
        return {"echo": f"used {token} for {args.path}"}  # a careless tool that leaks it back

    wf = Workflow("leaky", input=Job, tools=[fetch], policy=PolicySet.from_text("policies: []"))

    @wf.state(initial=True)
    def go(run: RunContext[Job, None]) -> Any:
        run.call("upstream.fetch", {"path": "/a"})
        bad = run.call("upstream.fetch", {"path": "/boom"})
        return End("failed", "leak test", bad.error)

    rt = Runtime(db, secrets=FileSecrets(folder))
    r = rt.start(wf, {})
    assert r.error and CANARY not in r.error and "<secret>" in r.error
    with db.read() as conn:
        everything = json.dumps([
            [dict(x._mapping) for x in conn.execute(sa.select(t))] for t in (ledger_entries, run_events, spans, prompts)
        ], default=str)  # fmt: skip
        everything += json.dumps([dict(x._mapping) for x in conn.execute(sa.text("select * from runs"))], default=str)
    assert CANARY not in everything and everything.count("<secret>") >= 2
    out = CliRunner().invoke(cli, ["runs", "show", r.run_id, "--db", db.url.render_as_string(False)])
    assert CANARY not in out.output + capsys.readouterr().out
    (folder / "helpdesk_token").chmod(0o644)
    with pytest.raises(Exception, match="readable by others"):
        FileSecrets(folder).get("helpdesk_token")


# -- limits ---------------------------------------------------------------------------------

LIMITS = """
policies:
  - {name: no_bulk_export, if: {tool: "crm.export", rows: "> 1000"}, then: {action: deny}}
limits:
  - {name: notes_burst, tool: "notes.*", per: run, rate: 3/minute}
  - {name: export_rows, tool: "crm.export", max_result_rows: 1000}
"""


class Export(Args):
    rows: int
    actual: int


def test_rate_and_volume_limits(db: Database) -> None:
    world = World()

    @tool("crm.export", side_effect=False)
    def export(ctx: ToolContext[World], args: Export) -> dict[str, Any]:
        return {"rows": [{"id": i} for i in range(args.actual)]}

    wf = Workflow("limits", input=Job, tools=[*TOOLS, export], policy=PolicySet.from_text(LIMITS, "l.yaml"),
                  deps=lambda d: world, max_calls_per_step=8)  # fmt: skip

    @wf.state(initial=True)
    def go(run: RunContext[Job, World]) -> Any:
        notes = [run.call("notes.add", {"text": str(i)}).status for i in range(5)]
        asked_too_much = run.call("crm.export", {"rows": 5000, "actual": 5000})
        got_too_much = run.call("crm.export", {"rows": 10, "actual": 1500})
        fine = run.call("crm.export", {"rows": 10, "actual": 10})
        return End("completed", json.dumps([notes, asked_too_much.status, got_too_much.status, got_too_much.error,
                                            got_too_much.output, len(fine.output["rows"])]))  # fmt: skip

    r = Runtime(db).start(wf, {})
    notes, asked, got, why, output, fine = json.loads(r.outcome or "")
    assert notes == ["ok", "ok", "ok", "denied", "denied"] and len(world.effects) == 3
    assert asked == "denied" and got == "denied" and output is None and fine == 10
    assert why == "limit export_rows: result has 1500 rows, more than 1000"
    with pytest.raises(PolicyError, match="rate 'lots' is not like 10/minute"):
        PolicySet.from_text("policies: []\nlimits:\n  - {name: x, tool: a.b, rate: lots}\n")


def _draw_tenant_tokens(db_url: str, n: int) -> list[str | None]:
    from tether.guardrails.limits import SharedRateLimiter

    limits = PolicySet.from_text("policies: []\nlimits:\n  - {name: t, tool: 'pay.*', per: tenant, rate: 1/hour, burst: 6}\n").limits
    limiter = SharedRateLimiter(Database(db_url))
    return [limiter.take(limits, "pay.refund", "acme", f"run-{i}") for i in range(n)]


def test_rate_limits_are_shared_by_processes(db: Database) -> None:
    """Two worker processes on one store draw from the same tenant bucket: 6 calls in all, not 6 each."""
    import concurrent.futures as cf
    import multiprocessing

    url = db.url.render_as_string(hide_password=False)
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = [r for f in [pool.submit(_draw_tenant_tokens, url, 5) for _ in range(2)] for r in f.result()]
    assert got.count(None) == 6 and got.count("t") == 4
    assert _draw_tenant_tokens(url, 1) == ["t"]  # and this process finds the bucket empty too


# -- Cedar and mixed sets -------------------------------------------------------------------

CEDAR = """
@id("allow_everything")
permit(principal, action, resource);

@id("refund_requires_approval") @action("require_human_approval") @reason("refunds over $100 need a person")
forbid(principal, action == Action::"call", resource == Tool::"payments.refund")
  when { context.args.amount_usd.greaterThan(decimal("100.0")) };

@id("no_delete_in_v1")
forbid(principal, action, resource) when { resource.name like "*.*delete*" };
"""


def test_cedar_explains_like_yaml(tmp_path: Path) -> None:
    f = tmp_path / "p.cedar"
    f.write_text(CEDAR)
    for args, tool_name, action, rules in [
        ({"amount_usd": 250.5}, "payments.refund", "require_human_approval", ["refund_requires_approval"]),
        ({"amount_usd": 99}, "payments.refund", "allow", ["allow_everything"]),
        ({}, "crm.bulk_delete_contacts", "deny", ["no_delete_in_v1"]),
        ({"amount_usd": "lots"}, "payments.refund", "deny", []),  # an evaluation error fails closed
    ]:
        res = CliRunner().invoke(cli, ["policy", "explain", str(f), "--tool", tool_name, "--args", json.dumps(args), "--json"])
        out = json.loads(res.output)
        assert (out["decision"], out["rules"]) == (action, rules), out
        assert len(out["policy_hash"]) == 64
    bad = tmp_path / "bad.cedar"
    bad.write_text("permit(principal, action resource);")
    res = CliRunner().invoke(cli, ["policy", "check", str(bad)])
    assert res.exit_code == 1 and "Cedar policy does not parse" in res.stderr


def test_a_set_may_mix_yaml_and_cedar_and_the_strictest_wins(tmp_path: Path, db: Database) -> None:
    (tmp_path / "extra.cedar").write_text(CEDAR)
    (tmp_path / "main.yaml").write_text(
        "include: [extra.cedar]\npolicies:\n  - {name: big, if: {tool: payments.refund, amount_usd: '> 1000'}, then: {action: deny}}\n")
    p = load_policy(tmp_path / "main.yaml")
    assert p.decide("payments.refund", {"amount_usd": 500}).action == "require_human_approval"
    d = p.decide("payments.refund", {"amount_usd": 5000})
    assert d.action == "deny" and d.rules == ["big"] and "refund_requires_approval" in d.matched
    assert p.decide("payments.refund", {"amount_usd": 5}).action == "allow"
    # A paused run resumes under the same set, rebuilt from what was stored.
    world = World()
    wf = _pay_workflow("policies: []", world, "mixed")
    r = Runtime(db, policy=p).start(wf, {"amount_usd": 500}, started_by="alice")
    assert r.status == "waiting_approval"
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="bob")
    assert Runtime(db).resume(r.run_id, wf).status == "completed"


def test_policy_test_command(tmp_path: Path) -> None:
    f = tmp_path / "p.cedar"
    f.write_text(CEDAR)
    cases = tmp_path / "cases.yaml"
    cases.write_text("""
- {name: small refund, tool: payments.refund, args: {amount_usd: 20}, principal: "model:x", expect: allow}
- {name: big refund, tool: payments.refund, args: {amount_usd: 200}, expect: require_human_approval, rules: [refund_requires_approval]}
- {name: delete, tool: tickets.delete, expect: deny}
""")
    res = CliRunner().invoke(cli, ["policy", "test", str(f), str(cases)])
    assert res.exit_code == 0 and "3 passed, 0 failed" in res.output
    cases.write_text("- {name: wrong, tool: payments.refund, args: {amount_usd: 200}, expect: allow}\n"
                     "- {name: right, tool: tickets.delete, expect: deny}\n")  # fmt: skip
    res = CliRunner().invoke(cli, ["policy", "test", str(f), str(cases)])
    assert res.exit_code == 1 and "FAIL wrong: expected allow, got require_human_approval" in res.stderr
    assert "1 passed, 1 failed" in res.output


# -- audit ----------------------------------------------------------------------------------


def test_a_new_policy_version_is_ledgered_with_its_diff(db: Database) -> None:
    world = World()
    v1 = "policies:\n  - {name: cap, if: {tool: payments.refund, amount_usd: '> 100'}, then: {action: deny}}\n"
    v2 = v1.replace("> 100", "> 500")
    Runtime(db).start(_pay_workflow(v1, world, "pol"), {"amount_usd": 5})
    Runtime(db).start(_pay_workflow(v1, world, "pol"), {"amount_usd": 6})
    Runtime(db).start(_pay_workflow(v2, world, "pol"), {"amount_usd": 7})
    loaded = [e.body for e in Ledger(db).entries() if e.kind == "policy_loaded"]
    assert len(loaded) == 2 and loaded[1]["previous_hash"] == loaded[0]["policy_hash"]
    assert "-  - {name: cap, if: {tool: payments.refund, amount_usd: '> 100'}" in loaded[1]["diff"]
    assert "+  - {name: cap, if: {tool: payments.refund, amount_usd: '> 500'}" in loaded[1]["diff"]


# -- fuzzing --------------------------------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                     max_leaves=8)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tool_name=st.sampled_from(["payments.refund", "notes.add", "clock.sleep", "nope.tool"]),
       args=st.dictionaries(st.sampled_from(["transaction_id", "amount_usd", "text", "seconds", "extra"]), _json, max_size=4))  # fmt: skip
def test_fuzzed_arguments_are_validated_or_refused_never_crash(tool_name: str, args: dict[str, Any]) -> None:
    from tether.errors import InvalidArguments, UnknownTool

    proxy = ToolProxy(ToolRegistry(TOOLS))
    try:
        t, parsed = proxy.validate(ToolCall(call_id="1", tool=tool_name, args=args, proposer="fuzz"))
    except (InvalidArguments, UnknownTool):
        return
    # Whatever passed is exactly what the schema allows: re-validating the dump gives the same.
    assert set(parsed.model_dump()) <= set(t.schema["properties"])
    proxy.validate(ToolCall(call_id="2", tool=tool_name, args=parsed.model_dump(mode="json"), proposer="fuzz"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.builds(lambda r, c: f"policies:\n  - name: {r}\n    if: {{tool: '*', x: '{c}'}}\n    then: {{action: deny}}\n",
                                          st.text(max_size=10), st.text(max_size=12)))  # fmt: skip
def test_fuzzed_policy_files_load_or_fail_with_a_policy_error(text: str) -> None:
    try:
        p = PolicySet.from_text(text, "fuzz.yaml")
    except PolicyError as e:
        assert str(e).startswith("fuzz.yaml") and "\n" not in str(e)
        return
    d = p.decide("a.b", {"x": 1})  # a loaded policy always decides, never raises
    assert d.action in ("allow", "deny", "require_human_approval")
