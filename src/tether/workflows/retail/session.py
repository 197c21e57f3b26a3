"""What the executor knows about the conversation, and the facts it hands the gate.

Everything here comes from the results of calls the run made (the system of
record's answers), never from the planner: the authenticated user is the
output of a successful identity lookup, an order's owner and status are those
of its last read (or of the change that returned it). The executor computes
the facts for each proposed call from this; policies test them as
`facts.NAME` and the tools read them as `ctx.facts`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

IDENTITY = ("retail.find_user_id_by_email", "retail.find_user_id_by_name_zip")
# Usable before authentication (policy.md: the lookup itself, and a hand-off to a human).
NO_AUTH = (*IDENTITY, "retail.calculate", "retail.transfer_to_human_agents")
ORDER_CHANGES = (
    "retail.cancel_pending_order", "retail.modify_pending_order_address", "retail.modify_pending_order_payment",
    "retail.modify_pending_order_items", "retail.return_delivered_order_items", "retail.exchange_delivered_order_items",
)  # fmt: skip
CHANGES = (*ORDER_CHANGES, "retail.modify_user_address")


class Session(BaseModel):
    user: str | None = None  # the authenticated user id
    profile: dict[str, Any] | None = None  # the user's details as last read
    orders: dict[str, dict[str, Any]] = {}  # order id -> the order as last seen

    def facts(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """Every key is always present (None when unknown), so a rule never silently skips."""
        order = self.orders.get(args["order_id"]) if "order_id" in args else None
        target = order["user_id"] if order else args.get("user_id")
        paid = order["payment_history"][0] if order and order["payment_history"] else None
        return {
            "authenticated": self.user is not None,
            "user": self.user,
            "target_user": target,
            "order_checked": order is not None,
            "order_status": order["status"] if order else None,
            "order_paid": paid["amount"] if paid else None,
            "payment_method": self._method(args.get("payment_method_id"), order),
        }

    def _method(self, method_id: str | None, order: dict[str, Any] | None) -> dict[str, Any]:
        """The payment method a call names: its kind and owner as far as this run has seen them."""
        fact: dict[str, Any] = {"id": method_id, "kind": None, "owner": None, "original": None, "balance": None}
        if method_id is None:
            return fact
        if order is not None and order["payment_history"]:
            fact["original"] = order["payment_history"][0]["payment_method_id"] == method_id
            if any(p["payment_method_id"] == method_id for p in order["payment_history"]):
                fact["owner"] = order["user_id"]
        known = (self.profile or {}).get("payment_methods", {}).get(method_id)
        if known is not None:
            fact.update(kind=known["source"], owner=self.profile["user_id"] if self.profile else None,
                        balance=known.get("balance"))  # fmt: skip
        return fact

    def observe(self, tool: str, args: dict[str, Any], ok: bool, output: Any) -> None:
        if not ok:
            return
        if tool in IDENTITY and self.user is None and isinstance(output, str):
            self.user = output  # one user per conversation: a later lookup never switches it
        elif tool in ("retail.get_user_details", "retail.modify_user_address") and isinstance(output, dict):
            if output.get("user_id") == self.user:
                self.profile = output
        elif isinstance(output, dict) and "order_id" in output and "status" in output:
            self.orders[output["order_id"]] = output
