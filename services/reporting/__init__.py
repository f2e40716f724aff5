"""The reporting service: a read model (CQRS) built from every event of SHOP_EVENTS."""
