"""Facts on calls (what the workflow established, seen by policies and tools), who approved,
and the loop guard letting a read be asked again after a change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tether import Args, End, RunContext, Runtime, Workflow, tool
from tether.guardrails.approvals import ApprovalInbox
from tether.guardrails.loading import load_policy
from tether.record import runs as store
from tether.record.db import Database
from tether.tools.tool import ToolContext

SEEN: list[dict[str, Any]] = []


class ItemArgs(Args):
    item: str


@tool("shop.read", side_effect=False)
def read(ctx: ToolContext[None], args: ItemArgs) -> str:
    return args.item


@tool("shop.change")
def change(ctx: ToolContext[None], args: ItemArgs) -> str:
    SEEN.append({"facts": dict(ctx.facts), "approved_by": ctx.grant.approved_by})
    return args.item


class In(BaseModel):
    calls: list[tuple[str, str]]
    facts: dict[str, Any] = {}


def _workflow(policy: Path) -> Workflow[In, None]:
    wf: Workflow[In, None] = Workflow("facts_demo", input=In, tools=[read, change], policy=policy)

    @wf.state(initial=True)
    def go(run: RunContext[In, None]) -> End:
        for name, item in run.input.calls:
            r = run.call(name, {"item": item}, facts=run.input.facts)
            if not r.ok:
                return End("failed", r.status, r.error)
        return End("completed")

    return wf


def _policy(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_and_cedar_rules_test_facts_and_the_tool_gets_them(db: Database, tmp_path: Path) -> None:
    _policy(tmp_path, '@id("permit") permit (principal, action, resource);\n'
                      '@id("owner_only") forbid (principal, action, resource) when { context.facts.owner != context.facts.user };\n',
            "p.cedar")  # fmt: skip
    policy = _policy(tmp_path, "include: [p.cedar]\npolicies:\n"
                               "  - {name: must_be_checked, if: {tool: 'shop.change', facts.checked: '!= true'}, then: {action: deny}}\n")  # fmt: skip
    wf = _workflow(policy)
    rt = Runtime(db)
    SEEN.clear()
    ok = rt.start(wf, {"calls": [("shop.change", "a")], "facts": {"checked": True, "owner": "u1", "user": "u1"}}, started_by="t")
    assert ok.status == "completed" and SEEN == [{"facts": {"checked": True, "owner": "u1", "user": "u1"}, "approved_by": None}]
    unchecked = rt.start(wf, {"calls": [("shop.change", "a")], "facts": {"checked": None, "owner": "u1", "user": "u1"}}, started_by="t")
    assert unchecked.status == "failed" and unchecked.outcome == "denied"  # a null fact: the deny rule applies
    other = rt.start(wf, {"calls": [("shop.change", "a")], "facts": {"checked": True, "owner": "u2", "user": "u1"}}, started_by="t")
    assert other.status == "failed" and "owner_only" in str(_decision(db, other.run_id)["rules"])
    with db.read() as conn:
        proposal = next(e for e in store.load_events(conn, ok.run_id) if e.kind == "proposal")
    assert proposal.data["facts"] == {"checked": True, "owner": "u1", "user": "u1"}  # recorded with the call
    assert len(SEEN) == 1
    rt.close()


def _decision(db: Database, run_id: str) -> dict[str, Any]:
    with db.read() as conn:
        return next(e.data for e in store.load_events(conn, run_id) if e.kind == "decision")


def test_facts_are_a_context_key_for_lint(tmp_path: Path) -> None:
    policy = load_policy(_policy(tmp_path, "policies:\n  - {name: r, if: {tool: 'shop.*', facts.x: 1}, then: {action: deny}}\n"))
    assert policy.lint({"shop.change": change.schema})[0] == []


def test_the_tool_sees_who_approved(db: Database, tmp_path: Path) -> None:
    policy = _policy(tmp_path, "policies:\n  - {name: ask, if: {tool: 'shop.change'}, then: {action: require_human_approval}}\n")
    wf = _workflow(policy)
    rt = Runtime(db)
    SEEN.clear()
    r = rt.start(wf, {"calls": [("shop.change", "a")]}, started_by="t")
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="customer:u1")
    assert rt.resume(r.run_id, wf).status == "completed"
    assert SEEN[0]["approved_by"] == "customer:u1"
    rt.close()


def test_a_read_may_be_asked_again_a_change_may_not(db: Database, tmp_path: Path) -> None:
    wf = _workflow(_policy(tmp_path, "policies: []\n"))
    rt = Runtime(db)
    again = rt.start(wf, {"calls": [("shop.read", "a"), ("shop.change", "b"), ("shop.read", "a")]}, started_by="t")
    assert again.status == "completed"
    # Reading again is normal (after a refused change, say); the step and call budgets bound it.
    reread = rt.start(wf, {"calls": [("shop.read", "a"), ("shop.read", "a")]}, started_by="t")
    assert reread.status == "completed"
    twice = rt.start(wf, {"calls": [("shop.change", "b"), ("shop.read", "a"), ("shop.change", "b")]}, started_by="t")
    assert twice.status == "loop_detected"  # a repeated change is still a loop
    rt.close()


def test_a_rule_on_a_fact_the_code_did_not_establish_applies_conservatively() -> None:
    """A deny rule on `facts.order_status` is not skipped because a call carries no such fact."""
    from tether import PolicySet

    p = PolicySet.from_text('policies: [{name: pending_only, if: {tool: "shop.cancel", facts.order_status: "!= pending"}, '
                            'then: {action: deny}}]', "facts.yaml")  # fmt: skip
    assert p.decide("shop.cancel", {}, {"facts": {"order_status": "pending"}}).action == "allow"
    assert p.decide("shop.cancel", {}, {"facts": {"order_status": "delivered"}}).action == "deny"
    assert p.decide("shop.cancel", {}, {"facts": {}}).action == "deny"
    assert p.decide("shop.cancel", {}, {}).action == "deny"
