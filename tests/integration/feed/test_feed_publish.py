"""The Polygon feed keeps a batch it cannot publish, over real sockets against the simulator.

A ``FlakyBus`` (the in-memory bus whose ``publish`` raises ``BusError`` for its first ``fail``
calls, or always) sits between ``PolygonFeed`` and a tap on the raw topic:

* live: the simulator replays a CSV (no faults, no backfill, so every bar is sent exactly once);
  every bar sent must reach the raw topic exactly once, the failed batch being the one retried,
  with the failures and retries counted and ``problem()`` saying so until the publish succeeds;
* backfill: the start-up REST backfill's publishes fail first, and every history bar still
  arrives exactly once;
* a bus that never recovers: past ``publish_deadline_s`` the feed fails for good with
  ``ServiceFailed`` and publishes nothing more.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.polygon import PolygonConfig, PolygonFeed
from ingest.simulator import PolygonSimulator, SimulatorConfig
from ingest.synthetic import RandomWalk, symbol_names, write_csv
from speedlayer.bus.base import RAW_TOPIC, Subscription
from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import Clock
from speedlayer.errors import BusError, ServiceFailed
from speedlayer.models import MINUTE_MS, Bar

pytestmark = pytest.mark.timeout(60)

DATA_START = 1_704_210_600_000  # 2024-01-02 15:50:00Z
LEAD_MINUTES = 3  # empty minutes before the data: time for the feed to subscribe
DATA_MINUTES = 6
SYMBOLS = 10  # the first 10 symbols of a RandomWalk trade every minute
SPEED = 20.0  # simulated minutes per wall second


class FlakyBus(MemoryBus):
    """A memory bus whose raw-topic ``publish`` raises ``BusError`` for the first ``fail`` calls
    (every call when ``fail`` is None); each call is recorded with what ``probe()`` said then."""

    def __init__(self, fail: int | None) -> None:
        super().__init__()
        self.fail = fail
        self.calls: list[tuple[list[Any], str | None]] = []  # (batch, probe() at the call)
        self.probe: Callable[[], str | None] = lambda: None

    async def publish(self, topic: str, batch: Sequence[Any]) -> None:
        if topic == RAW_TOPIC:
            self.calls.append((list(batch), self.probe()))
            if self.fail is None or len(self.calls) <= self.fail:
                raise BusError(f"raw topic unavailable (call {len(self.calls)})")
        await super().publish(topic, batch)


class Tap:
    """Every bar published on the raw topic, in order."""

    def __init__(self, bus: MemoryBus) -> None:
        self.subscription: Subscription = bus.subscribe([RAW_TOPIC], maxsize=100_000)
        self.bars: list[Bar] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for _, batch in self.subscription:
            self.bars.extend(batch)

    async def stop(self) -> None:
        self.subscription.close()
        await asyncio.wait_for(self.task, 5)


def feed_config(sim: PolygonSimulator, **changes: Any) -> PolygonConfig:
    options: dict[str, Any] = {
        "api_key": "simulator",
        "ws_url": sim.ws_url,
        "rest_url": sim.rest_url,
        "symbols": ["*"],
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "backfill_lookback_min": 0,
        **changes,
    }
    return PolygonConfig(**options)


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def replay(tmp_path: Path) -> Path:
    bars = RandomWalk(symbol_names(SYMBOLS), 5).bars(DATA_START, DATA_MINUTES)
    path = tmp_path / "bars.csv"
    write_csv(bars, str(path))
    return path


@pytest.fixture
async def feeds() -> AsyncIterator[list[PolygonFeed]]:
    started: list[PolygonFeed] = []
    yield started
    for feed in started:
        await feed.stop()


async def start_feed(
    feeds: list[PolygonFeed], config: PolygonConfig, bus: FlakyBus, clock: Clock
) -> PolygonFeed:
    feed = PolygonFeed(config, bus, clock)
    bus.probe = feed.problem
    feeds.append(feed)
    await feed.start()
    return feed


async def test_live_batches_are_retried_until_published_and_none_is_lost(
    replay: Path, feeds: list[PolygonFeed]
) -> None:
    fail = 4
    config = SimulatorConfig(
        speed=SPEED, replay=[str(replay)], start_ms=DATA_START - LEAD_MINUTES * MINUTE_MS
    )
    async with PolygonSimulator(config) as sim, FlakyBus(fail) as bus:
        tap = Tap(bus)
        feed = await start_feed(feeds, feed_config(sim), bus, sim.clock)
        await feed.wait_connected(5)
        assert sim.stats.bars_emitted == 0, "the feed subscribed after the first bars were sent"
        assert feed.problem() is None

        await wait_until(lambda: sim.finished, 30, "the simulator to finish")
        sent = sim.stats.bars_emitted
        await wait_until(lambda: len(tap.bars) >= sent, 15, f"{sent} bars on the raw topic")
        await asyncio.sleep(0.2)  # nothing more may follow
        await tap.stop()

        served = sim.served()
        assert sent == len(served) == DATA_MINUTES * SYMBOLS  # no faults: each bar sent once
        received = Counter((bar.symbol, bar.t) for bar in tap.bars)
        assert set(received) == set(served)
        assert set(received.values()) == {1}, "a bar arrived more than once"
        assert {(bar.symbol, bar.t): bar for bar in tap.bars} == served

        # the batch that failed is the one published in the end: kept, not dropped
        batches = [batch for batch, _ in bus.calls]
        assert all(batch == batches[0] for batch in batches[: fail + 1])
        stats = feed.stats
        assert stats.publish_errors == fail
        assert stats.publish_retries == fail
        assert stats.bars_published == sent
        # problem() reports the failure at every retry, and nothing once the publish succeeded
        probes = [probe for _, probe in bus.calls]
        assert probes[0] is None
        for probe in probes[1 : fail + 1]:
            assert probe is not None
            assert probe.startswith("publishing to the raw topic failing since ")
            assert "raw topic unavailable" in probe
        assert all(probe is None for probe in probes[fail + 1 :])
        assert feed.problem() is None
        assert feed.failed is None


async def test_backfill_batches_are_retried_until_published(feeds: list[PolygonFeed]) -> None:
    fail = 3
    lookback = 8
    async with PolygonSimulator(SimulatorConfig(symbols=5)) as sim, FlakyBus(fail) as bus:
        symbols = sim.symbols[:3]
        tap = Tap(bus)
        config = feed_config(sim, symbols=symbols, backfill_lookback_min=lookback)
        feed = await start_feed(feeds, config, bus, sim.clock)
        await feed.wait_connected(5)
        await asyncio.wait_for(feed.backfill_idle(), 20)
        await asyncio.sleep(0.1)
        await tap.stop()

        # the truth: the simulator's REST history of the last full minutes before live data
        first = sim.live_start_ms - (lookback - 1) * MINUTE_MS
        expected = set()
        async with httpx.AsyncClient(base_url=sim.rest_url) as http:
            for symbol in symbols:
                path = f"/v2/aggs/ticker/{symbol}/range/1/minute/{first}/{sim.live_start_ms - 1}"
                response = await http.get(path, params={"apiKey": "k"})
                expected |= {(symbol, item["t"]) for item in response.json().get("results", [])}
        assert expected, "the simulator has no history to backfill"

        history = Counter((bar.symbol, bar.t) for bar in tap.bars if bar.t < sim.live_start_ms)
        assert expected <= set(history)
        assert set(history.values()) == {1}, "a backfilled bar arrived more than once"
        stats = feed.stats
        assert stats.publish_errors == fail
        assert stats.publish_retries == fail
        assert not stats.backfill_errors
        assert stats.backfill_bars >= len(expected)
        assert feed.problem() is None
        assert feed.failed is None


async def test_a_publish_failing_past_its_deadline_fails_the_feed(
    replay: Path, feeds: list[PolygonFeed]
) -> None:
    config = SimulatorConfig(
        speed=SPEED, replay=[str(replay)], start_ms=DATA_START - LEAD_MINUTES * MINUTE_MS
    )
    async with PolygonSimulator(config) as sim, FlakyBus(None) as bus:
        tap = Tap(bus)
        feed_options = feed_config(sim, publish_deadline_s=0.5)
        feed = await start_feed(feeds, feed_options, bus, sim.clock)
        await feed.wait_connected(5)

        await wait_until(lambda: bus.calls != [], 10, "the first publish")
        assert feed.problem() is not None and feed.failed is None  # still retrying
        await wait_until(lambda: feed.failed is not None, 5, "the feed to fail")
        assert isinstance(feed.failed, ServiceFailed)
        assert "raw topic unavailable" in str(feed.failed)
        assert feed.problem() == str(feed.failed)
        with pytest.raises(ServiceFailed):
            await feed.wait_connected(1)

        # it stops publishing: no batch is dropped to carry on with the next one
        calls = len(bus.calls)
        await wait_until(lambda: sim.finished, 30, "the simulator to finish")
        assert len(bus.calls) == calls
        assert all(batch == bus.calls[0][0] for batch, _ in bus.calls)
        assert feed.stats.bars_published == 0
        await tap.stop()
        assert tap.bars == []
