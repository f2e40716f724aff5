"""The reporting service's store: the read model's tables, written only by `apply`, one
transaction per batch of events, each event's dedup row in the same transaction as its
effect (a redelivered event changes nothing), and read by the report queries.

Every effect is a sum (sales, revenue) or keeps the order's latest event by its
per-order sequence (user_orders), so the tables do not depend on the order in which
events arrive: a rebuild from the stream's start makes the same tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.common import db
from services.common.database import Row, Tx
from services.reporting.domain import (
    Event,
    Line,
    OrderChange,
    OrderState,
    Outcome,
    Sale,
    utc_day,
)


@dataclass(frozen=True)
class ProjectionState:
    applied_sequence: int = 0
    """The highest stream sequence applied, skipped or parked."""
    last_occurred_at: float | None = None
    """The occurred_at of the event at applied_sequence (None: none yet)."""
    applied: int = 0
    skipped: int = 0
    parked: int = 0


@dataclass(frozen=True)
class SkuDaySales:
    day: str
    sku: str
    currency: str
    product_name: str
    units: int
    revenue_minor: int


@dataclass(frozen=True)
class DayRevenue:
    day: str
    currency: str
    orders: int
    revenue_minor: int


@dataclass(frozen=True)
class ProductSales:
    sku: str
    currency: str
    product_name: str
    units: int
    revenue_minor: int


@dataclass(frozen=True)
class OrderLine:
    sku: str
    product_name: str
    quantity: int
    unit_price_minor: int | None
    currency: str


@dataclass(frozen=True)
class UserOrder:
    order_id: str
    state: OrderState
    lines: tuple[OrderLine, ...]
    total_minor: int | None
    currency: str
    cancel_reason: str
    placed_at: float
    updated_at: float


@dataclass(frozen=True)
class UserSummary:
    user_id: str
    counts: Mapping[OrderState, int]
    spent: Mapping[str, int]
    """Per currency: the sum of the confirmed orders' totals."""
    orders: tuple[UserOrder, ...]


@dataclass(frozen=True)
class Applied:
    """What one `apply` did."""

    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    parked: int = 0


class ReportingStore(db.Store):
    service = "reporting"

    # Writes.

    async def apply(self, events: Sequence[Event], names: Mapping[str, str]) -> Applied:
        """Applies a batch in one transaction. `names` holds the name of every SKU the
        batch's events carry (ReportingStore.names first, the rest from inventory); they
        are kept in product_names, so each SKU is asked for once."""

        async def apply(tx: Tx) -> Applied:
            counts = {outcome: 0 for outcome in Outcome}
            duplicates = 0
            await _remember_names(tx, names)
            applied_at = await tx.now()
            for event in events:
                if event.outcome is not Outcome.PARK:
                    fresh = await tx.execute(
                        "INSERT INTO applied_events (event_id, stream_sequence, type, applied_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (event.event_id, event.stream_sequence, event.type, applied_at),
                    )
                    if not fresh:
                        duplicates += 1
                        continue
                counts[event.outcome] += 1
                if event.outcome is Outcome.APPLY:
                    await _apply_effect(tx, event, names)
            await _advance(tx, events, counts)
            return Applied(
                counts[Outcome.APPLY], duplicates, counts[Outcome.SKIP], counts[Outcome.PARK]
            )

        return await self.db.write(apply)

    # Reads.

    async def names(self, skus: Iterable[str]) -> dict[str, str]:
        """The names kept for those of `skus` that have one."""
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        rows = await self.db.read(
            lambda tx: tx.fetchall(
                "SELECT sku, name FROM product_names"
                f" WHERE sku IN ({', '.join('?' for _ in wanted)})",
                wanted,
            )
        )
        return {r["sku"]: r["name"] for r in rows}

    async def state(self) -> ProjectionState:
        row = await self.db.read(lambda tx: tx.fetchone("SELECT * FROM projection_state"))
        return ProjectionState() if row is None else _state_from_row(row)

    async def sku_sales(
        self,
        start_day: str,
        end_day: str,
        sku: str,
        after: tuple[str, str, str] | None,
        limit: int,
    ) -> list[SkuDaySales]:
        """Rows of the days [start_day, end_day] (of `sku`, if not empty) after the key
        `after` (day, sku, currency), in that key's order."""
        sql = "SELECT * FROM sku_day_sales WHERE day >= ? AND day <= ?"
        params: list[object] = [start_day, end_day]
        if sku:
            sql += " AND sku = ?"
            params.append(sku)
        if after is not None:
            sql += " AND (day, sku, currency) > (?, ?, ?)"
            params.extend(after)
        sql += " ORDER BY day, sku, currency LIMIT ?"
        params.append(limit)
        rows = await self.db.read(lambda tx: tx.fetchall(sql, params))
        return [
            SkuDaySales(
                r["day"], r["sku"], r["currency"], r["product_name"], r["units"], r["revenue_minor"]
            )
            for r in rows
        ]

    async def daily_revenue(self, start_day: str, end_day: str) -> list[DayRevenue]:
        rows = await self.db.read(
            lambda tx: tx.fetchall(
                "SELECT * FROM day_revenue WHERE day >= ? AND day <= ? ORDER BY day, currency",
                (start_day, end_day),
            )
        )
        return [DayRevenue(r["day"], r["currency"], r["orders"], r["revenue_minor"]) for r in rows]

    async def top_products(self, limit: int) -> list[ProductSales]:
        rows = await self.db.read(
            lambda tx: tx.fetchall(
                "SELECT * FROM product_sales ORDER BY units DESC, sku, currency LIMIT ?", (limit,)
            )
        )
        return [
            ProductSales(r["sku"], r["currency"], r["product_name"], r["units"], r["revenue_minor"])
            for r in rows
        ]

    async def user_summary(
        self, user_id: str, after: tuple[float, str] | None, limit: int
    ) -> UserSummary:
        """The user's counts and spending, and up to `limit` orders newest first (by place
        time, then order id) after the key `after` (place time, order id)."""

        async def read(tx: Tx) -> UserSummary:
            totals = await tx.fetchall(
                "SELECT state, currency, COUNT(*) AS n, SUM(total_minor) AS spent"
                " FROM user_orders WHERE user_id = ? GROUP BY state, currency",
                (user_id,),
            )
            counts = {state: 0 for state in OrderState}
            spent: dict[str, int] = {}
            for r in totals:
                counts[OrderState(r["state"])] += r["n"]
                if r["state"] == OrderState.CONFIRMED.value and r["currency"]:
                    spent[r["currency"]] = spent.get(r["currency"], 0) + int(r["spent"] or 0)
            sql = "SELECT * FROM user_orders WHERE user_id = ?"
            params: list[object] = [user_id]
            if after is not None:
                sql += " AND (placed_at < ? OR (placed_at = ? AND order_id < ?))"
                params.extend((after[0], after[0], after[1]))
            sql += " ORDER BY placed_at DESC, order_id DESC LIMIT ?"
            params.append(limit)
            orders = []
            for r in await tx.fetchall(sql, params):
                lines = await tx.fetchall(
                    "SELECT * FROM user_order_lines WHERE order_id = ? ORDER BY sku",
                    (r["order_id"],),
                )
                orders.append(
                    UserOrder(
                        r["order_id"],
                        OrderState(r["state"]),
                        tuple(
                            OrderLine(
                                x["sku"],
                                x["product_name"],
                                x["quantity"],
                                x["unit_price_minor"],
                                x["currency"],
                            )
                            for x in lines
                        ),
                        r["total_minor"],
                        r["currency"],
                        r["cancel_reason"],
                        r["placed_at"],
                        r["updated_at"],
                    )
                )
            return UserSummary(user_id, counts, spent, tuple(orders))

        return await self.db.read(read, snapshot=True)


def _state_from_row(row: Row) -> ProjectionState:
    return ProjectionState(
        row["applied_sequence"],
        row["last_occurred_at"],
        row["applied"],
        row["skipped"],
        row["parked"],
    )


async def _remember_names(tx: Tx, names: Mapping[str, str]) -> None:
    await tx.executemany(
        "INSERT INTO product_names (sku, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
        sorted(names.items()),
    )


async def _apply_effect(tx: Tx, event: Event, names: Mapping[str, str]) -> None:
    effect = event.effect
    if isinstance(effect, Sale):
        await _apply_sale(tx, effect, utc_day(event.occurred_at), names)
    elif isinstance(effect, OrderChange):
        await _apply_order(tx, event, effect, names)


async def _apply_sale(tx: Tx, sale: Sale, day: str, names: Mapping[str, str]) -> None:
    for line in sorted(sale.lines, key=lambda x: x.sku):  # one lock order everywhere
        revenue = line.quantity * (line.unit_price_minor or 0)
        name = names.get(line.sku, "")
        await tx.execute(
            "INSERT INTO sku_day_sales (day, sku, currency, product_name, units, revenue_minor)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (day, sku, currency) DO UPDATE SET"
            " units = sku_day_sales.units + excluded.units,"
            " revenue_minor = sku_day_sales.revenue_minor + excluded.revenue_minor",
            (day, line.sku, line.currency, name, line.quantity, revenue),
        )
        await tx.execute(
            "INSERT INTO product_sales (sku, currency, product_name, units, revenue_minor)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (sku, currency) DO UPDATE SET"
            " units = product_sales.units + excluded.units,"
            " revenue_minor = product_sales.revenue_minor + excluded.revenue_minor",
            (line.sku, line.currency, name, line.quantity, revenue),
        )


async def _apply_order(tx: Tx, event: Event, change: OrderChange, names: Mapping[str, str]) -> None:
    if change.state is OrderState.CONFIRMED and change.total_minor is not None:
        await tx.execute(
            "INSERT INTO day_revenue (day, currency, orders, revenue_minor) VALUES (?, ?, 1, ?)"
            " ON CONFLICT (day, currency) DO UPDATE SET orders = day_revenue.orders + 1,"
            " revenue_minor = day_revenue.revenue_minor + excluded.revenue_minor",
            (utc_day(event.occurred_at), change.currency, change.total_minor),
        )
    # Two instances on one database would both read-modify-write the order's row.
    await tx.lock(f"reporting-order:{change.order_id}")
    found = await tx.fetchone(
        "SELECT event_sequence, placed_at FROM user_orders WHERE order_id = ?",
        (change.order_id,),
    )
    if found is None:
        await tx.execute(
            "INSERT INTO user_orders (order_id, user_id, state, event_sequence, total_minor,"
            " currency, cancel_reason, placed_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                change.order_id,
                change.user_id,
                change.state.value,
                event.sequence,
                change.total_minor,
                change.currency,
                change.cancel_reason,
                event.occurred_at,
                event.occurred_at,
            ),
        )
    elif event.sequence > found["event_sequence"]:
        await tx.execute(
            "UPDATE user_orders SET state = ?, event_sequence = ?, total_minor = ?,"
            " currency = ?, cancel_reason = ?, updated_at = ?, placed_at = ? WHERE order_id = ?",
            (
                change.state.value,
                event.sequence,
                change.total_minor,
                change.currency,
                change.cancel_reason,
                event.occurred_at,
                min(found["placed_at"], event.occurred_at),
                change.order_id,
            ),
        )
        await tx.execute("DELETE FROM user_order_lines WHERE order_id = ?", (change.order_id,))
    else:  # an older event arriving late: only the place time may move back
        await tx.execute(
            "UPDATE user_orders SET placed_at = ? WHERE order_id = ?",
            (min(found["placed_at"], event.occurred_at), change.order_id),
        )
        return
    await tx.executemany(
        "INSERT INTO user_order_lines (order_id, sku, product_name, quantity,"
        " unit_price_minor, currency) VALUES (?, ?, ?, ?, ?, ?)",
        [_line_row(change.order_id, line, names) for line in change.lines],
    )


def _line_row(order_id: str, line: Line, names: Mapping[str, str]) -> tuple[object, ...]:
    return (
        order_id,
        line.sku,
        names.get(line.sku, ""),
        line.quantity,
        line.unit_price_minor,
        line.currency,
    )


async def _advance(tx: Tx, events: Sequence[Event], counts: Mapping[Outcome, int]) -> None:
    """Moves the consumer's position to the batch's highest stream sequence and adds the
    counts. Locked: another instance's batch may be committing beside this one."""
    await tx.lock("reporting-projection-state")
    await tx.execute("INSERT INTO projection_state (id) VALUES (1) ON CONFLICT DO NOTHING")
    row = await tx.fetchone("SELECT * FROM projection_state")
    assert row is not None
    state = _state_from_row(row)
    sequence, occurred_at = state.applied_sequence, state.last_occurred_at
    for event in events:
        if event.stream_sequence > sequence:
            sequence = event.stream_sequence
            occurred_at = event.occurred_at if event.outcome is not Outcome.PARK else occurred_at
    await tx.execute(
        "UPDATE projection_state SET applied_sequence = ?, last_occurred_at = ?,"
        " applied = applied + ?, skipped = skipped + ?, parked = parked + ? WHERE id = 1",
        (
            sequence,
            occurred_at,
            counts[Outcome.APPLY],
            counts[Outcome.SKIP],
            counts[Outcome.PARK],
        ),
    )
