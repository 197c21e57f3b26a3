"""The triage tools: strict schemas over the systems of record.

Every changing tool passes the proxy's idempotency key to its system, so a
call repeated after a crash or on resume changes nothing the second time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from tether.record.redaction import PII
from tether.tools.tool import Args, ToolContext, tool
from tether.workflows.triage.intents import Priority, Queue
from tether.workflows.triage.systems import Systems

TicketId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
CustomerId = Annotated[str, Field(pattern=r"^C\d{4}$")]
Tag = Annotated[str, Field(pattern=r"^[a-z0-9_?:-]{1,60}$")]
Channel = Literal["#fraud-alerts", "#eng-triage", "#support-leads"]
Ctx = ToolContext[Systems]

TEMPLATES: dict[str, str] = {
    "cards_help": "Hi {name}, thanks for reaching out about your card. Here is how to sort it out in the app: Cards > Manage.",
    "payments_help": "Hi {name}, thanks for your message about a payment. Most transfers and card payments settle within 1-2 working days; you can follow them under Activity.",
    "top_ups_help": "Hi {name}, thanks for your message about topping up. Limits, fees and timings are listed under Account > Top up.",
    "fees_help": "Hi {name}, thanks for your message about a charge. Refunds reach your account within 5 working days of being issued.",
    "fraud_help": "Hi {name}, thanks for flagging this. Our security team is looking at the payment and will contact you.",
    "account_help": "Hi {name}, thanks for your message about your account. You can update details and verify your identity under Profile.",
    "refund_issued": "Hi {name}, we have refunded the charge you asked about. It will show on your statement within 5 working days.",
    "card_frozen": "Hi {name}, we have frozen your card to keep your money safe. You can order a replacement in the app.",
    "investigating": "Hi {name}, sorry about this. Our engineers are investigating and we will update you here.",
}
QUEUE_TEMPLATE: dict[str, str] = {
    "cards": "cards_help", "payments": "payments_help", "top_ups": "top_ups_help",
    "fees_refunds": "fees_help", "fraud": "fraud_help", "account": "account_help",
}  # fmt: skip
Template = Literal[
    "cards_help", "payments_help", "top_ups_help", "fees_help", "fraud_help", "account_help",
    "refund_issued", "card_frozen", "investigating",
]  # fmt: skip


FreeText = PII("free_text")  # scanned for personal data before it is written anywhere but the journal


class OpenTicketArgs(Args):
    ticket_id: TicketId
    customer_id: CustomerId
    text: Annotated[str, FreeText] = Field(min_length=1, max_length=5000)


class TicketArgs(Args):
    ticket_id: TicketId


class CustomerArgs(Args):
    customer_id: CustomerId


class TagArgs(Args):
    ticket_id: TicketId
    tags: list[Tag] = Field(min_length=1, max_length=6)


class RouteArgs(Args):
    ticket_id: TicketId
    queue: Queue
    priority: Priority


class ReplyArgs(Args):
    ticket_id: TicketId
    template: Template
    solve: bool = True


class EscalateArgs(Args):
    ticket_id: TicketId
    reason: Annotated[str, FreeText] = Field(min_length=1, max_length=500)


class IssueArgs(Args):
    ticket_id: TicketId
    title: Annotated[str, FreeText] = Field(min_length=1, max_length=200)
    body: Annotated[str, FreeText] = Field(max_length=5000)
    labels: list[Tag] = Field(max_length=6)


class PostArgs(Args):
    channel: Channel
    text: Annotated[str, FreeText] = Field(min_length=1, max_length=2000)


class RefundArgs(Args):
    transaction_id: str = Field(pattern=r"^X\d{6}$")
    amount_usd: float = Field(gt=0, le=100_000)
    ticket_id: TicketId
    reason: str = Field(min_length=1, max_length=500)

    @field_validator("amount_usd")
    @classmethod
    def _cents(cls, v: float) -> float:
        if round(v, 2) != v:
            raise ValueError("amount_usd has more than two decimals")
        return v


class FreezeArgs(Args):
    card_id: str = Field(pattern=r"^K\d{5}$")
    ticket_id: TicketId
    reason: str = Field(min_length=1, max_length=500)


class ReverseRefundArgs(Args):
    refund_id: str = Field(pattern=r"^rf_[0-9a-f]{16}$")
    ticket_id: TicketId


class RestoreCardArgs(Args):
    card_id: str = Field(pattern=r"^K\d{5}$")
    ticket_id: TicketId
    status: Literal["active", "frozen"]


class DeleteCustomerArgs(Args):
    customer_id: CustomerId
    ticket_id: TicketId


@tool("helpdesk.open_ticket", risk_tier="low")
def open_ticket(ctx: Ctx, args: OpenTicketArgs) -> dict[str, Any]:
    """Create a ticket in the helpdesk for an inbound customer message."""
    return ctx.deps.open_ticket(ctx.idempotency_key, args.ticket_id, args.customer_id, args.text)


@tool("helpdesk.get_ticket", side_effect=False, risk_tier="low", untrusted_output=("text",))
def get_ticket(ctx: Ctx, args: TicketArgs) -> dict[str, Any]:
    """Read a ticket: the customer's message, status, queue and tags."""
    return ctx.deps.get_ticket(args.ticket_id)


@tool("crm.lookup_customer", side_effect=False, risk_tier="low", untrusted_output=("description",))
def lookup_customer(ctx: Ctx, args: CustomerArgs) -> dict[str, Any]:
    """Read a customer's profile, cards and recent transactions."""
    return ctx.deps.lookup_customer(args.customer_id)


@tool("helpdesk.tag", risk_tier="low")
def tag(ctx: Ctx, args: TagArgs) -> dict[str, Any]:
    """Add tags to a ticket."""
    return ctx.deps.tag(ctx.idempotency_key, args.ticket_id, args.tags)


@tool("helpdesk.route", risk_tier="low")
def route(ctx: Ctx, args: RouteArgs) -> dict[str, Any]:
    """Put a ticket in a queue with a priority."""
    return ctx.deps.route(ctx.idempotency_key, args.ticket_id, args.queue, args.priority)


@tool("helpdesk.reply", risk_tier="medium")
def reply(ctx: Ctx, args: ReplyArgs) -> dict[str, Any]:
    """Reply to the customer from a template and, by default, solve the ticket."""
    ticket = ctx.deps.get_ticket(args.ticket_id)
    name = ctx.deps.lookup_customer(ticket["customer_id"])["name"].split()[0]
    body = TEMPLATES[args.template].format(name=name)
    return ctx.deps.reply(ctx.idempotency_key, args.ticket_id, args.template, body, args.solve)


@tool("helpdesk.escalate", risk_tier="low")
def escalate(ctx: Ctx, args: EscalateArgs) -> dict[str, Any]:
    """Hand a ticket to a human agent, with an internal note saying why."""
    return ctx.deps.escalate(ctx.idempotency_key, args.ticket_id, args.reason)


@tool("tracker.open_issue", risk_tier="medium")
def open_issue(ctx: Ctx, args: IssueArgs) -> dict[str, Any]:
    """Open an engineering issue linked to a ticket."""
    return ctx.deps.open_issue(ctx.idempotency_key, args.title, args.body, args.labels, args.ticket_id)


@tool("chat.post", risk_tier="medium")
def post(ctx: Ctx, args: PostArgs) -> dict[str, Any]:
    """Post a message to a team chat channel."""
    return ctx.deps.post(ctx.idempotency_key, args.channel, args.text)


@tool("payments.refund", target="transaction_id", risk_tier="high", risk_amount="amount_usd",
      compensate=("payments.reverse_refund", lambda args, out: {"refund_id": out["refund_id"], "ticket_id": args["ticket_id"]}))
def refund(ctx: Ctx, args: RefundArgs) -> dict[str, Any]:
    """Refund (part of) a transaction to the customer's account."""
    ctx.check_credential(args.transaction_id)
    cents = round(args.amount_usd * 100)
    return ctx.deps.refund(ctx.idempotency_key, args.transaction_id, cents, args.ticket_id, args.reason)


@tool("cards.freeze", target="card_id", risk_tier="high",
      compensate=("cards.restore", lambda args, out: {"card_id": args["card_id"], "ticket_id": args["ticket_id"],
                                                      "status": out["was"]}))
def freeze(ctx: Ctx, args: FreezeArgs) -> dict[str, Any]:
    """Freeze a card so no new payment can be made with it."""
    ctx.check_credential(args.card_id)
    return ctx.deps.freeze_card(ctx.idempotency_key, args.card_id, args.reason)


@tool("payments.reverse_refund", target="refund_id", risk_tier="medium")
def reverse_refund(ctx: Ctx, args: ReverseRefundArgs) -> dict[str, Any]:
    """Take back a refund (the compensation of payments.refund when its run fails or is cancelled)."""
    ctx.check_credential(args.refund_id)
    return ctx.deps.reverse_refund(ctx.idempotency_key, args.refund_id, args.ticket_id)


@tool("cards.restore", target="card_id", risk_tier="medium")
def restore(ctx: Ctx, args: RestoreCardArgs) -> dict[str, Any]:
    """Put a card back in the status it had before it was frozen (the compensation of cards.freeze)."""
    ctx.check_credential(args.card_id)
    return ctx.deps.restore_card(ctx.idempotency_key, args.card_id, args.status)


@tool("crm.delete_customer", target="customer_id", risk_tier="critical")
def delete_customer(ctx: Ctx, args: DeleteCustomerArgs) -> dict[str, Any]:
    """Close and delete a customer's account."""
    ctx.check_credential(args.customer_id)
    return ctx.deps.delete_customer(ctx.idempotency_key, args.customer_id)


TOOLS = [open_ticket, get_ticket, lookup_customer, tag, route, reply, escalate, open_issue, post, refund, freeze,
         reverse_refund, restore, delete_customer]  # fmt: skip
