"""The Polygon.io (Massive) protocol simulator: a local server of the minute-aggregate WebSocket
stream and the REST aggregates endpoint (``server``), its data side (``data``: market conventions,
event encoding, the REST bar store), fault planning (``faults``) and REST handler (``rest``)."""

from ingest.simulator.data import MARKETS, BarStore, EventEncoder, MarketSpec
from ingest.simulator.faults import BurstPlanner
from ingest.simulator.rest import RestApi
from ingest.simulator.server import (
    FaultConfig,
    PolygonSimulator,
    SimulatedClock,
    SimulatorConfig,
    SimulatorStats,
)

__all__ = [
    "MARKETS",
    "BarStore",
    "BurstPlanner",
    "EventEncoder",
    "FaultConfig",
    "MarketSpec",
    "PolygonSimulator",
    "RestApi",
    "SimulatedClock",
    "SimulatorConfig",
    "SimulatorStats",
]
