"""Inventory's SQLite store. Every stock change is one transaction of conditional UPDATEs.

Stock moves between three counts (available, held, sold) and never leaves them, so for
every SKU `available + held + sold` only grows by restocks. A reservation takes stock with
`UPDATE ... WHERE available >= ?`, never by reading and then writing, so concurrent orders
for the last unit cannot both win, whichever process or instance runs them.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
from collections.abc import Sequence

from services.common import db
from services.common.errors import (
    ErrorKind,
    FieldViolation,
    ServiceError,
    already_exists,
    failed_precondition,
    not_found,
)
from services.inventory.domain import Item, Product, Reservation, ReservationState, fingerprint

# Reservations one prune deletes at most: a backlog is worked off over several sweeps,
# each a short transaction.
PRUNE_BATCH = 1000


class InventoryStore(db.Store):
    service = "inventory"

    def seed(self, seed_file: pathlib.Path) -> int:
        """Adds the seed file's products that are not there yet; returns how many."""
        products = json.loads(seed_file.read_text()).get("products", [])
        added = 0
        with db.transaction(self._conn) as conn:
            for p in products:
                added += conn.execute(
                    "INSERT OR IGNORE INTO products (sku, name, price_minor, currency, available)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        p["sku"],
                        p["name"],
                        p["unit_price_minor"],
                        p.get("currency", "USD"),
                        p["quantity"],
                    ),
                ).rowcount
        return added

    # Reads.

    def product(self, sku: str) -> Product:
        return _read_product(self._reads, sku)

    def products(self, after_sku: str | None, limit: int) -> list[Product]:
        rows = self._reads.execute(
            "SELECT * FROM products WHERE sku > ? ORDER BY sku LIMIT ?", (after_sku or "", limit)
        ).fetchall()
        return [_product_from_row(r) for r in rows]

    def reservation(self, order_id: str, user_id: str | None = None) -> Reservation:
        """The order's reservation; NOT_FOUND if none, or if it is another user's."""
        with db.snapshot(self._reads) as conn:
            found = _read_reservation(conn, order_id)
        if found is None or (user_id is not None and found.user_id != user_id):
            raise _reservation_not_found(order_id)
        return found

    # Writes.

    @db.batched
    def reserve(
        self, order_id: str, user_id: str, items: Sequence[Item], hold_seconds: float, now: float
    ) -> Reservation:
        """Holds every item or none; a repeat for the same order returns the first result."""
        wanted = tuple(items)
        with db.transaction(self._conn) as conn:
            _expire_due(conn, now)
            existing = _read_reservation(conn, order_id)
            if existing is not None:
                return _same_reservation(existing, user_id, wanted)
            unknown = _unknown_skus(conn, wanted)
            if unknown:
                raise ServiceError(
                    ErrorKind.INVALID_ARGUMENT,
                    "UNKNOWN_SKU",
                    f"no product has SKU {wanted[unknown[0]].sku!r}",
                    violations=tuple(
                        FieldViolation(f"items[{i}].sku", "is not in the catalog") for i in unknown
                    ),
                    metadata={"sku": wanted[unknown[0]].sku},
                )
            priced = []
            # Taking the SKUs in one order keeps lock order fixed; SQLite locks the whole
            # database anyway, but a server database would not.
            for item in sorted(wanted, key=lambda i: i.sku):
                taken = conn.execute(
                    "UPDATE products SET available = available - ?1, held = held + ?1"
                    " WHERE sku = ?2 AND available >= ?1",
                    (item.quantity, item.sku),
                ).rowcount
                if not taken:
                    raise failed_precondition(
                        "OUT_OF_STOCK", f"not enough stock of {item.sku!r}", sku=item.sku
                    )
                price = conn.execute(
                    "SELECT price_minor, currency FROM products WHERE sku = ?", (item.sku,)
                ).fetchone()
                priced.append(
                    Item(item.sku, item.quantity, price["price_minor"], price["currency"])
                )
            conn.execute(
                "INSERT INTO reservations (order_id, user_id, state, fingerprint, expire_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    order_id,
                    user_id,
                    ReservationState.HELD.value,
                    fingerprint(wanted),
                    now + hold_seconds,
                ),
            )
            conn.executemany(
                "INSERT INTO reservation_items (order_id, sku, quantity, price_minor, currency)"
                " VALUES (?, ?, ?, ?, ?)",
                [(order_id, i.sku, i.quantity, i.price_minor, i.currency) for i in priced],
            )
            reservation = _read_reservation(conn, order_id)
        assert reservation is not None
        return reservation

    @db.batched
    def commit(self, order_id: str, user_id: str, now: float) -> Reservation:
        """Sells a held reservation; a repeat returns the committed one."""
        with db.transaction(self._conn) as conn:
            _expire_due(conn, now)
            found = _read_reservation(conn, order_id)
            if found is None or found.user_id != user_id:
                raise _reservation_not_found(order_id)
            if found.state is ReservationState.HELD:
                _move(conn, found, "held = held - ?1, sold = sold + ?1")
                _set_state(conn, order_id, ReservationState.COMMITTED)
            elif found.state is not ReservationState.COMMITTED:
                raise failed_precondition(
                    f"RESERVATION_{found.state.value}",
                    f"the reservation of order {order_id!r} is {found.state.value.lower()}",
                    order_id=order_id,
                )
            result = _read_reservation(conn, order_id)
        assert result is not None
        return result

    @db.batched
    def release(self, order_id: str, user_id: str, now: float) -> Reservation:
        """Gives a hold back; for an unknown order, records an empty released one."""
        with db.transaction(self._conn) as conn:
            _expire_due(conn, now)
            found = _read_reservation(conn, order_id)
            if found is None:
                # A tombstone: a ReserveStock for this order that arrives late finds it
                # and holds nothing.
                conn.execute(
                    "INSERT INTO reservations (order_id, user_id, state, fingerprint, expire_at)"
                    " VALUES (?, ?, ?, '', ?)",
                    (order_id, user_id, ReservationState.RELEASED.value, now),
                )
            elif found.user_id != user_id:
                raise _reservation_not_found(order_id)
            elif found.state is ReservationState.HELD:
                _move(conn, found, "held = held - ?1, available = available + ?1")
                _set_state(conn, order_id, ReservationState.RELEASED)
            elif found.state is ReservationState.COMMITTED:
                raise failed_precondition(
                    "RESERVATION_COMMITTED",
                    f"the stock of order {order_id!r} is already sold",
                    order_id=order_id,
                )
            result = _read_reservation(conn, order_id)
        assert result is not None
        return result

    @db.batched
    def expire_due(self, now: float) -> int:
        """Gives back the stock of every hold past its expire time; returns how many."""
        with db.transaction(self._conn) as conn:
            return _expire_due(conn, now)

    @db.batched
    def prune(self, now: float, retention_seconds: float) -> int:
        """Deletes reservations that hold nothing (RELEASED, EXPIRED, and release
        tombstones) whose expire time is more than `retention_seconds` past; never a
        COMMITTED one, the record of a sale. At most PRUNE_BATCH at a time; returns how many.

        Reservations have no time of their last change, and need none: a hold is released
        or expires at the latest at its expire time, and a tombstone's expire time is when
        it was written, so each is kept at least `retention_seconds` after it ended (a
        released hold at most one hold's length more). Pruning is safe: the saga that
        released it is finished, a ReserveStock arriving later still (which a tombstone
        would have refused) holds the stock only until that hold expires, and a pruned
        reservation held no stock, so no count changes.
        """
        with db.transaction(self._conn) as conn:
            due = [
                row["order_id"]
                for row in conn.execute(
                    "SELECT order_id FROM reservations WHERE state IN (?, ?) AND expire_at < ?"
                    " LIMIT ?",
                    (
                        ReservationState.RELEASED.value,
                        ReservationState.EXPIRED.value,
                        now - retention_seconds,
                        PRUNE_BATCH,
                    ),
                )
            ]
            for order_id in due:
                conn.execute("DELETE FROM reservation_items WHERE order_id = ?", (order_id,))
                conn.execute("DELETE FROM reservations WHERE order_id = ?", (order_id,))
            return len(due)

    @db.batched
    def restock(self, sku: str, quantity: int, request_id: str) -> Product:
        """Adds units once per request id."""
        with db.transaction(self._conn) as conn:
            known = conn.execute("SELECT 1 FROM products WHERE sku = ?", (sku,)).fetchone()
            if known is None:
                raise _product_not_found(sku)
            previous = conn.execute(
                "SELECT sku, quantity FROM restocks WHERE request_id = ?", (request_id,)
            ).fetchone()
            if previous is None:
                conn.execute(
                    "INSERT INTO restocks (request_id, sku, quantity) VALUES (?, ?, ?)",
                    (request_id, sku, quantity),
                )
                conn.execute(
                    "UPDATE products SET available = available + ? WHERE sku = ?", (quantity, sku)
                )
            elif (previous["sku"], previous["quantity"]) != (sku, quantity):
                raise already_exists(
                    "REQUEST_ID_REUSED",
                    "this request_id was already used for a different restock",
                    request_id=request_id,
                )
            return _read_product(conn, sku)


def _product_not_found(sku: str) -> ServiceError:
    return not_found("PRODUCT_NOT_FOUND", f"no product has SKU {sku!r}", sku=sku)


def _reservation_not_found(order_id: str) -> ServiceError:
    """For an order with no reservation, or another user's: the same answer, so no probing."""
    return not_found(
        "RESERVATION_NOT_FOUND", f"order {order_id!r} has no reservation", order_id=order_id
    )


def _read_product(conn: sqlite3.Connection, sku: str) -> Product:
    row = conn.execute("SELECT * FROM products WHERE sku = ?", (sku,)).fetchone()
    if row is None:
        raise _product_not_found(sku)
    return _product_from_row(row)


def _product_from_row(row: sqlite3.Row) -> Product:
    return Product(
        row["sku"],
        row["name"],
        row["price_minor"],
        row["currency"],
        row["available"],
        row["held"],
        row["sold"],
    )


def _read_reservation(conn: sqlite3.Connection, order_id: str) -> Reservation | None:
    row = conn.execute("SELECT * FROM reservations WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    items = conn.execute(
        "SELECT sku, quantity, price_minor, currency FROM reservation_items"
        " WHERE order_id = ? ORDER BY sku",
        (order_id,),
    ).fetchall()
    return Reservation(
        order_id,
        row["user_id"],
        tuple(Item(i["sku"], i["quantity"], i["price_minor"], i["currency"]) for i in items),
        ReservationState(row["state"]),
        row["expire_at"],
    )


def _same_reservation(existing: Reservation, user_id: str, wanted: tuple[Item, ...]) -> Reservation:
    """The answer to a repeated ReserveStock: the first result, if it is the same call."""
    tombstone = existing.state is ReservationState.RELEASED and not existing.items
    if existing.user_id != user_id or (
        not tombstone and fingerprint(existing.items) != fingerprint(wanted)
    ):
        raise already_exists(
            "RESERVATION_MISMATCH",
            f"order {existing.order_id!r} already has a different reservation",
            order_id=existing.order_id,
        )
    return existing


def _unknown_skus(conn: sqlite3.Connection, items: tuple[Item, ...]) -> list[int]:
    unknown = []
    for index, item in enumerate(items):
        if conn.execute("SELECT 1 FROM products WHERE sku = ?", (item.sku,)).fetchone() is None:
            unknown.append(index)
    return unknown


def _move(conn: sqlite3.Connection, reservation: Reservation, assignment: str) -> None:
    for item in reservation.items:
        conn.execute(f"UPDATE products SET {assignment} WHERE sku = ?2", (item.quantity, item.sku))


def _set_state(conn: sqlite3.Connection, order_id: str, state: ReservationState) -> None:
    conn.execute("UPDATE reservations SET state = ? WHERE order_id = ?", (state.value, order_id))


def _expire_due(conn: sqlite3.Connection, now: float) -> int:
    due = conn.execute(
        "SELECT order_id FROM reservations WHERE state = ? AND expire_at <= ?",
        (ReservationState.HELD.value, now),
    ).fetchall()
    for row in due:
        found = _read_reservation(conn, row["order_id"])
        assert found is not None
        _move(conn, found, "held = held - ?1, available = available + ?1")
        _set_state(conn, found.order_id, ReservationState.EXPIRED)
    return len(due)
