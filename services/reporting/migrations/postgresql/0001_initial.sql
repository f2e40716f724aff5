-- The reporting service's read model (docs/reporting.md): tables shaped for its queries,
-- filled only by the events it consumes. This is PostgreSQL's spelling (BIGINT for counts
-- and money, DOUBLE PRECISION for times);
-- ../sqlite/0001_initial.sql is SQLite's.
-- Every event applied, by id, written in the same transaction as its effect: a
-- redelivered event finds its row and changes nothing.
CREATE TABLE IF NOT EXISTS applied_events (
    event_id TEXT PRIMARY KEY,
    stream_sequence BIGINT NOT NULL,
    type TEXT NOT NULL
);
-- One row (written by the first event applied): where the consumer is, and what it
-- skipped or parked.
CREATE TABLE IF NOT EXISTS projection_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    applied_sequence BIGINT NOT NULL DEFAULT 0,
    last_occurred_at DOUBLE PRECISION,
    applied BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0,
    parked BIGINT NOT NULL DEFAULT 0
);
-- Product names as inventory gave them, asked once per SKU.
CREATE TABLE IF NOT EXISTS product_names (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL
);
-- StockCommitted: units and revenue per product per UTC day.
CREATE TABLE IF NOT EXISTS sku_day_sales (
    day TEXT NOT NULL,
    sku TEXT NOT NULL,
    currency TEXT NOT NULL,
    product_name TEXT NOT NULL,
    units BIGINT NOT NULL,
    revenue_minor BIGINT NOT NULL,
    PRIMARY KEY (day, sku, currency)
);
-- StockCommitted: units and revenue per product, all time (top products).
CREATE TABLE IF NOT EXISTS product_sales (
    sku TEXT NOT NULL,
    currency TEXT NOT NULL,
    product_name TEXT NOT NULL,
    units BIGINT NOT NULL,
    revenue_minor BIGINT NOT NULL,
    PRIMARY KEY (sku, currency)
);
CREATE INDEX IF NOT EXISTS product_sales_by_units ON product_sales (units DESC, sku);
-- OrderConfirmed: confirmed orders and their totals per UTC day.
CREATE TABLE IF NOT EXISTS day_revenue (
    day TEXT NOT NULL,
    currency TEXT NOT NULL,
    orders BIGINT NOT NULL,
    revenue_minor BIGINT NOT NULL,
    PRIMARY KEY (day, currency)
);
-- OrderPlaced, OrderConfirmed, OrderCancelled: each user's orders, as the order's latest
-- event (by its per-order sequence) says.
CREATE TABLE IF NOT EXISTS user_orders (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    state TEXT NOT NULL,
    event_sequence BIGINT NOT NULL,
    total_minor BIGINT,
    currency TEXT NOT NULL DEFAULT '',
    cancel_reason TEXT NOT NULL DEFAULT '',
    placed_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS user_orders_by_user ON user_orders (user_id, placed_at DESC, order_id);
CREATE TABLE IF NOT EXISTS user_order_lines (
    order_id TEXT NOT NULL REFERENCES user_orders (order_id),
    sku TEXT NOT NULL,
    product_name TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    unit_price_minor BIGINT,
    currency TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (order_id, sku)
);
