"""The retail tools: τ²-bench's tool set under the `retail.` family, strict schemas, over the store.

Besides the policy gate, each tool checks its own preconditions against the
live store (defence in depth, and what the gate cannot see before a read):
- every tool but the identity lookups, `calculate` and the transfer needs the
  run's authenticated user (`ctx.facts["user"]`, set by the workflow from a
  successful lookup, never by the planner), and only touches that user's
  orders and profile;
- every change needs the customer's own confirmation: the call was approved by
  the principal `customer:<user id>` of the order's owner;
- the domain rules (status, items, payment methods, balances) as τ²'s tools
  enforce them, in `store.py`.
Every change passes the proxy's idempotency key to the store.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import Field

from tether.guardrails.approvals import same_principal
from tether.record.redaction import PII
from tether.tools.tool import Args, Tool, ToolContext, tool
from tether.workflows.retail.store import RecordError, RetailStore, calculate

Ctx = ToolContext[RetailStore]
# τ²'s docs insist on the '#'; the rest is left to the store, which answers "Order not found".
OrderId = Annotated[str, Field(pattern=r"^#[A-Za-z0-9]{1,20}$")]
UserId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,80}$")]
ProductId = Annotated[str, Field(pattern=r"^[0-9]{1,20}$")]
ItemId = Annotated[str, Field(pattern=r"^[0-9]{1,20}$")]
PaymentMethodId = Annotated[str, Field(pattern=r"^(gift_card|credit_card|paypal)_[0-9]{1,20}$")]
ItemList = Annotated[list[ItemId], Field(min_length=1, max_length=50)]
Line = Annotated[str, Field(max_length=200)]
Name = Annotated[str, PII("person"), Field(min_length=1, max_length=100)]

CUSTOMER = "customer:"  # the principal a customer confirms as: customer:<user id>


class EmailArgs(Args):
    email: Annotated[str, PII("email"), Field(min_length=3, max_length=200)]


class NameZipArgs(Args):
    first_name: Name
    last_name: Name
    zip: Annotated[str, Field(pattern=r"^[0-9]{5}$")]


class UserArgs(Args):
    user_id: UserId


class OrderArgs(Args):
    order_id: OrderId


class ProductArgs(Args):
    product_id: ProductId


class ItemArgs(Args):
    item_id: ItemId


class NoArgs(Args):
    pass


class CalculateArgs(Args):
    expression: Annotated[str, Field(pattern=r"^[0-9+\-*/(). ]{1,200}$")]


class CancelArgs(Args):
    order_id: OrderId
    reason: Literal["no longer needed", "ordered by mistake"]


class _Address(Args):
    address1: Annotated[Line, Field(min_length=1)]
    address2: Line
    city: Annotated[Line, Field(min_length=1)]
    state: Annotated[Line, Field(min_length=1)]
    country: Annotated[Line, Field(min_length=1)]
    zip: Annotated[str, Field(pattern=r"^[0-9]{5}$")]

    def address(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("address1", "address2", "city", "country", "state", "zip")}


class OrderAddressArgs(_Address):
    order_id: OrderId


class UserAddressArgs(_Address):
    user_id: UserId


class PaymentArgs(Args):
    order_id: OrderId
    payment_method_id: PaymentMethodId


class SwapArgs(Args):
    order_id: OrderId
    item_ids: ItemList
    new_item_ids: ItemList
    payment_method_id: PaymentMethodId


class ReturnArgs(Args):
    order_id: OrderId
    item_ids: ItemList
    payment_method_id: PaymentMethodId


class TransferArgs(Args):
    summary: Annotated[str, PII("free_text"), Field(min_length=1, max_length=2000)]


# -- preconditions -----------------------------------------------------------------
def session_user(ctx: Ctx) -> str:
    user = ctx.facts.get("user")
    if not user:
        raise RecordError("no authenticated user in this run: find the user by email, or by name and zip, first")
    return str(user)


def own_order(ctx: Ctx, order_id: str) -> dict[str, Any]:
    order = ctx.deps.get_order(order_id)
    if order["user_id"] != session_user(ctx):
        raise RecordError(f"order {order_id} is not an order of the authenticated user")
    return order


def confirmed(ctx: Ctx, user_id: str) -> None:
    """The customer said yes: the gate's approval was given by the customer principal themself."""
    if not same_principal(ctx.grant.approved_by, CUSTOMER + user_id):
        who = ctx.grant.approved_by or "nobody"
        raise RecordError(f"{ctx.grant.tool} needs the customer's explicit confirmation ({CUSTOMER}{user_id}); approved by {who}")


def _change_order(ctx: Ctx, order_id: str) -> None:
    ctx.check_credential(order_id)
    confirmed(ctx, own_order(ctx, order_id)["user_id"])


# -- identity -------------------------------------------------------------------------
@tool("retail.find_user_id_by_email", side_effect=False, risk_tier="low")
def find_user_id_by_email(ctx: Ctx, args: EmailArgs) -> str:
    """Find a user id by email (authenticates the customer)."""
    return ctx.deps.find_user_by_email(args.email)


@tool("retail.find_user_id_by_name_zip", side_effect=False, risk_tier="low")
def find_user_id_by_name_zip(ctx: Ctx, args: NameZipArgs) -> str:
    """Find a user id by first name, last name and zip code, when the email is not known."""
    return ctx.deps.find_user_by_name_zip(args.first_name, args.last_name, args.zip)


# -- reads ----------------------------------------------------------------------------
@tool("retail.get_user_details", side_effect=False, risk_tier="low")
def get_user_details(ctx: Ctx, args: UserArgs) -> dict[str, Any]:
    """The authenticated user's profile: address, payment methods, order ids."""
    if args.user_id != session_user(ctx):
        raise RecordError("only the authenticated user's own profile can be read")
    return ctx.deps.get_user(args.user_id)


@tool("retail.get_order_details", side_effect=False, risk_tier="low")
def get_order_details(ctx: Ctx, args: OrderArgs) -> dict[str, Any]:
    """The status and details of one of the authenticated user's orders."""
    return own_order(ctx, args.order_id)


@tool("retail.get_product_details", side_effect=False, risk_tier="low")
def get_product_details(ctx: Ctx, args: ProductArgs) -> dict[str, Any]:
    """A product type with all its variant items (options, availability, price)."""
    session_user(ctx)
    return ctx.deps.get_product(args.product_id)


@tool("retail.get_item_details", side_effect=False, risk_tier="low")
def get_item_details(ctx: Ctx, args: ItemArgs) -> dict[str, Any]:
    """One variant item (options, availability, price)."""
    session_user(ctx)
    return ctx.deps.get_item(args.item_id)


@tool("retail.list_all_product_types", side_effect=False, risk_tier="low")
def list_all_product_types(ctx: Ctx, args: NoArgs) -> dict[str, str]:
    """The name and product id of each of the 50 product types."""
    session_user(ctx)
    return ctx.deps.product_types()


@tool("retail.calculate", side_effect=False, risk_tier="low")
def calculate_tool(ctx: Ctx, args: CalculateArgs) -> str:
    """Evaluate an arithmetic expression (+, -, *, /, parentheses), rounded to cents."""
    return calculate(args.expression)


# -- changes --------------------------------------------------------------------------
@tool("retail.cancel_pending_order", target="order_id", risk_tier="high")
def cancel_pending_order(ctx: Ctx, args: CancelArgs) -> dict[str, Any]:
    """Cancel a pending order; its payments are refunded (gift cards at once, others in 5-7 business days)."""
    _change_order(ctx, args.order_id)
    return ctx.deps.cancel_pending_order(ctx.idempotency_key, args.order_id, args.reason)


@tool("retail.modify_pending_order_address", target="order_id", risk_tier="medium")
def modify_pending_order_address(ctx: Ctx, args: OrderAddressArgs) -> dict[str, Any]:
    """Change the shipping address of a pending order."""
    _change_order(ctx, args.order_id)
    return ctx.deps.modify_pending_order_address(ctx.idempotency_key, args.order_id, args.address())


@tool("retail.modify_pending_order_payment", target="order_id", risk_tier="high")
def modify_pending_order_payment(ctx: Ctx, args: PaymentArgs) -> dict[str, Any]:
    """Pay a pending order with another of the user's payment methods; the original is refunded."""
    _change_order(ctx, args.order_id)
    return ctx.deps.modify_pending_order_payment(ctx.idempotency_key, args.order_id, args.payment_method_id)


@tool("retail.modify_pending_order_items", target="order_id", risk_tier="high")
def modify_pending_order_items(ctx: Ctx, args: SwapArgs) -> dict[str, Any]:
    """Swap items of a pending order for other variants of the same products (once per order)."""
    _change_order(ctx, args.order_id)
    return ctx.deps.modify_pending_order_items(ctx.idempotency_key, args.order_id, args.item_ids, args.new_item_ids,
                                               args.payment_method_id)  # fmt: skip


@tool("retail.return_delivered_order_items", target="order_id", risk_tier="high")
def return_delivered_order_items(ctx: Ctx, args: ReturnArgs) -> dict[str, Any]:
    """Request the return of items of a delivered order; the refund goes to the original method or a gift card."""
    _change_order(ctx, args.order_id)
    return ctx.deps.return_delivered_order_items(ctx.idempotency_key, args.order_id, args.item_ids, args.payment_method_id)


@tool("retail.exchange_delivered_order_items", target="order_id", risk_tier="high")
def exchange_delivered_order_items(ctx: Ctx, args: SwapArgs) -> dict[str, Any]:
    """Request the exchange of items of a delivered order for other variants of the same products (once per order)."""
    _change_order(ctx, args.order_id)
    return ctx.deps.exchange_delivered_order_items(ctx.idempotency_key, args.order_id, args.item_ids, args.new_item_ids,
                                                   args.payment_method_id)  # fmt: skip


@tool("retail.modify_user_address", target="user_id", risk_tier="medium")
def modify_user_address(ctx: Ctx, args: UserAddressArgs) -> dict[str, Any]:
    """Change the authenticated user's default address."""
    ctx.check_credential(args.user_id)
    if args.user_id != session_user(ctx):
        raise RecordError("only the authenticated user's own address can be changed")
    confirmed(ctx, args.user_id)
    return ctx.deps.modify_user_address(ctx.idempotency_key, args.user_id, args.address())


@tool("retail.transfer_to_human_agents", risk_tier="low")
def transfer_to_human_agents(ctx: Ctx, args: TransferArgs) -> str:
    """Hand the conversation to a human agent, with a summary of the customer's issue."""
    return ctx.deps.transfer_to_human_agents(ctx.idempotency_key, args.summary)


# -- compensation (not offered to planners) ----------------------------------------------
class RevertArgs(Args):
    change_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


@tool("retail.revert_change", target="change_id", risk_tier="high")
def revert_change(ctx: Ctx, args: RevertArgs) -> dict[str, Any]:
    """Compensate an earlier change (by its idempotency key): its records return to their before-image."""
    ctx.check_credential(args.change_id)
    return ctx.deps.revert(ctx.idempotency_key, args.change_id)


def _revert_args(args: dict[str, Any], output: Any, key: str) -> dict[str, Any]:
    return {"change_id": key}  # the store keeps every change under the idempotency key of its call


def _undone_by_revert(t: Tool) -> Tool:
    """Every change the store records can be reverted by `retail.revert_change`; a transfer cannot."""
    if not t.side_effect or t is transfer_to_human_agents:
        return t
    return dataclasses.replace(t, compensate=(revert_change.name, _revert_args))


PLANNER_TOOLS = [_undone_by_revert(t) for t in (
    find_user_id_by_email, find_user_id_by_name_zip, get_user_details, get_order_details, get_product_details,
    get_item_details, list_all_product_types, calculate_tool, cancel_pending_order, modify_pending_order_address,
    modify_pending_order_payment, modify_pending_order_items, return_delivered_order_items, exchange_delivered_order_items,
    modify_user_address, transfer_to_human_agents,
)]  # fmt: skip
TOOLS = [*PLANNER_TOOLS, revert_change]
