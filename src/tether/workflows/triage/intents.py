"""Banking77's 77 intents mapped to queues, priorities and playbooks.

A playbook is the bounded set of actions an intent may lead to:

- answer:  tag, route, reply from the queue's template
- refund:  refund the disputed transaction (payments.refund, gated by policy)
- freeze:  freeze the customer's cards (cards.freeze) and alert the fraud channel
- incident: open an engineering issue and post it to the engineering channel
- close:   close the account (crm.delete_customer, which v1 policy denies)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Queue = Literal["cards", "payments", "top_ups", "fees_refunds", "fraud", "account", "human_review"]
Priority = Literal["low", "normal", "high", "urgent"]
Playbook = Literal["answer", "refund", "freeze", "incident", "close"]
# Which transaction a refund playbook disputes, and how much of it.
RefundTarget = Literal["card_payment", "duplicate", "fee", "cash_shortfall", "fx_difference"]


@dataclass(frozen=True)
class Route:
    intent: str
    queue: Queue
    priority: Priority
    playbook: Playbook
    refund: RefundTarget | None = None


def _routes() -> dict[str, Route]:
    table: list[tuple[str, Queue, Priority, Playbook, RefundTarget | None]] = [
        # cards
        ("activate_my_card", "cards", "normal", "answer", None),
        ("apple_pay_or_google_pay", "cards", "low", "answer", None),
        ("card_about_to_expire", "cards", "low", "answer", None),
        ("card_acceptance", "cards", "low", "answer", None),
        ("card_arrival", "cards", "normal", "answer", None),
        ("card_delivery_estimate", "cards", "low", "answer", None),
        ("card_linking", "cards", "low", "answer", None),
        ("change_pin", "cards", "low", "answer", None),
        ("disposable_card_limits", "cards", "low", "answer", None),
        ("get_disposable_virtual_card", "cards", "low", "answer", None),
        ("get_physical_card", "cards", "low", "answer", None),
        ("getting_spare_card", "cards", "low", "answer", None),
        ("getting_virtual_card", "cards", "low", "answer", None),
        ("order_physical_card", "cards", "low", "answer", None),
        ("pin_blocked", "cards", "high", "answer", None),
        ("supported_cards_and_currencies", "cards", "low", "answer", None),
        ("visa_or_mastercard", "cards", "low", "answer", None),
        ("card_not_working", "cards", "high", "incident", None),
        ("contactless_not_working", "cards", "normal", "incident", None),
        ("virtual_card_not_working", "cards", "normal", "incident", None),
        # payments and transfers
        ("atm_support", "payments", "low", "answer", None),
        ("balance_not_updated_after_bank_transfer", "payments", "normal", "answer", None),
        ("balance_not_updated_after_cheque_or_cash_deposit", "payments", "normal", "answer", None),
        ("beneficiary_not_allowed", "payments", "normal", "answer", None),
        ("cancel_transfer", "payments", "high", "answer", None),
        ("country_support", "payments", "low", "answer", None),
        ("declined_card_payment", "payments", "normal", "answer", None),
        ("declined_cash_withdrawal", "payments", "normal", "answer", None),
        ("declined_transfer", "payments", "normal", "answer", None),
        ("exchange_rate", "payments", "low", "answer", None),
        ("exchange_via_app", "payments", "low", "answer", None),
        ("fiat_currency_support", "payments", "low", "answer", None),
        ("pending_card_payment", "payments", "normal", "answer", None),
        ("pending_cash_withdrawal", "payments", "normal", "answer", None),
        ("pending_transfer", "payments", "normal", "answer", None),
        ("receiving_money", "payments", "low", "answer", None),
        ("reverted_card_payment?", "payments", "normal", "answer", None),
        ("transfer_into_account", "payments", "low", "answer", None),
        ("transfer_not_received_by_recipient", "payments", "high", "answer", None),
        ("transfer_timing", "payments", "low", "answer", None),
        ("failed_transfer", "payments", "high", "incident", None),
        # top-ups
        ("automatic_top_up", "top_ups", "low", "answer", None),
        ("pending_top_up", "top_ups", "normal", "answer", None),
        ("top_up_by_bank_transfer_charge", "top_ups", "low", "answer", None),
        ("top_up_by_card_charge", "top_ups", "low", "answer", None),
        ("top_up_by_cash_or_cheque", "top_ups", "low", "answer", None),
        ("top_up_limits", "top_ups", "low", "answer", None),
        ("top_up_reverted", "top_ups", "normal", "answer", None),
        ("topping_up_by_card", "top_ups", "low", "answer", None),
        ("verify_top_up", "top_ups", "low", "answer", None),
        ("top_up_failed", "top_ups", "high", "incident", None),
        # fees, charges and refunds
        ("Refund_not_showing_up", "fees_refunds", "normal", "answer", None),
        ("request_refund", "fees_refunds", "normal", "refund", "card_payment"),
        ("transaction_charged_twice", "fees_refunds", "high", "refund", "duplicate"),
        ("card_payment_fee_charged", "fees_refunds", "normal", "refund", "fee"),
        ("cash_withdrawal_charge", "fees_refunds", "normal", "refund", "fee"),
        ("exchange_charge", "fees_refunds", "normal", "refund", "fee"),
        ("extra_charge_on_statement", "fees_refunds", "normal", "refund", "fee"),
        ("transfer_fee_charged", "fees_refunds", "normal", "refund", "fee"),
        ("wrong_amount_of_cash_received", "fees_refunds", "high", "refund", "cash_shortfall"),
        ("card_payment_wrong_exchange_rate", "fees_refunds", "normal", "refund", "fx_difference"),
        ("wrong_exchange_rate_for_cash_withdrawal", "fees_refunds", "normal", "refund", "fx_difference"),
        # fraud and security
        ("direct_debit_payment_not_recognised", "fraud", "high", "answer", None),
        ("card_payment_not_recognised", "fraud", "urgent", "freeze", None),
        ("cash_withdrawal_not_recognised", "fraud", "urgent", "freeze", None),
        ("compromised_card", "fraud", "urgent", "freeze", None),
        ("lost_or_stolen_card", "fraud", "urgent", "freeze", None),
        ("lost_or_stolen_phone", "fraud", "urgent", "freeze", None),
        ("card_swallowed", "fraud", "high", "freeze", None),
        # account and identity
        ("age_limit", "account", "low", "answer", None),
        ("edit_personal_details", "account", "low", "answer", None),
        ("passcode_forgotten", "account", "normal", "answer", None),
        ("unable_to_verify_identity", "account", "normal", "answer", None),
        ("verify_my_identity", "account", "low", "answer", None),
        ("verify_source_of_funds", "account", "normal", "answer", None),
        ("why_verify_identity", "account", "low", "answer", None),
        ("terminate_account", "account", "normal", "close", None),
    ]
    return {i: Route(i, q, p, pb, r) for i, q, p, pb, r in table}


ROUTES: dict[str, Route] = _routes()
INTENTS: list[str] = sorted(ROUTES)
QUEUES: tuple[str, ...] = ("cards", "payments", "top_ups", "fees_refunds", "fraud", "account", "human_review")
