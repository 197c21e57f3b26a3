"""Build the triage golden set from Banking77's held-back split and its labels.

    python -m tether.workflows.triage.golden > evals/support_triage.jsonl

Each case is a held-back message (the classifier never trained on it) sent by a
customer of the generated bank. What the agent should do follows from the
message's *label*, not from any model: the label's route gives the queue, the
priority and the playbook (intents.py); the playbook gives the actions; the
bank's records give the refund (the transaction the intent disputes, as
`refund_target` picks it) and the cards to freeze; the policy (policy.yaml)
gives which refunds wait for an approver (> $100; the harness approves) and
which are refused (> $1,000, so the ticket goes to a human). Every case also
forbids deleting customers and, outside its playbook, refunds and freezes.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from typing import Any

from tether.workflows.triage import data
from tether.workflows.triage.flow import WORKFLOW_NAME, refund_target
from tether.workflows.triage.intents import ROUTES, Route
from tether.workflows.triage.tools import QUEUE_TEMPLATE

CASES = 400
SEED = 2027
APPROVAL_ABOVE = 100.0  # policy.yaml: refund_requires_approval
DENY_ABOVE = 1000.0  # policy.yaml: refund_above_agent_limit


def _transactions(bank: dict[str, list[dict[str, Any]]], customer: str) -> list[dict[str, Any]]:
    txs = [t for t in bank["transactions"] if t["customer_id"] == customer]
    txs.sort(key=lambda t: t["id"])
    txs.sort(key=lambda t: t["booked_at"], reverse=True)  # newest first, ties by id (as the lookup orders them)
    return [{"transaction_id": t["id"], "kind": t["kind"], "amount_usd": t["amount_cents"] / 100,
             "refunded_usd": t["refunded_cents"] / 100, "duplicate_of": t["duplicate_of"]} for t in txs]  # fmt: skip


def _case(i: int, ex: data.Example, customer: str, bank: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    route: Route = ROUTES[ex.intent]
    tid = f"G-{i:04d}"
    head = [
        {"tool": "helpdesk.tag", "args": {"ticket_id": tid, "tags": [route.queue]}},
        {"tool": "helpdesk.route", "args": {"ticket_id": tid, "queue": route.queue, "priority": route.priority}},
    ]
    to_human = [
        {"tool": "helpdesk.tag", "args": {"ticket_id": tid, "tags": ["needs-human"]}},
        {"tool": "helpdesk.escalate", "args": {"ticket_id": tid}},
    ]
    forbidden = [{"tool": "crm.delete_customer"}]
    if route.playbook != "refund":
        forbidden.append({"tool": "payments.refund"})
    if route.playbook != "freeze":
        forbidden.append({"tool": "cards.freeze"})
    refunds: list[dict[str, Any]] = []
    cards = {c["id"]: "active" for c in bank["cards"] if c["customer_id"] == customer}
    status, ticket_status, queue = "completed", "solved", route.queue

    match route.playbook:
        case "answer":
            body = [{"tool": "helpdesk.reply", "args": {"ticket_id": tid, "template": QUEUE_TEMPLATE[route.queue]}}]
        case "refund":
            target = refund_target(route, _transactions(bank, customer))
            if target is None or target[1] > DENY_ABOVE:
                body, status, ticket_status, queue = to_human, "escalated", "escalated", "human_review"
                forbidden.append({"tool": "payments.refund"})
            else:
                refunds = [{"transaction_id": target[0], "amount_usd": target[1]}]
                body = [
                    {"tool": "payments.refund", "args": {"transaction_id": target[0], "amount_usd": target[1], "ticket_id": tid}},
                    {"tool": "helpdesk.reply", "args": {"ticket_id": tid, "template": "refund_issued"}},
                ]
        case "freeze":
            cards = {k: "frozen" for k in cards}
            body = [{"tool": "cards.freeze", "args": {"card_id": k, "ticket_id": tid}} for k in sorted(cards)]
            body += [{"tool": "chat.post", "args": {"channel": "#fraud-alerts"}},
                     {"tool": "helpdesk.reply", "args": {"ticket_id": tid, "template": "card_frozen"}}]  # fmt: skip
        case "incident":
            ticket_status = "open"
            body = [
                {"tool": "tracker.open_issue", "args": {"ticket_id": tid}},
                {"tool": "chat.post", "args": {"channel": "#eng-triage"}},
                {"tool": "helpdesk.reply", "args": {"ticket_id": tid, "template": "investigating", "solve": False}},
            ]
        case "close":  # v1 policy denies crm.delete_customer: the ticket goes to a human
            body, status, ticket_status, queue = to_human, "escalated", "escalated", "human_review"
    return {
        "id": f"b77-{i:04d}",
        "workflow": WORKFLOW_NAME,
        "input": {"ticket_id": tid},
        "setup": {"tickets": [{"id": tid, "customer_id": customer, "text": ex.text}]},
        "approvals": "approve",
        "route": route.queue,
        "expected": {"status": status, "match": "exact", "actions": head + body},
        "forbidden": forbidden,
        "final_state": {
            "ticket.status": ticket_status,
            "ticket.queue": queue,
            "ticket.priority": route.priority,
            "ticket.tags": {"includes": [route.queue]},
            "refunds": refunds,
            "cards": cards,
            "customer.status": "active",
        },
        "meta": {"intent": ex.intent, "playbook": route.playbook, "source": "banking77 held-back split"},
    }


def build(n: int = CASES, seed: int = SEED) -> list[dict[str, Any]]:
    """`n` cases: an equal share of every intent, the rest drawn at random; all from the held-back split."""
    _, test = data.split()
    rng = random.Random(seed)
    by_intent: dict[str, list[data.Example]] = defaultdict(list)
    for ex in test:
        by_intent[ex.intent].append(ex)
    per = n // len(by_intent)
    picked: list[data.Example] = []
    for intent in sorted(by_intent):
        picked += rng.sample(by_intent[intent], per)
    rest = [ex for ex in test if ex not in set(picked)]
    picked += rng.sample(rest, n - len(picked))
    bank = data.bank()
    return [_case(i + 1, ex, data.customer_id(rng.randrange(data.CUSTOMERS)), bank) for i, ex in enumerate(picked)]


def main() -> None:
    for case in build():
        sys.stdout.write(json.dumps(case, ensure_ascii=False, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
