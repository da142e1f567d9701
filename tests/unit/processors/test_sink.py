"""The candle sink's contract (processors/sink.py) on the in-memory bus and store: per key the
highest revision is stored whatever order the updates come in; a failing write is retried and
reported while it lasts; past the deadline the sink stops, failed, with nothing skipped silently."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from processors.sink import CandleSink, newest_per_key
from speedlayer.bus.base import candle_topic
from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import ManualClock
from speedlayer.errors import ServiceFailed, StoreError
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import Candle
from speedlayer.store.memory import MemoryStore
from tests.waiting import until

T0 = 1_704_204_000_000  # 2024-01-02T14:00Z
INTERVALS = IntervalSet(list(DEFAULT_INTERVALS), {"*": "100y"})


def candle(symbol: str, minute: int, revision: int, close: float) -> Candle:
    return Candle(
        symbol=symbol, interval="1m", timestamp=T0 + minute * 60_000, open=10.0, high=11.0,
        low=9.0, close=close, volume=100.0, vwap=None, trades=None, bars=1, final=False,
        revision=revision, ttl=T0 // 1000 + 10**9,
    )  # fmt: skip


class FailingStore(MemoryStore):
    """Fails the next ``failures`` upserts."""

    def __init__(self, failures: int) -> None:
        super().__init__(INTERVALS, ManualClock(T0))
        self.failures = failures

    async def upsert(self, candles: Sequence[Candle]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("database or disk is full")
        return await super().upsert(candles)


def test_newest_per_key_keeps_the_highest_revision_in_any_order() -> None:
    updates = [candle("AAA", 0, 5, 1.0), candle("AAA", 0, 9, 2.0), candle("AAA", 0, 7, 3.0),
               candle("BBB", 0, 1, 4.0)]  # fmt: skip
    assert [(c.symbol, c.revision) for c in newest_per_key(updates)] == [("AAA", 9), ("BBB", 1)]


async def test_a_failing_write_is_retried_and_the_newest_revision_stored() -> None:
    store = FailingStore(failures=3)
    async with store, MemoryBus() as bus:
        sink = CandleSink(store, bus, ["1m"], retry_deadline_s=None)
        await sink.start()
        try:
            await bus.publish(
                candle_topic("1m"), [candle("AAA", 0, 9, 2.0), candle("AAA", 0, 4, 1.0)]
            )
            await until(lambda: sink.candles_written == 1)
            assert sink.write_retries == 3 and sink.problem() is None
            assert not sink.failed.is_set()
            [stored] = await store.query("AAA", INTERVALS.get("1m"))
            assert (stored.revision, stored.close) == (9, 2.0)
        finally:
            await sink.stop()


async def test_a_write_failing_past_the_deadline_stops_the_sink() -> None:
    store = FailingStore(failures=10**9)
    async with store, MemoryBus() as bus:
        sink = CandleSink(store, bus, ["1m"], retry_deadline_s=0.2)
        await sink.start()
        try:
            await bus.publish(candle_topic("1m"), [candle("AAA", 0, 1, 1.0)])
            await asyncio.wait_for(sink.failed.wait(), 10)
            assert isinstance(sink.failure, ServiceFailed)
            assert "disk is full" in str(sink.failure)
            assert "sink stopped" in (sink.problem() or "")
            assert sink.candles_written == 0
            # Nothing more is consumed once failed.
            await bus.publish(candle_topic("1m"), [candle("BBB", 0, 1, 1.0)])
            await asyncio.sleep(0.1)
            assert await store.query("BBB", INTERVALS.get("1m")) == []
        finally:
            await sink.stop()
