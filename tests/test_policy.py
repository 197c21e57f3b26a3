from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether import PolicyError, PolicySet
from tether.cli import cli

SEED = """\
# Deny risky actions unless explicitly approved
policies:
  - name: refund_requires_approval
    if:
      tool: "payments.refund"
      amount_usd: "> 100"
    then:
      action: "require_human_approval"
  - name: no_bulk_export
    if:
      tool: "crm.export"
      rows: "> 1000"
    then:
      action: "deny"
  - name: no_delete_in_v1
    if:
      tool: "*.*delete*"
    then:
      action: "deny"
"""


@pytest.fixture
def seed() -> PolicySet:
    return PolicySet.from_text(SEED, "seed.yaml")


@pytest.mark.parametrize(
    ("tool", "args", "action", "rules"),
    [
        ("payments.refund", {"amount_usd": 100.01}, "require_human_approval", ["refund_requires_approval"]),
        ("payments.refund", {"amount_usd": 100}, "allow", []),
        ("payments.refund", {"amount_usd": 5}, "allow", []),
        ("payments.refund", {}, "allow", []),  # the tool has no amount argument: the rule does not apply
        ("payments.refund", {"amount_usd": None}, "require_human_approval", ["refund_requires_approval"]),  # empty: conservative
        ("crm.export", {"rows": 1001}, "deny", ["no_bulk_export"]),
        ("crm.export", {"rows": 1000}, "allow", []),
        ("tickets.delete", {}, "deny", ["no_delete_in_v1"]),
        ("crm.bulk_delete_contacts", {"rows": 1}, "deny", ["no_delete_in_v1"]),
        ("tickets.deleted_view", {}, "deny", ["no_delete_in_v1"]),
        ("delete.tickets", {}, "allow", []),  # the glob needs 'delete' after the dot
        ("helpdesk.tag", {}, "allow", []),
    ],
)
def test_seed_policy_behaves_as_written(seed: PolicySet, tool: str, args: dict, action: str, rules: list) -> None:
    d = seed.decide(tool, args)
    assert (d.action, d.rules) == (action, rules)
    assert d.policy_hash == seed.hash and len(seed.hash) == 64


def test_strictest_wins_and_all_matches_are_named() -> None:
    p = PolicySet.from_text(
        """
policies:
  - {name: a_allow, if: {tool: "pay.*"}, then: {action: allow}}
  - {name: b_approve, if: {tool: "pay.refund", amount_usd: ">= 10"}, then: {action: require_human_approval}}
  - {name: c_deny, if: {tool: "*", region: "== 'EU'"}, then: {action: deny, reason: "no EU refunds"}}
  - {name: d_approve, if: {tool: "pay.refund", currency: "in [GBP, EUR]"}, then: {action: require_human_approval}}
"""
    )
    d = p.decide("pay.refund", {"amount_usd": 10, "currency": "GBP"})
    assert d.action == "require_human_approval"
    assert d.rules == ["b_approve", "d_approve"] and d.matched == ["a_allow", "b_approve", "d_approve"]
    d = p.decide("pay.refund", {"amount_usd": 10, "region": "EU"})
    assert (d.action, d.rules, d.reason) == ("deny", ["c_deny"], "no EU refunds")


@pytest.mark.parametrize(
    ("cond", "value", "expected"),
    [
        ("> 5", 6, True), ("> 5", 5, False), (">= 5", 5, True), ("< 5", 4.9, True), ("<= 5", 5.1, False),
        ("== 'EU'", "EU", True), ("== 'EU'", "US", False), ("!= 'EU'", "US", True), ("== 3", 3.0, True),
        ("in [a, b]", "b", True), ("in [a, b]", "c", False), ("not in [1, 2]", 3, True), ("== true", 1, False),
        ("== '100'", 100, False), ("EU", "EU", True),
    ],
)  # fmt: skip
def test_comparisons(cond: str, value: object, expected: bool) -> None:
    p = PolicySet.from_text(f'policies:\n  - {{name: r, if: {{tool: "t.x", k: "{cond}"}}, then: {{action: deny}}}}\n')
    assert (p.decide("t.x", {"k": value}).action == "deny") is expected


def test_default_and_fail_closed() -> None:
    p = PolicySet.from_text(
        'default: require_human_approval\npolicies:\n  - {name: big, if: {tool: "t.x", n: "> 5"}, then: {action: allow}}\n'
    )
    assert p.decide("t.y", {}).action == "require_human_approval"
    d = p.decide("t.x", {"n": "six"})  # a string where a number was expected: deny, never allow
    assert d.action == "deny" and d.rules == ["big"] and "failing closed" in d.reason


def test_nested_argument_keys() -> None:
    p = PolicySet.from_text('policies:\n  - {name: vip, if: {tool: "*", customer.tier: "== metal"}, then: {action: deny}}\n')
    assert p.decide("a.b", {"customer": {"tier": "metal"}}).action == "deny"
    assert p.decide("a.b", {"customer": "metal"}).action == "allow"
    d = p.decide("a.b", {"customer": None})
    assert d.action == "deny" and "'customer.tier' is empty" in d.reason


def test_empty_arguments_are_conservative_for_restrictions_only() -> None:
    p = PolicySet.from_text(
        """
default: require_human_approval
policies:
  - {name: small_ok, if: {tool: "pay.refund", amount_usd: "<= 50"}, then: {action: allow}}
  - {name: null_means_all, if: {tool: "crm.export", rows: "== null"}, then: {action: deny}}
"""
    )
    assert p.decide("pay.refund", {"amount_usd": 20}).action == "allow"
    assert p.decide("pay.refund", {"amount_usd": None}).action == "require_human_approval"  # allow rules need a value
    assert p.decide("crm.export", {"rows": None}).action == "deny"


@pytest.mark.parametrize(
    ("cond", "value", "expected"),
    [("== NO", "NO", True), ("== NO", False, False), ("== on", "on", True), ("== 12:30", "12:30", True),
     ("== 12:30", 750, False), ("== internal", "internal", True), ("in [NO, SE]", "NO", True), ("> 1e3", 1001, True)],
)  # fmt: skip
def test_values_follow_yaml_12_core_rules(cond: str, value: object, expected: bool) -> None:
    p = PolicySet.from_text(f'policies:\n  - {{name: r, if: {{tool: "t.x", k: "{cond}"}}, then: {{action: deny}}}}\n')
    assert (p.decide("t.x", {"k": value}).action == "deny") is expected
    bare = PolicySet.from_text("policies:\n  - name: r\n    if: {tool: t.x, country: NO}\n    then: {action: deny}\n")
    assert bare.decide("t.x", {"country": "NO"}).action == "deny"


def test_nan_is_refused() -> None:
    with pytest.raises(PolicyError, match="needs a number"):
        PolicySet.from_text('policies:\n  - {name: r, if: {tool: "t.x", k: "> .nan"}, then: {action: deny}}\n')
    p = PolicySet.from_text('policies:\n  - {name: r, if: {tool: "t.x", k: "> 5"}, then: {action: allow}}\ndefault: deny\n')
    assert p.decide("t.x", {"k": float("nan")}).action == "deny"
    assert p.decide("t.x", {"k": float("inf")}).action == "deny"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policies:\n  - name: a\n    if: {tool: x.y\n", "seed.yaml:"),  # malformed YAML names the file and line
        ("policies:\n  - name: a\n    if: {tool: x.y}\n    then: {action: maybe}\n", "seed.yaml:4: rule 'a': unknown action 'maybe'"),
        ("policies:\n  - name: a\n    if:\n      tool: x.y\n      n: '=> 5'\n    then: {action: deny}\n", "seed.yaml:5: rule 'a': bad comparison for 'n'"),
        ("policies:\n  - name: a\n    if:\n      tool: x.y\n      n: '> ten'\n    then: {action: deny}\n", "needs a number"),
        ("policies:\n  - {name: a, if: {tool: x.y}, then: {action: deny}}\n  - {name: a, if: {tool: x.z}, then: {action: deny}}\n",
         "seed.yaml:3: rule 'a': duplicate rule name (first defined at line 2)"),
        ("policies:\n  - {name: a, iff: {tool: x.y}, then: {action: deny}}\n", "unknown key 'iff'"),
        ("policies:\n  - {name: a, then: {action: deny}}\n", "'if' must be a mapping"),
        ("default: permit\npolicies: []\n", "seed.yaml:1: unknown action 'permit'"),
        ("", "empty policy file"),
        ("policies:\n  - {name: a, if: {tool: x.y}, then: {action: deny}}\n  - {name: a, if: {tool: x.y}, then: {action: deny}, name: b}\n", "duplicate key 'name'"),
    ],
)  # fmt: skip
def test_lint_errors_are_one_line_with_where(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as e:
        PolicySet.from_text(text, "seed.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_check_and_explain(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(SEED)
    r = CliRunner().invoke(cli, ["policy", "check", str(f)])
    assert r.exit_code == 0 and "ok (3 rules" in r.output
    r = CliRunner().invoke(cli, ["policy", "explain", str(f), "--tool", "payments.refund", "--args", '{"amount_usd": 250}', "--json"])
    assert r.exit_code == 0
    out = json.loads(r.output)
    assert out["decision"] == "require_human_approval"
    assert out["rules"] == ["refund_requires_approval"]
    assert out["policy_hash"] == PolicySet.from_text(SEED).hash
    r = CliRunner().invoke(cli, ["policy", "explain", str(f), "--tool", "crm.export", "--args", '{"rows": 5000}'])
    assert r.exit_code == 0 and r.output.splitlines()[0] == "deny" and "no_bulk_export" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["policy", "check", "missing.yaml"], "error: missing.yaml: policy file not found"),
        (["policy", "explain", "{f}", "--tool", "a.b", "--args", "{nope"], "error: --args is not valid JSON"),
        (["policy", "explain", "{f}", "--tool", "a.b", "--args", "[1]"], "error: --args must be a JSON object"),
        (["policy", "explain", "{f}", "--tool", "payments.refunds", "--workflow", "support_triage"], "error: unknown tool 'payments.refunds'"),
        (["policy", "explain", "{f}", "--tool", "payments.refund", "--args", '{"amount_usd": "ten"}', "--workflow", "support_triage"],
         "error: invalid arguments for payments.refund"),
        (["policy", "check", "{bad}"], "error: {bad}:4: rule 'a': unknown action 'maybe'"),
        (["policy", "check", "{f}", "--workflow", "support_triage", "--strict"], "rule 'no_bulk_export': tool 'crm.export' matches no tool"),
    ],
)  # fmt: skip
def test_cli_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(SEED)
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies:\n  - name: a\n    if: {tool: x.y}\n    then: {action: maybe}\n")
    args = [a.replace("{f}", str(f)).replace("{bad}", str(bad)) for a in args]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1
    assert message.replace("{bad}", str(bad)) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
