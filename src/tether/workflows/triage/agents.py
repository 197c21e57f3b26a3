"""Triage by an agent instead of a fixed flow, to measure plan-big/execute-small.

Two workflows over the same tools, policy and systems of record:
- `support_triage_planned`: look up, then a planner writes the whole plan once;
  the executor runs it through the gate without a model, and asks the planner again
  only when a step is invalid or refused by policy;
- `support_triage_loop`: the single-loop baseline, one model call per action with
  the whole history in the prompt.

No hosted model is reachable here, so `StandIn` plays the model: it knows each
ticket's labelled intent (an oracle: these workflows measure tokens and cost, not
model accuracy) and answers what the reference flow would do. It reports the
tokens a provider would bill for the request it was actually given: about four
characters a token of the exact prompt (system, instructions, tool schemas,
observation, history), plus `REASONING_TOKENS` of written rationale per answer.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from tether.models.base import Choice, DecisionRequest, ModelCall, Usage
from tether.models.planner import DONE, PLAN, plan_and_execute, single_loop
from tether.models.providers import SYSTEM, estimate_tokens, user_message
from tether.orchestration.workflow import End, Next, Workflow
from tether.workflows.triage import data
from tether.workflows.triage.evals import TriageEvals
from tether.workflows.triage.flow import POLICY_FILE, Run, Ticket, _deps, refund_target
from tether.workflows.triage.intents import ROUTES
from tether.workflows.triage.tools import QUEUE_TEMPLATE, TOOLS

ACTIONS = ["helpdesk.tag", "helpdesk.route", "helpdesk.reply", "helpdesk.escalate", "payments.refund",
           "cards.freeze", "chat.post", "tracker.open_issue", "crm.delete_customer"]  # fmt: skip
GOAL = ("Triage this bank support ticket: tag it with its queue, route it with a priority, carry out the playbook "
        "for its intent within policy, reply from a template; hand it to a human when you cannot.")  # fmt: skip
COMPRESS_OVER = 150  # history tokens past which the compressed loop summarises older steps
REASONING_TOKENS = 80  # a short written rationale per answer (both agents are charged the same per answer)


@cache
def _labels() -> dict[str, str]:
    return {e.text: e.intent for e in data.examples()}


def oracle_steps(text: str, ticket_id: str, customer: dict[str, Any]) -> list[dict[str, Any]]:
    """The actions the reference flow takes for this ticket (its labelled intent)."""
    route = ROUTES[_labels()[text]]
    head = [{"tool": "helpdesk.tag", "args": {"ticket_id": ticket_id, "tags": [route.intent.lower(), route.queue, "auto-triage"]}},
            {"tool": "helpdesk.route", "args": {"ticket_id": ticket_id, "queue": route.queue, "priority": route.priority}}]  # fmt: skip
    match route.playbook:
        case "answer":
            body = [{"tool": "helpdesk.reply", "args": {"ticket_id": ticket_id, "template": QUEUE_TEMPLATE[route.queue], "solve": True}}]
        case "refund":
            target = refund_target(route, customer["transactions"])
            if target is None:
                return head + _hand_off(ticket_id, "nothing to refund")
            body = [{"tool": "payments.refund", "args": {"transaction_id": target[0], "amount_usd": target[1],
                                                         "ticket_id": ticket_id, "reason": route.intent}},
                    {"tool": "helpdesk.reply", "args": {"ticket_id": ticket_id, "template": "refund_issued", "solve": True}}]  # fmt: skip
        case "freeze":
            active = [c["card_id"] for c in customer["cards"] if c["status"] == "active"]
            body = [{"tool": "cards.freeze", "args": {"card_id": c, "ticket_id": ticket_id, "reason": route.intent}} for c in active]
            body += [{"tool": "chat.post", "args": {"channel": "#fraud-alerts", "text": f"{route.intent} on ticket {ticket_id}: froze {len(active)} card(s)"}},
                     {"tool": "helpdesk.reply", "args": {"ticket_id": ticket_id, "template": "card_frozen" if active else "fraud_help", "solve": True}}]  # fmt: skip
        case "incident":
            title = f"Customer report: {route.intent.replace('_', ' ')}"
            body = [{"tool": "tracker.open_issue", "args": {"ticket_id": ticket_id, "title": title, "body": f"Reported on ticket {ticket_id}.",
                                                            "labels": ["customer-report", route.queue]}},
                    {"tool": "chat.post", "args": {"channel": "#eng-triage", "text": f"{title} ({ticket_id})"}},
                    {"tool": "helpdesk.reply", "args": {"ticket_id": ticket_id, "template": "investigating", "solve": False}}]  # fmt: skip
        case _:  # close
            body = [{"tool": "crm.delete_customer", "args": {"customer_id": customer["customer_id"], "ticket_id": ticket_id}},
                    {"tool": "helpdesk.reply", "args": {"ticket_id": ticket_id, "template": "account_help", "solve": True}}]  # fmt: skip
    return head + body


def _remaining(request: DecisionRequest, done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What is left to do: the reference actions, or the hand-off to a person once a step was refused."""
    obs = request.observation
    refused = [d for d in done if d["status"] in ("invalid", "denied", "rejected")]
    if refused:
        steps = _hand_off(obs["ticket_id"], f"{refused[-1]['tool']} {refused[-1]['status']}")
    else:
        steps = oracle_steps(obs["text"], obs["ticket_id"], obs["customer"])
    return [s for s in steps if not _was_done(s, done)]


def _hand_off(ticket_id: str, why: str) -> list[dict[str, Any]]:
    return [{"tool": "helpdesk.tag", "args": {"ticket_id": ticket_id, "tags": ["needs-human", "policy-denied"]}},
            {"tool": "helpdesk.escalate", "args": {"ticket_id": ticket_id, "reason": f"needs a person: {why}"[:500]}}]  # fmt: skip


def _was_done(step: dict[str, Any], done: list[dict[str, Any]]) -> bool:
    return any(d["tool"] == step["tool"] and d["args"] == step["args"] for d in done)


class StandIn:
    """A scripted model priced as `name` (see tether.models.prices) that answers like the reference flow."""

    def __init__(self, name: str = "scripted:large", reasoning_tokens: int = REASONING_TOKENS) -> None:
        self.name = name
        self.reasoning_tokens = reasoning_tokens
        self.max_output_tokens = 1024

    def _usage(self, request: DecisionRequest, answer: Any) -> Usage:
        prompt = SYSTEM + request.instructions + user_message(request) + json.dumps(request.tools)
        return Usage(input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(json.dumps(answer)) + self.reasoning_tokens)

    def choose(self, request: DecisionRequest) -> Choice:
        if request.point == PLAN:
            plan = {"steps": _remaining(request, request.observation.get("done", []))}
            return self._choice(request, PLAN, plan, plan)
        if request.point == "next_action":
            done = [c for h in request.observation.get("history", []) for c in (h["calls"] if "calls" in h else [h])]
            left = _remaining(request, done)
            if not left:
                return self._choice(request, DONE, {}, {"tool": DONE})
            return self._choice(request, left[0]["tool"], left[0]["args"], left[0])
        if request.point == "intent":  # as the large tier of a router
            intent = _labels()[request.observation["text"]]
            return self._choice(request, intent, {}, {"option": intent, "confidence": 0.97}, confidence=0.97)
        raise ValueError(f"the stand-in does not answer {request.point!r}")

    def _choice(self, request: DecisionRequest, option: str, args: dict[str, Any], answer: Any, confidence: float = 1.0) -> Choice:
        usage = self._usage(request, answer)
        return Choice(point=request.point, option=option, args=args, confidence=confidence, model=self.name, usage=usage,
                      calls=[ModelCall(model=self.name, usage=usage, confidence=confidence)])  # fmt: skip

    def estimate(self, request: DecisionRequest) -> list[ModelCall]:
        prompt = SYSTEM + request.instructions + user_message(request) + json.dumps(request.tools)
        return [ModelCall(model=self.name, usage=Usage(input_tokens=estimate_tokens(prompt), output_tokens=self.max_output_tokens))]


def _agent_workflow(name: str, mode: str) -> Workflow[Ticket, Any]:
    wf: Workflow[Ticket, Any] = Workflow(name, input=Ticket, tools=TOOLS, policy=POLICY_FILE, deps=_deps, model=StandIn,
                                         max_steps=8, max_calls_per_step=32, evals=TriageEvals(),
                                         description=f"Triage by a {mode} agent (for bench/economics.py).")  # fmt: skip

    @wf.state(initial=True, goes_to=["agent"])
    def intake(run: Run) -> Next:
        result = run.call("helpdesk.get_ticket", {"ticket_id": run.input.ticket_id})
        if not result.ok:
            return End("failed", "ticket_unreadable", result.error)
        run.data["ticket"] = result.output
        looked = run.call("crm.lookup_customer", {"customer_id": result.output["customer_id"]})
        if not looked.ok:
            return End("failed", "lookup_failed", looked.error)
        run.data["customer"] = looked.output
        return "agent"

    @wf.state(goes_to=[])
    def agent(run: Run) -> Next:
        # The ticket id apart from the rest, so an answer cache can template it (tether.models.cache).
        obs = {"ticket_id": run.data["ticket"]["ticket_id"], "text": run.data["ticket"]["text"], "customer": run.data["customer"]}
        if mode == "planned":
            out = plan_and_execute(run, goal=GOAL, tools=ACTIONS, observation=obs)
        else:
            out = single_loop(run, goal=GOAL, tools=ACTIONS, observation=obs, compress_over=COMPRESS_OVER if mode == "compressed" else None)
        if out.status != "done":
            return End("failed", "agent_failed", out.error)
        escalated = any(r.tool == "helpdesk.escalate" and r.ok for r in out.results)
        return End("escalated" if escalated else "completed", "escalated:agent" if escalated else "done")

    return wf


planned = _agent_workflow("support_triage_planned", "planned")
loop = _agent_workflow("support_triage_loop", "loop")
compressed_loop = _agent_workflow("support_triage_loop_compressed", "compressed")
