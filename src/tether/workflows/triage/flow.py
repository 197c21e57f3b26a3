"""Support-ticket triage as a state machine.

    intake -> classify -> lookup -> act -> reply            (completed)
                 |                   |
                 +----> escalate <---+                      (escalated)

The model makes one choice per ticket: the intent, among Banking77's 77. Below
the confidence threshold for that intent's playbook the ticket goes to a human. Everything after
that is deterministic: the intent's route names the queue, the priority and
the bounded playbook of actions, and every action goes through the tool proxy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tether.orchestration.context import RunContext
from tether.orchestration.workflow import End, Next, Workflow
from tether.record.db import Database
from tether.tools.calls import ToolResult
from tether.workflows.triage.evals import TriageEvals
from tether.workflows.triage.intents import INTENTS, ROUTES, Route
from tether.workflows.triage.systems import Systems
from tether.workflows.triage.tools import QUEUE_TEMPLATE, TOOLS

# Below these confidences the ticket goes to a human. Consequential playbooks
# (money, cards, accounts) need more certainty than a templated answer; chosen on
# a validation split of the training part (see bench/classifier.py).
CONFIDENCE_THRESHOLDS = {"answer": 0.3, "incident": 0.3, "refund": 0.6, "freeze": 0.6, "close": 0.6}


def confidence_threshold(intent: str) -> float:
    return CONFIDENCE_THRESHOLDS[ROUTES[intent].playbook]

POLICY_FILE = Path(__file__).with_name("policy.yaml")


class Ticket(BaseModel):
    """An existing helpdesk ticket (`ticket_id`), or a new message (`customer_id` + `text`)."""

    model_config = ConfigDict(extra="forbid")

    ticket_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,40}$")
    customer_id: str | None = Field(default=None, pattern=r"^C\d{4}$")
    text: str | None = Field(default=None, min_length=1, max_length=5000)

    @model_validator(mode="after")
    def _enough(self) -> Ticket:
        if (self.customer_id is None) != (self.text is None):
            raise ValueError("a new ticket needs both customer_id and text")
        if self.ticket_id is None and self.text is None:
            raise ValueError("give ticket_id, or customer_id and text for a new ticket")
        return self


def _deps(db: Database) -> Systems:
    from tether.workflows.triage.data import seed_bank

    systems = Systems(db)
    seed_bank(systems)  # the generated bank the tickets refer to; a no-op once present
    return systems


def _model() -> Any:
    """The offline classifier, unless TETHER_MODEL / TETHER_ROUTER configure another (tether.models.config)."""
    from tether.models.config import model_from_env
    from tether.workflows.triage.model import classifier

    return model_from_env(offline=classifier)


WORKFLOW_NAME = "support_triage"
workflow: Workflow[Ticket, Systems] = Workflow(
    WORKFLOW_NAME,
    input=Ticket,
    tools=TOOLS,
    policy=POLICY_FILE,
    deps=_deps,
    model=_model,
    max_steps=12,
    evals=TriageEvals(),
    trusted_input=("ticket_id", "customer_id"),  # set by the helpdesk; the text is the customer's own
    description="Triage inbound bank support tickets: classify, look up, act within a bounded playbook, reply.",
)
Run = RunContext[Ticket, Systems]


def _must(result: ToolResult) -> Any:
    """The output of a call the flow cannot go on without; anything else escalates."""
    if not result.ok:
        kind = {"denied": "policy_denied", "rejected": "approval_rejected"}.get(result.status, "action_failed")
        raise _Escalate(kind, f"{result.tool} {result.status}: {result.error}")
    return result.output


class _Escalate(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _to_human(run: Run, kind: str, detail: str) -> Next:
    run.data["escalate"] = (kind, detail)
    return "escalate"


@workflow.state(initial=True, goes_to=["classify"])
def intake(run: Run) -> Next:
    t = run.input
    ticket_id = t.ticket_id or f"TKT-{run.id.removeprefix('run_')}"
    if t.text is not None:  # a new message: it gets its own ticket, or the run stops untouched
        opened = run.call("helpdesk.open_ticket", {"ticket_id": ticket_id, "customer_id": t.customer_id, "text": t.text})
        if not opened.ok:
            return End("failed", "intake_failed", opened.error)
    result = run.call("helpdesk.get_ticket", {"ticket_id": ticket_id})
    if not result.ok:  # nothing to triage: the run stops without touching anything
        return End("failed", "ticket_unreadable", result.error)
    run.data["ticket"] = result.output
    return "classify"


@workflow.state(goes_to=["lookup", "escalate"])
def classify(run: Run) -> Next:
    choice = run.choose("intent", options=INTENTS, observation={"text": run.data["ticket"]["text"]})
    run.data["choice"] = choice.model_dump()
    if not choice.ok:
        return _to_human(run, "no_classification", f"no usable classification ({choice.error})")
    threshold = confidence_threshold(choice.option or "")
    if choice.confidence < threshold:
        why = f"low confidence: {choice.option} at {choice.confidence:.2f} (needs {threshold})"
        return _to_human(run, "low_confidence", why)
    run.data["route"] = ROUTES[choice.option or ""]
    return "lookup"


@workflow.state(goes_to=["act", "escalate"])
def lookup(run: Run) -> Next:
    result = run.call("crm.lookup_customer", {"customer_id": run.data["ticket"]["customer_id"]})
    if not result.ok:
        return _to_human(run, "lookup_failed", f"customer lookup failed: {result.error}")
    run.data["customer"] = result.output
    return "act"


@workflow.state(goes_to=["reply", "escalate"])
def act(run: Run) -> Next:
    route: Route = run.data["route"]
    ticket_id = run.data["ticket"]["ticket_id"]
    try:
        _must(run.call("helpdesk.tag", {"ticket_id": ticket_id, "tags": [route.intent.lower(), route.queue, "auto-triage"]}))
        _must(run.call("helpdesk.route", {"ticket_id": ticket_id, "queue": route.queue, "priority": route.priority}))
        run.data["reply"] = _PLAYBOOKS[route.playbook](run, route, ticket_id)
    except _Escalate as e:
        return _to_human(run, e.kind, e.detail)
    return "reply"


@workflow.state(goes_to=[])
def reply(run: Run) -> Next:
    template, solve, outcome = run.data["reply"]
    ticket_id = run.data["ticket"]["ticket_id"]
    result = run.call("helpdesk.reply", {"ticket_id": ticket_id, "template": template, "solve": solve}, risk=_risk(run))
    if not result.ok:
        return End("failed", "reply_failed", result.error)
    return End("completed", outcome)


@workflow.state(goes_to=[])
def escalate(run: Run) -> Next:
    ticket_id = run.data["ticket"]["ticket_id"]
    kind, detail = run.data["escalate"]
    run.call("helpdesk.tag", {"ticket_id": ticket_id, "tags": ["needs-human", kind.replace("_", "-")]})
    result = run.call("helpdesk.escalate", {"ticket_id": ticket_id, "reason": detail[:500]})
    if not result.ok:
        return End("failed", "escalation_failed", result.error)
    return End("escalated", f"escalated:{kind}")


# -- playbooks: each returns (reply template, solve the ticket?, outcome) ------------
def _answer(run: Run, route: Route, ticket_id: str) -> tuple[str, bool, str]:
    return QUEUE_TEMPLATE[route.queue], True, f"answered:{route.queue}"


def _risk(run: Run) -> dict[str, Any]:
    """Risk features the flow knows: the customer's tier and how sure the classifier was."""
    return {"customer_tier": run.data["customer"]["tier"], "confidence": run.data["choice"]["confidence"]}


def _refund(run: Run, route: Route, ticket_id: str) -> tuple[str, bool, str]:
    target = refund_target(route, run.data["customer"]["transactions"])
    if target is None:
        raise _Escalate("nothing_to_refund", f"no refundable {route.refund} transaction for {route.intent}")
    tx_id, amount = target
    args = {"transaction_id": tx_id, "amount_usd": amount, "ticket_id": ticket_id, "reason": route.intent}
    _must(run.call("payments.refund", args, risk=_risk(run)))
    return "refund_issued", True, "refund_issued"


def _freeze(run: Run, route: Route, ticket_id: str) -> tuple[str, bool, str]:
    active = [c for c in run.data["customer"]["cards"] if c["status"] == "active"]
    for card in active:
        _must(run.call("cards.freeze", {"card_id": card["card_id"], "ticket_id": ticket_id, "reason": route.intent},
                       risk=_risk(run)))  # fmt: skip
    text = f"{route.intent} on ticket {ticket_id}: froze {len(active)} card(s)"
    _must(run.call("chat.post", {"channel": "#fraud-alerts", "text": text}))
    return ("card_frozen" if active else "fraud_help"), True, "card_frozen"


def _incident(run: Run, route: Route, ticket_id: str) -> tuple[str, bool, str]:
    title = f"Customer report: {route.intent.replace('_', ' ')}"
    issue = _must(run.call("tracker.open_issue", {"ticket_id": ticket_id, "title": title,
                                                  "body": f"Reported on ticket {ticket_id}.",
                                                  "labels": ["customer-report", route.queue]}))  # fmt: skip
    _must(run.call("chat.post", {"channel": "#eng-triage", "text": f"{issue['issue']}: {title} ({ticket_id})"}))
    return "investigating", False, "issue_opened"


def _close(run: Run, route: Route, ticket_id: str) -> tuple[str, bool, str]:
    _must(run.call("crm.delete_customer", {"customer_id": run.data["customer"]["customer_id"], "ticket_id": ticket_id},
                   risk=_risk(run)))  # fmt: skip
    return "account_help", True, "account_closed"


_PLAYBOOKS = {"answer": _answer, "refund": _refund, "freeze": _freeze, "incident": _incident, "close": _close}


def refund_target(route: Route, transactions: list[dict[str, Any]]) -> tuple[str, float] | None:
    """The transaction an intent disputes and the amount to refund, newest first."""

    def left(tx: dict[str, Any]) -> float:
        return round(tx["amount_usd"] - tx["refunded_usd"], 2)

    def newest(kind: str, duplicate: bool = False) -> dict[str, Any] | None:
        for tx in transactions:
            if tx["kind"] == kind and (tx["duplicate_of"] is not None) == duplicate and left(tx) > 0:
                return tx
        return None

    match route.refund:
        case "card_payment":
            tx = newest("card_payment")
            return (tx["transaction_id"], left(tx)) if tx else None
        case "duplicate":
            tx = newest("card_payment", duplicate=True)
            return (tx["transaction_id"], left(tx)) if tx else None
        case "fee":
            tx = newest("fee")
            return (tx["transaction_id"], left(tx)) if tx else None
        case "cash_shortfall":
            tx = newest("atm_withdrawal")
            return (tx["transaction_id"], min(left(tx), round(tx["amount_usd"] * 0.2, 2))) if tx else None
        case "fx_difference":
            tx = newest("atm_withdrawal" if "cash" in route.intent else "card_payment")
            return (tx["transaction_id"], min(left(tx), max(0.5, round(tx["amount_usd"] * 0.03, 2)))) if tx else None
    return None
