"""Inventory's store. Every stock change is one transaction of conditional UPDATEs.

Stock moves between three counts (available, held, sold) and never leaves them, so for
every SKU `available + held + sold` only grows by restocks. A reservation takes stock with
`UPDATE ... WHERE available >= ?`, never by reading and then writing, so concurrent orders
for the last unit cannot both win, whichever process or instance runs them.

Written to be right on PostgreSQL under READ COMMITTED with many instances too
(docs/postgres-concurrency.md): an order's reservation is claimed (its row inserted)
before any stock moves, a reservation's state changes by an UPDATE conditional on the
state it leaves, and products are locked in SKU order everywhere.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Sequence

from services.common import db, events
from services.common.database import Row, Tx, clock
from services.common.errors import (
    ErrorKind,
    FieldViolation,
    ServiceError,
    already_exists,
    failed_precondition,
    not_found,
)
from services.inventory import events as facts
from services.inventory.domain import Item, Product, Reservation, ReservationState, fingerprint

# Reservations one prune deletes at most: a backlog is worked off over several sweeps,
# each a short transaction.
PRUNE_BATCH = 1000


class InventoryStore(db.Store):
    service = "inventory"

    async def seed(self, seed_file: pathlib.Path) -> int:
        """Adds the seed file's products that are not there yet; returns how many."""
        products = json.loads(await asyncio.to_thread(seed_file.read_text)).get("products", [])

        async def seed(tx: Tx) -> int:
            added = 0
            for p in products:
                added += await tx.execute(
                    "INSERT INTO products (sku, name, price_minor, currency, available)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        p["sku"],
                        p["name"],
                        p["unit_price_minor"],
                        p.get("currency", "USD"),
                        p["quantity"],
                    ),
                )
            return added

        return await self.db.write(seed)

    # Reads.

    async def product(self, sku: str) -> Product:
        return await self.db.read(lambda tx: _read_product(tx, sku))

    async def products(self, after_sku: str | None, limit: int) -> list[Product]:
        rows = await self.db.read(
            lambda tx: tx.fetchall(
                "SELECT * FROM products WHERE sku > ? ORDER BY sku LIMIT ?",
                (after_sku or "", limit),
            )
        )
        return [_product_from_row(r) for r in rows]

    async def reservation(self, order_id: str, user_id: str | None = None) -> Reservation:
        """The order's reservation; NOT_FOUND if none, or if it is another user's."""
        found = await self.db.read(lambda tx: _read_reservation(tx, order_id), snapshot=True)
        if found is None or (user_id is not None and found.user_id != user_id):
            raise _reservation_not_found(order_id)
        return found

    # Writes.

    async def reserve(
        self,
        order_id: str,
        user_id: str,
        items: Sequence[Item],
        hold_seconds: float,
        now: float | None = None,
    ) -> Reservation:
        """Holds every item or none; a repeat for the same order returns the first result."""
        wanted = tuple(items)

        async def reserve(tx: Tx) -> Reservation:
            at = await clock(tx, now)
            _, returns = await _expire_due(tx, at)
            # The order's reservation is claimed first: a repeat of this call running at
            # the same moment on another instance waits here for this one, then finds it.
            claimed = await tx.execute(
                "INSERT INTO reservations (order_id, user_id, state, fingerprint, expire_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    order_id,
                    user_id,
                    ReservationState.HELD.value,
                    fingerprint(wanted),
                    at + hold_seconds,
                ),
            )
            if not claimed:
                existing = await _read_reservation(tx, order_id)
                assert existing is not None
                return _same_reservation(existing, user_id, wanted)
            unknown = await _unknown_skus(tx, wanted)
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
            # In SKU order, the expired holds' stock given back in the same pass (before a
            # SKU's take, which it may make possible): two orders for [A, B] and [B, A]
            # would otherwise each lock one and wait for the other (a deadlock, on a
            # server database).
            by_sku = {item.sku: item for item in wanted}
            for sku in sorted(by_sku.keys() | {sku for sku, _, _ in returns}):
                await _move_all(tx, [m for m in returns if m[0] == sku])
                if sku not in by_sku:
                    continue
                item = by_sku[sku]
                price = await tx.fetchone(
                    "UPDATE products SET available = available - ?1, held = held + ?1"
                    " WHERE sku = ?2 AND available >= ?1 RETURNING price_minor, currency",
                    (item.quantity, item.sku),
                )
                if price is None:
                    raise failed_precondition(
                        "OUT_OF_STOCK", f"not enough stock of {item.sku!r}", sku=item.sku
                    )
                priced.append(
                    Item(item.sku, item.quantity, price["price_minor"], price["currency"])
                )
            await tx.executemany(
                "INSERT INTO reservation_items (order_id, sku, quantity, price_minor, currency)"
                " VALUES (?, ?, ?, ?, ?)",
                [(order_id, i.sku, i.quantity, i.price_minor, i.currency) for i in priced],
            )
            held = await _reservation_or_fail(tx, order_id)
            await events.emit(tx, facts.reserved(held), now=at)
            return held

        return await self.write_events(reserve)

    async def commit(self, order_id: str, user_id: str, now: float | None = None) -> Reservation:
        """Sells a held reservation; a repeat returns the committed one."""

        async def commit(tx: Tx) -> Reservation:
            at = await clock(tx, now)
            _, moves = await _expire_due(tx, at)
            # The state change first, conditional on HELD: a release of the same hold at
            # the same moment (another instance compensating) moves the stock, or this
            # does, never both.
            sold = await _change_state(tx, order_id, user_id, ReservationState.COMMITTED)
            if sold:
                moves += await _moves_of(tx, order_id, SELL)
            await _move_all(tx, moves)
            found = await _read_reservation(tx, order_id)
            if found is None or found.user_id != user_id:
                raise _reservation_not_found(order_id)
            if sold:
                await events.emit(tx, facts.committed(found), now=at)
            if found.state is not ReservationState.COMMITTED:
                raise failed_precondition(
                    f"RESERVATION_{found.state.value}",
                    f"the reservation of order {order_id!r} is {found.state.value.lower()}",
                    order_id=order_id,
                )
            return found

        return await self.write_events(commit)

    async def release(self, order_id: str, user_id: str, now: float | None = None) -> Reservation:
        """Gives a hold back; for an unknown order, records an empty released one."""

        async def release(tx: Tx) -> Reservation:
            at = await clock(tx, now)
            _, moves = await _expire_due(tx, at)
            # A tombstone if the order has no reservation: a ReserveStock for this order
            # that arrives late (or at this very moment, on another instance) finds it and
            # holds nothing.
            tombstone = await tx.execute(
                "INSERT INTO reservations (order_id, user_id, state, fingerprint, expire_at)"
                " VALUES (?, ?, ?, '', ?) ON CONFLICT DO NOTHING",
                (order_id, user_id, ReservationState.RELEASED.value, at),
            )
            given_back = not tombstone and await _change_state(
                tx, order_id, user_id, ReservationState.RELEASED
            )
            if given_back:
                moves += await _moves_of(tx, order_id, GIVE_BACK)
            await _move_all(tx, moves)
            found = await _reservation_or_fail(tx, order_id)
            if found.user_id != user_id:
                raise _reservation_not_found(order_id)
            if given_back:
                await events.emit(tx, facts.released(found, expired=False), now=at)
            if found.state is ReservationState.COMMITTED:
                raise failed_precondition(
                    "RESERVATION_COMMITTED",
                    f"the stock of order {order_id!r} is already sold",
                    order_id=order_id,
                )
            return found

        return await self.write_events(release)

    async def expire_due(self, now: float | None = None) -> int:
        """Gives back the stock of every hold past its expire time; returns how many."""

        async def expire(tx: Tx) -> int:
            expired, moves = await _expire_due(tx, await clock(tx, now))
            await _move_all(tx, moves)
            return expired

        return await self.write_events(expire)

    async def prune(self, retention_seconds: float, now: float | None = None) -> int:
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

        async def prune(tx: Tx) -> int:
            due = [
                row["order_id"]
                for row in await tx.fetchall(
                    "SELECT order_id FROM reservations WHERE state IN (?, ?) AND expire_at < ?"
                    f" LIMIT ?{tx.skip_locked}",
                    (
                        ReservationState.RELEASED.value,
                        ReservationState.EXPIRED.value,
                        await clock(tx, now) - retention_seconds,
                        PRUNE_BATCH,
                    ),
                )
            ]
            rows = [(order_id,) for order_id in due]
            await tx.executemany("DELETE FROM reservation_items WHERE order_id = ?", rows)
            await tx.executemany("DELETE FROM reservations WHERE order_id = ?", rows)
            return len(due)

        return await self.db.write(prune)

    async def restock(self, sku: str, quantity: int, request_id: str) -> Product:
        """Adds units once per request id."""

        async def restock(tx: Tx) -> Product:
            known = await tx.fetchone("SELECT 1 FROM products WHERE sku = ?", (sku,))
            if known is None:
                raise _product_not_found(sku)
            # The request id claimed first: a repeat at the same moment waits, then adds
            # nothing.
            claimed = await tx.execute(
                "INSERT INTO restocks (request_id, sku, quantity) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (request_id, sku, quantity),
            )
            if claimed:
                await tx.execute(
                    "UPDATE products SET available = available + ? WHERE sku = ?", (quantity, sku)
                )
                product = await _read_product(tx, sku)
                await events.emit(tx, facts.restocked(product, quantity))
                return product
            else:
                previous = await tx.fetchone(
                    "SELECT sku, quantity FROM restocks WHERE request_id = ?", (request_id,)
                )
                assert previous is not None
                if (previous["sku"], previous["quantity"]) != (sku, quantity):
                    raise already_exists(
                        "REQUEST_ID_REUSED",
                        "this request_id was already used for a different restock",
                        request_id=request_id,
                    )
            return await _read_product(tx, sku)

        return await self.write_events(restock)


def _product_not_found(sku: str) -> ServiceError:
    return not_found("PRODUCT_NOT_FOUND", f"no product has SKU {sku!r}", sku=sku)


def _reservation_not_found(order_id: str) -> ServiceError:
    """For an order with no reservation, or another user's: the same answer, so no probing."""
    return not_found(
        "RESERVATION_NOT_FOUND", f"order {order_id!r} has no reservation", order_id=order_id
    )


async def _read_product(tx: Tx, sku: str) -> Product:
    row = await tx.fetchone("SELECT * FROM products WHERE sku = ?", (sku,))
    if row is None:
        raise _product_not_found(sku)
    return _product_from_row(row)


def _product_from_row(row: Row) -> Product:
    return Product(
        row["sku"],
        row["name"],
        row["price_minor"],
        row["currency"],
        row["available"],
        row["held"],
        row["sold"],
    )


async def _read_reservation(tx: Tx, order_id: str) -> Reservation | None:
    row = await tx.fetchone("SELECT * FROM reservations WHERE order_id = ?", (order_id,))
    if row is None:
        return None
    items = await tx.fetchall(
        "SELECT sku, quantity, price_minor, currency FROM reservation_items"
        " WHERE order_id = ? ORDER BY sku",
        (order_id,),
    )
    return Reservation(
        order_id,
        row["user_id"],
        tuple(Item(i["sku"], i["quantity"], i["price_minor"], i["currency"]) for i in items),
        ReservationState(row["state"]),
        row["expire_at"],
    )


async def _reservation_or_fail(tx: Tx, order_id: str) -> Reservation:
    found = await _read_reservation(tx, order_id)
    assert found is not None
    return found


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


async def _unknown_skus(tx: Tx, items: tuple[Item, ...]) -> list[int]:
    skus = sorted({i.sku for i in items})
    known = {
        r["sku"]
        for r in await tx.fetchall(
            f"SELECT sku FROM products WHERE sku IN ({', '.join('?' for _ in skus)})", skus
        )
    }
    return [index for index, item in enumerate(items) if item.sku not in known]


async def _change_state(tx: Tx, order_id: str, user_id: str, state: ReservationState) -> bool:
    """HELD -> `state`, if the reservation is the user's and still HELD."""
    return bool(
        await tx.execute(
            "UPDATE reservations SET state = ? WHERE order_id = ? AND user_id = ? AND state = ?",
            (state.value, order_id, user_id, ReservationState.HELD.value),
        )
    )


GIVE_BACK = "held = held - ?1, available = available + ?1"
SELL = "held = held - ?1, sold = sold + ?1"

Move = tuple[str, int, str]
"""A stock move: (SKU, quantity, the assignment that moves it between a product's counts)."""


async def _moves_of(tx: Tx, order_id: str, assignment: str) -> list[Move]:
    """The moves of the reservation's items by `assignment`."""
    items = await tx.fetchall(
        "SELECT sku, quantity FROM reservation_items WHERE order_id = ?", (order_id,)
    )
    return [(i["sku"], i["quantity"], assignment) for i in items]


async def _move_all(tx: Tx, moves: list[Move]) -> None:
    """Makes the moves in one pass in SKU order (those of a SKU in the order given). One
    pass: a write that gave back expired holds' stock in SKU order and then moved its own
    in SKU order would lock B before A against another doing the reverse, a deadlock on a
    server database. Consecutive moves of one kind go as one executemany."""
    ordered = sorted(moves, key=lambda m: m[0])  # stable
    start = 0
    while start < len(ordered):
        end = start
        while end < len(ordered) and ordered[end][2] == ordered[start][2]:
            end += 1
        await tx.executemany(
            f"UPDATE products SET {ordered[start][2]} WHERE sku = ?2",
            [(quantity, sku) for sku, quantity, _ in ordered[start:end]],
        )
        start = end


async def _expire_due(tx: Tx, now: float) -> tuple[int, list[Move]]:
    """Marks every hold past its expire time EXPIRED; returns how many, and the moves that
    give their stock back (summed per SKU), for the caller to make with its own
    (`_move_all`). Holds another transaction is busy with (a commit, say) are left to the
    next sweep (`skip_locked`)."""
    due = {
        r["order_id"]: r
        for r in await tx.fetchall(
            "SELECT order_id, user_id, expire_at FROM reservations"
            " WHERE state = ? AND expire_at <= ?" + tx.skip_locked,
            (ReservationState.HELD.value, now),
        )
    }
    if not due:
        return 0, []
    marks = ", ".join("?" for _ in due)
    await tx.execute(
        f"UPDATE reservations SET state = ? WHERE order_id IN ({marks}) AND state = ?",
        (ReservationState.EXPIRED.value, *due, ReservationState.HELD.value),
    )
    items: dict[str, list[Item]] = {order_id: [] for order_id in due}
    for i in await tx.fetchall(
        "SELECT order_id, sku, quantity, price_minor, currency FROM reservation_items"
        f" WHERE order_id IN ({marks}) ORDER BY order_id, sku",
        tuple(due),
    ):
        items[i["order_id"]].append(Item(i["sku"], i["quantity"], i["price_minor"], i["currency"]))
    totals: dict[str, int] = {}
    for order_id, row in due.items():
        for item in items[order_id]:
            totals[item.sku] = totals.get(item.sku, 0) + item.quantity
        expired = Reservation(
            order_id,
            row["user_id"],
            tuple(items[order_id]),
            ReservationState.EXPIRED,
            row["expire_at"],
        )
        await events.emit(tx, facts.released(expired, expired=True), now=now)
    return len(due), [(sku, quantity, GIVE_BACK) for sku, quantity in totals.items()]
