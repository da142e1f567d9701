"""The candle store: one interface (``base.Store``), one module per backend."""

from speedlayer.store.base import Order, Store

__all__ = ["Order", "Store"]
