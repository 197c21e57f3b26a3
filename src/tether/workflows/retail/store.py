"""The retail system of record: τ²-bench's users, orders and products in SQLite tables.

Loaded once from the packaged `db.json.gz` into the run database (its own
`retail_*` tables, not tether's schema). Money is held in integer cents, so a
price difference or a gift-card balance never drifts; records are read back in
τ²'s JSON shape (prices as dollars).

Every change runs in one transaction under the caller's idempotency key: a
repeated key returns the recorded result and changes nothing. Each change keeps
the before- and after-image of the records it touched, so it can be reverted
(the compensation of a cancellation, modification, return or exchange) as long
as nothing changed those records since.
"""

from __future__ import annotations

import ast
import gzip
import json
import operator
import unicodedata
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tether.record.db import Database, timestamp

DATA = Path(__file__).with_name("data")
DB_FILE = DATA / "db.json.gz"
CANCEL_REASONS = ("no longer needed", "ordered by mistake")
# τ²'s status after a pending order's items are modified (policy.md spells it 'pending (items modifed)').
ITEMS_MODIFIED = "pending (item modified)"

metadata = sa.MetaData()
users = sa.Table(
    "retail_users", metadata,
    sa.Column("user_id", sa.String(80), primary_key=True),
    sa.Column("first_name", sa.String(100), nullable=False),
    sa.Column("last_name", sa.String(100), nullable=False),
    sa.Column("email", sa.String(200), nullable=False, index=True),
    sa.Column("address", sa.JSON, nullable=False),
    sa.Column("order_ids", sa.JSON, nullable=False),
)  # fmt: skip
payment_methods = sa.Table(
    "retail_payment_methods", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("user_id", sa.String(80), sa.ForeignKey("retail_users.user_id"), nullable=False, index=True),
    sa.Column("source", sa.String(20), nullable=False),  # gift_card | credit_card | paypal
    sa.Column("brand", sa.String(40)),
    sa.Column("last_four", sa.String(4)),
    sa.Column("balance_cents", sa.Integer),  # gift cards only
)  # fmt: skip
products = sa.Table(
    "retail_products", metadata,
    sa.Column("product_id", sa.String(20), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
)  # fmt: skip
variants = sa.Table(
    "retail_variants", metadata,
    sa.Column("item_id", sa.String(20), primary_key=True),
    sa.Column("product_id", sa.String(20), sa.ForeignKey("retail_products.product_id"), nullable=False, index=True),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("available", sa.Boolean, nullable=False),
    sa.Column("price_cents", sa.Integer, nullable=False),
)  # fmt: skip
# Seller-provided catalog text. Not part of τ²'s data model (empty there) and not part
# of the compared state: the place where untrusted content reaches the agent.
product_notes = sa.Table(
    "retail_product_notes", metadata,
    sa.Column("product_id", sa.String(20), sa.ForeignKey("retail_products.product_id"), primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
)  # fmt: skip
orders = sa.Table(
    "retail_orders", metadata,
    sa.Column("order_id", sa.String(20), primary_key=True),
    sa.Column("user_id", sa.String(80), sa.ForeignKey("retail_users.user_id"), nullable=False, index=True),
    sa.Column("address", sa.JSON, nullable=False),
    sa.Column("status", sa.String(40), nullable=False),
    sa.Column("fulfillments", sa.JSON, nullable=False),
    sa.Column("extra", sa.JSON, nullable=False),  # cancel_reason, exchange_*, return_* once set
)  # fmt: skip
order_items = sa.Table(
    "retail_order_items", metadata,
    sa.Column("order_id", sa.String(20), sa.ForeignKey("retail_orders.order_id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String(20), nullable=False),
    sa.Column("product_id", sa.String(20), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("price_cents", sa.Integer, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
)  # fmt: skip
order_payments = sa.Table(
    "retail_order_payments", metadata,
    sa.Column("order_id", sa.String(20), sa.ForeignKey("retail_orders.order_id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("transaction_type", sa.String(10), nullable=False),  # payment | refund
    sa.Column("amount_cents", sa.Integer, nullable=False),
    sa.Column("payment_method_id", sa.String(40), nullable=False),
)  # fmt: skip
changes = sa.Table(
    "retail_changes", metadata,
    sa.Column("key", sa.String(80), primary_key=True),  # the idempotency key of the call that made it
    sa.Column("operation", sa.String(60), nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("before", sa.JSON, nullable=False),  # {"orders": {id: record}, "users": {id: record}}
    sa.Column("after", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("reverted_by", sa.String(80)),
)  # fmt: skip
transfers = sa.Table(
    "retail_transfers", metadata,
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)  # fmt: skip
STATE_TABLES = (users, payment_methods, products, variants, orders, order_items, order_payments)


class RecordError(Exception):
    """A change or lookup the store refuses (unknown id, wrong state): τ²'s ValueError."""


def _cents(dollars: float) -> int:
    return round(dollars * 100)


def _dollars(cents: int) -> float:
    return round(cents / 100, 2)


def fold(text: str) -> str:
    """Case- and accent-insensitive form of a name or email, for the identity lookups."""
    decomposed = unicodedata.normalize("NFKD", text.strip())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@cache
def pristine() -> dict[str, Any]:
    """τ²'s db.json as shipped (parsed once per process)."""
    with gzip.open(DB_FILE, "rt", encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


class RetailStore:
    """The store behind the retail tools. One instance per database; seeds itself on first use."""

    def __init__(self, db: Database) -> None:
        self.db = db
        metadata.create_all(db.engine, checkfirst=True)
        with db.read() as conn:
            seeded = conn.execute(sa.select(users.c.user_id).limit(1)).first() is not None
        if not seeded:
            self.load(pristine())

    # -- loading ------------------------------------------------------------------
    def load(self, data: dict[str, Any]) -> None:
        """Put τ²'s JSON (users, orders, products) into the tables, replacing what is there."""
        u_rows, pm_rows, p_rows, v_rows, o_rows, i_rows, pay_rows = [], [], [], [], [], [], []
        for u in data["users"].values():
            u_rows.append({"user_id": u["user_id"], "first_name": u["name"]["first_name"], "last_name": u["name"]["last_name"],
                           "email": u["email"], "address": u["address"], "order_ids": list(u["orders"])})  # fmt: skip
            for pm in u["payment_methods"].values():
                pm_rows.append({"id": pm["id"], "user_id": u["user_id"], "source": pm["source"], "brand": pm.get("brand"),
                                "last_four": pm.get("last_four"),
                                "balance_cents": _cents(pm["balance"]) if "balance" in pm else None})  # fmt: skip
        for p in data["products"].values():
            p_rows.append({"product_id": p["product_id"], "name": p["name"]})
            for v in p["variants"].values():
                v_rows.append({"item_id": v["item_id"], "product_id": p["product_id"], "options": v["options"],
                               "available": bool(v["available"]), "price_cents": _cents(v["price"])})  # fmt: skip
        for o in data["orders"].values():
            o_rows.append(_order_row(o))
            i_rows += _item_rows(o)
            pay_rows += _payment_rows(o)
        with self.db.transaction() as conn:
            for t in reversed(STATE_TABLES):
                conn.execute(t.delete())
            for t, rows in ((users, u_rows), (payment_methods, pm_rows), (products, p_rows), (variants, v_rows),
                            (orders, o_rows), (order_items, i_rows), (order_payments, pay_rows)):  # fmt: skip
                if rows:
                    conn.execute(t.insert(), rows)

    # -- reads --------------------------------------------------------------------
    def find_user_by_email(self, email: str) -> str:
        with self.db.read() as conn:
            found = [r.user_id for r in conn.execute(sa.select(users.c.user_id, users.c.email)) if fold(r.email) == fold(email)]
        if len(found) != 1:
            raise RecordError("User not found")
        return found[0]

    def find_user_by_name_zip(self, first_name: str, last_name: str, zip_code: str) -> str:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(users.c.user_id, users.c.first_name, users.c.last_name, users.c.address))
            found = [r.user_id for r in rows if fold(r.first_name) == fold(first_name) and fold(r.last_name) == fold(last_name)
                     and r.address.get("zip") == zip_code.strip()]  # fmt: skip
        if len(found) != 1:
            raise RecordError("User not found")
        return found[0]

    def get_user(self, user_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return _user(conn, user_id)

    def get_order(self, order_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return _order(conn, order_id)

    def get_product(self, product_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            product = _product(conn, product_id)
            note = conn.execute(sa.select(product_notes.c.description).where(product_notes.c.product_id == product_id)).scalar()
        return {**product, "description": note} if note else product

    def get_item(self, item_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            row = conn.execute(sa.select(variants).where(variants.c.item_id == item_id)).first()
        if row is None:
            raise RecordError("Item not found")
        return _variant(row)

    def product_types(self) -> dict[str, str]:
        with self.db.read() as conn:
            return {r.name: r.product_id for r in conn.execute(sa.select(products).order_by(products.c.name))}

    def set_description(self, product_id: str, text: str) -> None:
        """Catalog content from a seller (the channel an injected instruction arrives by)."""
        with self.db.transaction() as conn:
            _product(conn, product_id)
            conn.execute(product_notes.delete().where(product_notes.c.product_id == product_id))
            conn.execute(product_notes.insert().values(product_id=product_id, description=text))

    # -- changes ------------------------------------------------------------------
    def _change(self, key: str, operation: str, fn: Callable[[sa.Connection, dict[str, Any]], Any]) -> Any:
        """Run `fn(conn, touched)` once per key; `touched` collects the before-images of changed records."""
        with self.db.transaction() as conn:
            done = conn.execute(sa.select(changes.c.result).where(changes.c.key == key)).first()
            if done is not None:
                return done.result
            touched: dict[str, dict[str, Any]] = {"orders": {}, "users": {}}
            result = fn(conn, touched)
            after = {"orders": {i: _order(conn, i) for i in touched["orders"]},
                     "users": {i: _user(conn, i) for i in touched["users"]}}  # fmt: skip
            conn.execute(changes.insert().values(key=key, operation=operation, result=result, before=touched, after=after,
                                                 created_at=timestamp()))  # fmt: skip
            return result

    def cancel_pending_order(self, key: str, order_id: str, reason: str) -> dict[str, Any]:
        def do(conn: sa.Connection, touched: dict[str, Any]) -> dict[str, Any]:
            order = _touch_order(conn, touched, order_id)
            if order["status"] != "pending":
                raise RecordError("Non-pending order cannot be cancelled")
            if reason not in CANCEL_REASONS:
                raise RecordError("Invalid reason")
            user = _touch_user(conn, touched, order["user_id"])
            for p in list(order["payment_history"]):
                order["payment_history"].append({"transaction_type": "refund", "amount": p["amount"],
                                                 "payment_method_id": p["payment_method_id"]})  # fmt: skip
                pm = _method(user, p["payment_method_id"])
                if pm["source"] == "gift_card":  # refunded to a gift card at once; other methods in 5-7 days
                    pm["balance"] = _dollars(_cents(pm["balance"]) + _cents(p["amount"]))
            order["status"], order["cancel_reason"] = "cancelled", reason
            _put_user(conn, user)
            return _put_order(conn, order)

        return self._change(key, "cancel_pending_order", do)  # type: ignore[no-any-return]

    def modify_pending_order_address(self, key: str, order_id: str, address: dict[str, str]) -> dict[str, Any]:
        def do(conn: sa.Connection, touched: dict[str, Any]) -> dict[str, Any]:
            order = _touch_order(conn, touched, order_id)
            if order["status"] != "pending":  # stricter than τ²'s code: policy.md forbids it after items changed
                raise RecordError("Non-pending order cannot be modified")
            order["address"] = dict(address)
            return _put_order(conn, order)

        return self._change(key, "modify_pending_order_address", do)  # type: ignore[no-any-return]

    def modify_pending_order_payment(self, key: str, order_id: str, payment_method_id: str) -> dict[str, Any]:
        def do(conn: sa.Connection, touched: dict[str, Any]) -> dict[str, Any]:
            order = _touch_order(conn, touched, order_id)
            if order["status"] != "pending":
                raise RecordError("Non-pending order cannot be modified")
            user = _touch_user(conn, touched, order["user_id"])
            new = _method(user, payment_method_id)
            history = order["payment_history"]
            if len(history) != 1 or history[0]["transaction_type"] != "payment":
                raise RecordError("There should be exactly one payment for a pending order")
            old_id, amount = history[0]["payment_method_id"], _cents(history[0]["amount"])
            if old_id == payment_method_id:
                raise RecordError("The new payment method should be different from the current one")
            if new["source"] == "gift_card" and _cents(new["balance"]) < amount:
                raise RecordError("Insufficient gift card balance to pay for the order")
            history += [{"transaction_type": "payment", "amount": _dollars(amount), "payment_method_id": payment_method_id},
                        {"transaction_type": "refund", "amount": _dollars(amount), "payment_method_id": old_id}]  # fmt: skip
            if new["source"] == "gift_card":
                new["balance"] = _dollars(_cents(new["balance"]) - amount)
            old = _method(user, old_id)
            if old["source"] == "gift_card":
                old["balance"] = _dollars(_cents(old["balance"]) + amount)
            _put_user(conn, user)
            return _put_order(conn, order)

        return self._change(key, "modify_pending_order_payment", do)  # type: ignore[no-any-return]

    def modify_pending_order_items(
        self, key: str, order_id: str, item_ids: list[str], new_item_ids: list[str], payment_method_id: str
    ) -> dict[str, Any]:
        def do(conn: sa.Connection, touched: dict[str, Any]) -> dict[str, Any]:
            order = _touch_order(conn, touched, order_id)
            if order["status"] != "pending":
                raise RecordError("Non-pending order cannot be modified")
            diff, new_variants = _swap_plan(conn, order, item_ids, new_item_ids)
            user = _touch_user(conn, touched, order["user_id"])
            pm = _method(user, payment_method_id)
            if pm["source"] == "gift_card" and _cents(pm["balance"]) < diff:
                raise RecordError("Insufficient gift card balance to pay for the new item")
            order["payment_history"].append({"transaction_type": "payment" if diff > 0 else "refund",
                                             "amount": _dollars(abs(diff)), "payment_method_id": payment_method_id})  # fmt: skip
            if pm["source"] == "gift_card":
                pm["balance"] = _dollars(_cents(pm["balance"]) - diff)
            for old_id, variant in zip(item_ids, new_variants, strict=True):
                # Each item takes its own new variant's price (τ²'s code reuses the last one's: a bug not copied).
                item = next(i for i in order["items"] if i["item_id"] == old_id)
                item.update(item_id=variant["item_id"], price=variant["price"], options=variant["options"])
            order["status"] = ITEMS_MODIFIED
            _put_user(conn, user)
            return _put_order(conn, order)

        return self._change(key, "modify_pending_order_items", do)  # type: ignore[no-any-return]

    def return_delivered_order_items(self, key: str, order_id: str, item_ids: list[str], payment_method_id: str) -> dict[str, Any]:
        def do(conn: sa.Connection, touched: dict[str, Any]) -> dict[str, Any]:
            order = _touch_order(conn, touched, order_id)
            if order["status"] != "delivered":
                raise RecordError("Non-delivered order cannot be returned")
            pm = _method(_user(conn, order["user_id"]), payment_method_id)
            if pm["source"] != "gift_card" and payment_method_id != order["payment_history"][0]["payment_method_id"]:
                raise RecordError("Payment method should be the original payment method")
            _check_counts(order, item_ids)
            order.update(status="return requested", return_items=sorted(item_ids), return_payment_method_id=payment_method_id)
            return _put_order(conn, order)

        return self._change(key, "return_delivered_order_items", do)  # type: ignore[no-any-return]

    def exchange_delivered_order_items(
        self, key: str, order_id: str, item_ids: list[str], new_item_ids: list[str], payment_method_id: str
    ) -> dict[str, Any]:
        def do(conn: sa.Connection, touched: dict[str, Any]) -> dict[str, Any]:
            order = _touch_order(conn, touched, order_id)
            if order["status"] != "delivered":
                raise RecordError("Non-delivered order cannot be exchanged")
            diff, _ = _swap_plan(conn, order, item_ids, new_item_ids)
            pm = _method(_user(conn, order["user_id"]), payment_method_id)
            if pm["source"] == "gift_card" and _cents(pm["balance"]) < diff:
                raise RecordError("Insufficient gift card balance to pay for the price difference")
            order.update(status="exchange requested", exchange_items=sorted(item_ids), exchange_new_items=sorted(new_item_ids),
                         exchange_payment_method_id=payment_method_id, exchange_price_difference=_dollars(diff))  # fmt: skip
            return _put_order(conn, order)

        return self._change(key, "exchange_delivered_order_items", do)  # type: ignore[no-any-return]

    def modify_user_address(self, key: str, user_id: str, address: dict[str, str]) -> dict[str, Any]:
        def do(conn: sa.Connection, touched: dict[str, Any]) -> dict[str, Any]:
            user = _touch_user(conn, touched, user_id)
            user["address"] = dict(address)
            return _put_user(conn, user)

        return self._change(key, "modify_user_address", do)  # type: ignore[no-any-return]

    def transfer_to_human_agents(self, key: str, summary: str) -> str:
        def do(conn: sa.Connection, touched: dict[str, Any]) -> str:
            conn.execute(transfers.insert().values(key=key, summary=summary, created_at=timestamp()))
            return "Transfer successful"

        return self._change(key, "transfer_to_human_agents", do)  # type: ignore[no-any-return]

    # -- compensation -------------------------------------------------------------
    def revert(self, key: str, change_key: str) -> dict[str, Any]:
        """Undo the change made under `change_key`: its records go back to their before-images.

        Refused when a record changed since (a later change would be lost) or the change
        was already reverted. Idempotent under `key` like every other change."""

        def do(conn: sa.Connection, touched: dict[str, Any]) -> dict[str, Any]:
            row = conn.execute(sa.select(changes).where(changes.c.key == change_key)).first()
            if row is None:
                raise RecordError(f"no change was made under {change_key!r}")
            if row.reverted_by:
                raise RecordError(f"change {change_key!r} was already reverted")
            if row.operation in ("revert", "transfer_to_human_agents"):
                raise RecordError(f"a {row.operation} cannot be reverted")
            for kind, get, put in (("orders", _order, _put_order), ("users", _user, _put_user)):
                for record_id, after in row.after[kind].items():
                    if get(conn, record_id) != after:
                        raise RecordError(f"{kind[:-1]} {record_id} changed after {row.operation}; not reverted")
                    touched[kind][record_id] = after
                    put(conn, row.before[kind][record_id])
            conn.execute(changes.update().where(changes.c.key == change_key).values(reverted_by=key))
            return {"reverted": change_key, "operation": row.operation}

        return self._change(key, "revert", do)  # type: ignore[no-any-return]

    # -- the state evals compare -----------------------------------------------------
    def touched(self) -> dict[str, dict[str, Any]]:
        """The current records of every order and user a change ever touched (all changes go
        through `_change`, so nothing else can differ from the loaded data)."""
        with self.db.read() as conn:
            ids: dict[str, set[str]] = {"orders": set(), "users": set()}
            for (before,) in conn.execute(sa.select(changes.c.before)):
                for kind in ids:
                    ids[kind] |= set(before[kind])
            return {"orders": {i: _order(conn, i) for i in sorted(ids["orders"])},
                    "users": {i: _user(conn, i) for i in sorted(ids["users"])}, "products": {}}  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        """The whole state in τ²'s shape: {"users": {...}, "orders": {...}, "products": {...}}."""
        with self.db.read() as conn:
            pms: dict[str, dict[str, Any]] = {}
            for r in conn.execute(sa.select(payment_methods)):
                pms.setdefault(r.user_id, {})[r.id] = _pm(r)
            out_users = {r.user_id: _user_dict(r, pms.get(r.user_id, {})) for r in conn.execute(sa.select(users))}
            items: dict[str, list[Any]] = {}
            for r in conn.execute(sa.select(order_items).order_by(order_items.c.order_id, order_items.c.position)):
                items.setdefault(r.order_id, []).append(r)
            pays: dict[str, list[Any]] = {}
            for r in conn.execute(sa.select(order_payments).order_by(order_payments.c.order_id, order_payments.c.position)):
                pays.setdefault(r.order_id, []).append(r)
            out_orders = {r.order_id: _order_dict(r, items.get(r.order_id, []), pays.get(r.order_id, []))
                          for r in conn.execute(sa.select(orders))}  # fmt: skip
            vs: dict[str, dict[str, Any]] = {}
            for r in conn.execute(sa.select(variants)):
                vs.setdefault(r.product_id, {})[r.item_id] = _variant(r)
            out_products = {r.product_id: {"name": r.name, "product_id": r.product_id, "variants": vs.get(r.product_id, {})}
                            for r in conn.execute(sa.select(products))}  # fmt: skip
        return {"users": out_users, "orders": out_orders, "products": out_products}


def normalise(data: dict[str, Any]) -> dict[str, Any]:
    """τ²'s JSON in the exact shape `snapshot` reads back (money rounded through cents)."""
    out: dict[str, Any] = {"users": {}, "orders": {}, "products": {}}
    for uid, u in data["users"].items():
        pms = {k: {**pm, "balance": _dollars(_cents(pm["balance"]))} if "balance" in pm else dict(pm)
               for k, pm in u["payment_methods"].items()}  # fmt: skip
        out["users"][uid] = {**u, "payment_methods": pms}
    for oid, o in data["orders"].items():
        out["orders"][oid] = {**o, "items": [{**i, "price": _dollars(_cents(i["price"]))} for i in o["items"]],
                              "payment_history": [{**p, "amount": _dollars(_cents(p["amount"]))} for p in o["payment_history"]]}  # fmt: skip
    for pid, p in data["products"].items():
        out["products"][pid] = {**p, "variants": {k: {**v, "price": _dollars(_cents(v["price"]))} for k, v in p["variants"].items()}}
    return out


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The records of `after` that differ from `before`, per kind (records are never deleted here;
    `after` may hold only some records, like `RetailStore.touched`)."""
    return {kind: {k: v for k, v in after[kind].items() if before[kind].get(k) != v} for kind in ("users", "orders", "products")}


# -- row <-> record ---------------------------------------------------------------
_ORDER_KEYS = ("order_id", "user_id", "address", "items", "status", "fulfillments", "payment_history")


def _order_row(o: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in o.items() if k not in _ORDER_KEYS}
    return {"order_id": o["order_id"], "user_id": o["user_id"], "address": o["address"], "status": o["status"],
            "fulfillments": o["fulfillments"], "extra": extra}  # fmt: skip


def _item_rows(o: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"order_id": o["order_id"], "position": n, "item_id": i["item_id"], "product_id": i["product_id"],
             "name": i["name"], "price_cents": _cents(i["price"]), "options": i["options"]} for n, i in enumerate(o["items"])]  # fmt: skip


def _payment_rows(o: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"order_id": o["order_id"], "position": n, "transaction_type": p["transaction_type"],
             "amount_cents": _cents(p["amount"]), "payment_method_id": p["payment_method_id"]}
            for n, p in enumerate(o["payment_history"])]  # fmt: skip


def _order_dict(row: Any, items: list[Any], pays: list[Any]) -> dict[str, Any]:
    return {
        "order_id": row.order_id, "user_id": row.user_id, "address": row.address,
        "items": [{"name": i.name, "product_id": i.product_id, "item_id": i.item_id, "price": _dollars(i.price_cents),
                   "options": i.options} for i in items],
        "status": row.status, "fulfillments": row.fulfillments,
        "payment_history": [{"transaction_type": p.transaction_type, "amount": _dollars(p.amount_cents),
                             "payment_method_id": p.payment_method_id} for p in pays],
        **row.extra,
    }  # fmt: skip


def _pm(r: Any) -> dict[str, Any]:
    pm: dict[str, Any] = {"source": r.source, "id": r.id}
    if r.brand is not None:
        pm["brand"] = r.brand
    if r.last_four is not None:
        pm["last_four"] = r.last_four
    if r.balance_cents is not None:
        pm["balance"] = _dollars(r.balance_cents)
    return pm


def _user_dict(r: Any, pms: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": r.user_id, "name": {"first_name": r.first_name, "last_name": r.last_name}, "address": r.address,
            "email": r.email, "payment_methods": pms, "orders": list(r.order_ids)}  # fmt: skip


def _variant(r: Any) -> dict[str, Any]:
    return {"item_id": r.item_id, "options": r.options, "available": bool(r.available), "price": _dollars(r.price_cents)}


def _order(conn: sa.Connection, order_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(orders).where(orders.c.order_id == order_id)).first()
    if row is None:
        raise RecordError("Order not found")
    items = conn.execute(sa.select(order_items).where(order_items.c.order_id == order_id).order_by(order_items.c.position)).all()
    pays = conn.execute(sa.select(order_payments).where(order_payments.c.order_id == order_id)
                        .order_by(order_payments.c.position)).all()  # fmt: skip
    return _order_dict(row, items, pays)


def _user(conn: sa.Connection, user_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(users).where(users.c.user_id == user_id)).first()
    if row is None:
        raise RecordError("User not found")
    pms = {r.id: _pm(r) for r in conn.execute(sa.select(payment_methods).where(payment_methods.c.user_id == user_id))}
    return _user_dict(row, pms)


def _product(conn: sa.Connection, product_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(products).where(products.c.product_id == product_id)).first()
    if row is None:
        raise RecordError("Product not found")
    vs = {r.item_id: _variant(r) for r in conn.execute(sa.select(variants).where(variants.c.product_id == product_id))}
    return {"name": row.name, "product_id": row.product_id, "variants": vs}


def _put_order(conn: sa.Connection, order: dict[str, Any]) -> dict[str, Any]:
    oid = order["order_id"]
    conn.execute(orders.update().where(orders.c.order_id == oid).values(**{k: v for k, v in _order_row(order).items() if k != "order_id"}))
    conn.execute(order_items.delete().where(order_items.c.order_id == oid))
    conn.execute(order_payments.delete().where(order_payments.c.order_id == oid))
    if order["items"]:
        conn.execute(order_items.insert(), _item_rows(order))
    if order["payment_history"]:
        conn.execute(order_payments.insert(), _payment_rows(order))
    return _order(conn, oid)


def _put_user(conn: sa.Connection, user: dict[str, Any]) -> dict[str, Any]:
    uid = user["user_id"]
    conn.execute(users.update().where(users.c.user_id == uid).values(address=user["address"]))
    for pm in user["payment_methods"].values():
        if "balance" in pm:
            conn.execute(payment_methods.update().where(payment_methods.c.id == pm["id"]).values(balance_cents=_cents(pm["balance"])))
    return _user(conn, uid)


def _touch_order(conn: sa.Connection, touched: dict[str, Any], order_id: str) -> dict[str, Any]:
    order = _order(conn, order_id)
    touched["orders"].setdefault(order_id, json.loads(json.dumps(order)))
    return order


def _touch_user(conn: sa.Connection, touched: dict[str, Any], user_id: str) -> dict[str, Any]:
    user = _user(conn, user_id)
    touched["users"].setdefault(user_id, json.loads(json.dumps(user)))
    return user


def _method(user: dict[str, Any], payment_method_id: str) -> dict[str, Any]:
    pm = user["payment_methods"].get(payment_method_id)
    if pm is None:
        raise RecordError("Payment method not found")
    return pm  # type: ignore[no-any-return]


def _check_counts(order: dict[str, Any], item_ids: list[str]) -> None:
    have = [i["item_id"] for i in order["items"]]
    for item_id in item_ids:
        if item_ids.count(item_id) > have.count(item_id):
            raise RecordError(f"{item_id} not found")


def _swap_plan(
    conn: sa.Connection, order: dict[str, Any], item_ids: list[str], new_item_ids: list[str]
) -> tuple[int, list[dict[str, Any]]]:
    """The price difference in cents of swapping items for other variants of the same products, and the variants.

    policy.md: "an available new item of the same product but of different product option", for
    modifications and exchanges alike (τ²'s code checks the difference for modifications only)."""
    _check_counts(order, item_ids)
    if len(item_ids) != len(new_item_ids):
        raise RecordError("The number of items to be exchanged should match")
    diff, chosen = 0, []
    for old_id, new_id in zip(item_ids, new_item_ids, strict=True):
        if old_id == new_id:
            raise RecordError("The new item id should be different from the old item id")
        item = next(i for i in order["items"] if i["item_id"] == old_id)
        row = conn.execute(sa.select(variants).where(variants.c.item_id == new_id, variants.c.product_id == item["product_id"])).first()
        if row is None or not row.available:
            raise RecordError(f"New item {new_id} not found or available")
        diff += row.price_cents - _cents(item["price"])
        chosen.append(_variant(row))
    return diff, chosen


# -- calculate ----------------------------------------------------------------------
_OPS: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                                               ast.Div: operator.truediv}  # fmt: skip


def calculate(expression: str) -> str:
    """τ²'s calculator (+, -, *, /, parentheses), rounded to cents, without `eval`."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return float(_OPS[type(node.op)](walk(node.left), walk(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = walk(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        raise RecordError("Invalid expression")

    try:
        tree = ast.parse(expression, mode="eval")
        return str(round(walk(tree), 2))
    except (SyntaxError, ZeroDivisionError) as e:
        raise RecordError(f"Invalid expression ({type(e).__name__})") from None
