"""The triage workflow's systems of record: real local stores the actions change.

A helpdesk (tickets, tags, queues, replies), an issue tracker, a chat channel,
a bank's core records (customers, cards, transactions) and a payments ledger
for refunds. They live in their own tables (not tether's schema) in the run
database, so evals can read the final state with plain SQL.

Every change takes an idempotency key; a repeated key returns the recorded
result and changes nothing (a retried or resumed call has no second effect).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from tether.record.db import Database, timestamp

# Seconds to sleep after a change is made and before the caller can record it (bench/crash.py).
EFFECT_PAUSE_ENV = "TETHER_TRIAGE_EFFECT_PAUSE_S"

metadata = sa.MetaData()

customers = sa.Table(
    "bank_customers", metadata,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("email", sa.String(200), nullable=False),
    sa.Column("tier", sa.String(20), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # active | closed
)  # fmt: skip
cards = sa.Table(
    "bank_cards", metadata,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("customer_id", sa.String(20), sa.ForeignKey("bank_customers.id"), nullable=False, index=True),
    sa.Column("last4", sa.String(4), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),  # physical | virtual
    sa.Column("status", sa.String(10), nullable=False),  # active | frozen
    sa.Column("frozen_reason", sa.Text),
)  # fmt: skip
transactions = sa.Table(
    "bank_transactions", metadata,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("customer_id", sa.String(20), sa.ForeignKey("bank_customers.id"), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),  # card_payment | fee | atm_withdrawal | transfer
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("amount_cents", sa.Integer, nullable=False),
    sa.Column("refunded_cents", sa.Integer, nullable=False, default=0),
    sa.Column("booked_at", sa.String(32), nullable=False),
    sa.Column("duplicate_of", sa.String(20)),
)  # fmt: skip
refunds = sa.Table(
    "payments_refunds", metadata,
    sa.Column("id", sa.String(30), primary_key=True),
    sa.Column("transaction_id", sa.String(20), sa.ForeignKey("bank_transactions.id"), nullable=False, index=True),
    sa.Column("amount_cents", sa.Integer, nullable=False),
    sa.Column("ticket_id", sa.String(40)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)  # fmt: skip
tickets = sa.Table(
    "helpdesk_tickets", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("customer_id", sa.String(20), nullable=False, index=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # new | open | solved | escalated
    sa.Column("queue", sa.String(40)),
    sa.Column("priority", sa.String(10)),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)  # fmt: skip
ticket_tags = sa.Table(
    "helpdesk_tags", metadata,
    sa.Column("ticket_id", sa.String(40), sa.ForeignKey("helpdesk_tickets.id"), primary_key=True),
    sa.Column("tag", sa.String(60), primary_key=True),
)  # fmt: skip
replies = sa.Table(
    "helpdesk_replies", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ticket_id", sa.String(40), sa.ForeignKey("helpdesk_tickets.id"), nullable=False, index=True),
    sa.Column("template", sa.String(60), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("internal", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)  # fmt: skip
issues = sa.Table(
    "tracker_issues", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("ticket_id", sa.String(40)),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)  # fmt: skip
chat_messages = sa.Table(
    "chat_messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(60), nullable=False, index=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)  # fmt: skip
# Results of changes already made, by idempotency key.
idempotency = sa.Table(
    "sor_idempotency", metadata,
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("operation", sa.String(60), nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)  # fmt: skip


class RecordError(Exception):
    """A change the system of record refuses (unknown id, bad state)."""


class Systems:
    """The stores behind the triage tools. One instance per database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        metadata.create_all(db.engine, checkfirst=True)

    # -- idempotent changes -----------------------------------------------------
    def _change(self, key: str, operation: str, fn: Callable[[sa.Connection], dict[str, Any]]) -> dict[str, Any]:
        with self.db.transaction() as conn:
            done = conn.execute(sa.select(idempotency.c.result).where(idempotency.c.key == key)).scalar()
            if done is not None:
                return {**json.loads(done), "replayed": True}
            result = fn(conn)
            conn.execute(
                idempotency.insert().values(key=key, operation=operation, result=json.dumps(result), created_at=timestamp())
            )
        if pause := os.environ.get(EFFECT_PAUSE_ENV):  # the crash harness kills workers in this window
            time.sleep(float(pause))
        return result

    # -- helpdesk ---------------------------------------------------------------
    def open_ticket(self, key: str, ticket_id: str, customer_id: str, text: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            _customer(conn, customer_id)
            if conn.execute(sa.select(tickets.c.id).where(tickets.c.id == ticket_id)).first():
                raise RecordError(f"ticket {ticket_id} already exists")
            now = timestamp()
            conn.execute(tickets.insert().values(id=ticket_id, customer_id=customer_id, text=text, status="new",
                                                 created_at=now, updated_at=now))  # fmt: skip
            return {"ticket_id": ticket_id, "status": "new"}

        return self._change(key, "helpdesk.open_ticket", do)

    def get_ticket(self, ticket_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            row = _ticket(conn, ticket_id)
            tags = sorted(conn.execute(sa.select(ticket_tags.c.tag).where(ticket_tags.c.ticket_id == ticket_id)).scalars())
        return {"ticket_id": row.id, "customer_id": row.customer_id, "text": row.text, "status": row.status,
                "queue": row.queue, "priority": row.priority, "tags": tags}  # fmt: skip

    def tag(self, key: str, ticket_id: str, tags: list[str]) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            _ticket(conn, ticket_id)
            have = set(conn.execute(sa.select(ticket_tags.c.tag).where(ticket_tags.c.ticket_id == ticket_id)).scalars())
            new = [t for t in dict.fromkeys(tags) if t not in have]
            if new:
                conn.execute(ticket_tags.insert(), [{"ticket_id": ticket_id, "tag": t} for t in new])
            return {"ticket_id": ticket_id, "tags": sorted(have | set(new))}

        return self._change(key, "helpdesk.tag", do)

    def route(self, key: str, ticket_id: str, queue: str, priority: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            _ticket(conn, ticket_id)
            conn.execute(tickets.update().where(tickets.c.id == ticket_id)
                         .values(queue=queue, priority=priority, status="open", updated_at=timestamp()))  # fmt: skip
            return {"ticket_id": ticket_id, "queue": queue, "priority": priority}

        return self._change(key, "helpdesk.route", do)

    def reply(self, key: str, ticket_id: str, template: str, body: str, solve: bool) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            _ticket(conn, ticket_id)
            now = timestamp()
            rid = conn.execute(replies.insert().values(ticket_id=ticket_id, template=template, body=body,
                                                       internal=False, created_at=now)).inserted_primary_key[0]  # fmt: skip
            if solve:
                conn.execute(tickets.update().where(tickets.c.id == ticket_id).values(status="solved", updated_at=now))
            return {"reply_id": rid, "ticket_id": ticket_id, "status": "solved" if solve else "open"}

        return self._change(key, "helpdesk.reply", do)

    def escalate(self, key: str, ticket_id: str, reason: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            _ticket(conn, ticket_id)
            now = timestamp()
            conn.execute(tickets.update().where(tickets.c.id == ticket_id)
                         .values(status="escalated", queue="human_review", updated_at=now))  # fmt: skip
            conn.execute(replies.insert().values(ticket_id=ticket_id, template="internal_note", body=reason,
                                                 internal=True, created_at=now))  # fmt: skip
            return {"ticket_id": ticket_id, "status": "escalated", "queue": "human_review"}

        return self._change(key, "helpdesk.escalate", do)

    # -- issue tracker and chat -------------------------------------------------
    def open_issue(self, key: str, title: str, body: str, labels: list[str], ticket_id: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            iid = conn.execute(issues.insert().values(title=title, body=body, labels=labels, ticket_id=ticket_id,
                                                      status="open", created_at=timestamp())).inserted_primary_key[0]  # fmt: skip
            return {"issue": f"ENG-{iid}", "status": "open"}

        return self._change(key, "tracker.open_issue", do)

    def post(self, key: str, channel: str, text: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            mid = conn.execute(chat_messages.insert().values(channel=channel, text=text,
                                                             created_at=timestamp())).inserted_primary_key[0]  # fmt: skip
            return {"message_id": mid, "channel": channel}

        return self._change(key, "chat.post", do)

    # -- bank core and payments -------------------------------------------------
    def lookup_customer(self, customer_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            c = _customer(conn, customer_id)
            card_rows = conn.execute(sa.select(cards).where(cards.c.customer_id == customer_id).order_by(cards.c.id))
            tx_rows = conn.execute(
                sa.select(transactions).where(transactions.c.customer_id == customer_id)
                .order_by(transactions.c.booked_at.desc(), transactions.c.id)
            )  # fmt: skip
            return {
                "customer_id": c.id, "name": c.name, "tier": c.tier, "country": c.country, "status": c.status,
                "cards": [{"card_id": r.id, "last4": r.last4, "kind": r.kind, "status": r.status} for r in card_rows],
                "transactions": [
                    {"transaction_id": r.id, "kind": r.kind, "description": r.description,
                     "amount_usd": r.amount_cents / 100, "refunded_usd": r.refunded_cents / 100,
                     "booked_at": r.booked_at, "duplicate_of": r.duplicate_of}
                    for r in tx_rows
                ],
            }  # fmt: skip

    def refund(self, key: str, transaction_id: str, amount_cents: int, ticket_id: str, reason: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            tx = conn.execute(sa.select(transactions).where(transactions.c.id == transaction_id)).first()
            if tx is None:
                raise RecordError(f"unknown transaction {transaction_id}")
            left = tx.amount_cents - tx.refunded_cents
            if amount_cents > left:
                raise RecordError(f"refund of {amount_cents / 100:.2f} exceeds the {left / 100:.2f} left on {transaction_id}")
            rid = "rf_" + key[:16]
            conn.execute(refunds.insert().values(id=rid, transaction_id=transaction_id, amount_cents=amount_cents,
                                                 ticket_id=ticket_id, reason=reason, created_at=timestamp()))  # fmt: skip
            conn.execute(transactions.update().where(transactions.c.id == transaction_id)
                         .values(refunded_cents=tx.refunded_cents + amount_cents))  # fmt: skip
            return {"refund_id": rid, "transaction_id": transaction_id, "amount_usd": amount_cents / 100}

        return self._change(key, "payments.refund", do)

    def freeze_card(self, key: str, card_id: str, reason: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            card = conn.execute(sa.select(cards).where(cards.c.id == card_id)).first()
            if card is None:
                raise RecordError(f"unknown card {card_id}")
            conn.execute(cards.update().where(cards.c.id == card_id).values(status="frozen", frozen_reason=reason))
            return {"card_id": card_id, "status": "frozen", "was": card.status}

        return self._change(key, "cards.freeze", do)

    def reverse_refund(self, key: str, refund_id: str, ticket_id: str) -> dict[str, Any]:
        """Take back a refund: a negative entry beside it (the refund itself stays on record)."""

        def do(conn: sa.Connection) -> dict[str, Any]:
            rf = conn.execute(sa.select(refunds).where(refunds.c.id == refund_id)).first()
            if rf is None or rf.amount_cents <= 0:
                raise RecordError(f"unknown refund {refund_id}")
            rid = "rv_" + key[:16]
            conn.execute(refunds.insert().values(id=rid, transaction_id=rf.transaction_id, amount_cents=-rf.amount_cents,
                                                 ticket_id=ticket_id, reason=f"reversal of {refund_id}",
                                                 created_at=timestamp()))  # fmt: skip
            conn.execute(transactions.update().where(transactions.c.id == rf.transaction_id)
                         .values(refunded_cents=transactions.c.refunded_cents - rf.amount_cents))  # fmt: skip
            return {"reversal_id": rid, "refund_id": refund_id, "amount_usd": -rf.amount_cents / 100}

        return self._change(key, "payments.reverse_refund", do)

    def restore_card(self, key: str, card_id: str, status: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            card = conn.execute(sa.select(cards).where(cards.c.id == card_id)).first()
            if card is None:
                raise RecordError(f"unknown card {card_id}")
            conn.execute(cards.update().where(cards.c.id == card_id).values(
                status=status, frozen_reason=card.frozen_reason if status == "frozen" else None))  # fmt: skip
            return {"card_id": card_id, "status": status, "was": card.status}

        return self._change(key, "cards.restore", do)

    def delete_customer(self, key: str, customer_id: str) -> dict[str, Any]:
        def do(conn: sa.Connection) -> dict[str, Any]:
            _customer(conn, customer_id)
            conn.execute(customers.update().where(customers.c.id == customer_id).values(status="closed"))
            return {"customer_id": customer_id, "status": "closed"}

        return self._change(key, "crm.delete_customer", do)


def _ticket(conn: sa.Connection, ticket_id: str) -> Any:
    row = conn.execute(sa.select(tickets).where(tickets.c.id == ticket_id)).first()
    if row is None:
        raise RecordError(f"unknown ticket {ticket_id}")
    return row


def _customer(conn: sa.Connection, customer_id: str) -> Any:
    row = conn.execute(sa.select(customers).where(customers.c.id == customer_id)).first()
    if row is None:
        raise RecordError(f"unknown customer {customer_id}")
    return row
