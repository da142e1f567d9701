"""The bus: raw bars and candle updates between the parts. One interface, one module per backend."""

from speedlayer.bus.base import (
    RAW_TOPIC,
    Bus,
    Overflow,
    Subscription,
    candle_topic,
)
from speedlayer.errors import SubscriptionClosed

__all__ = ["RAW_TOPIC", "Bus", "Overflow", "Subscription", "SubscriptionClosed", "candle_topic"]
