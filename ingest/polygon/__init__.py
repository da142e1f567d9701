"""The Polygon.io (Massive) client: the live WebSocket feed of 1-minute aggregates
(``client``), the REST aggregates client and gap backfill (``rest``), and the wire format they
share with the file readers (``protocol``)."""

from ingest.polygon.client import FeedStats, PolygonConfig, PolygonFeed
from ingest.polygon.protocol import (
    CHANNEL_PREFIX,
    MINUTE_EVENTS,
    Record,
    Rejected,
    from_event,
    from_rest_result,
    redact,
    rest_ticker,
    subscribe_params,
)
from ingest.polygon.rest import AggsClient, Backfiller, LiveRegister

__all__ = [
    "CHANNEL_PREFIX",
    "MINUTE_EVENTS",
    "AggsClient",
    "Backfiller",
    "FeedStats",
    "LiveRegister",
    "PolygonConfig",
    "PolygonFeed",
    "Record",
    "Rejected",
    "from_event",
    "from_rest_result",
    "redact",
    "rest_ticker",
    "subscribe_params",
]
