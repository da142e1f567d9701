"""The processing service: raw bars from the bus -> pipeline -> candle updates on the bus.

One task consumes the raw topic (draining whatever is queued into one pipeline batch, so a burst
is stored and published in few round trips), one ticks the clock to finalize candles, and one logs
throughput and feed lag. Pipeline calls are serialized by a lock: the resampler is not re-entrant.

The raw subscription is named ``consumer`` and commits its position itself, after each batch is
stored and published (``Subscription.commit``): on a bus with durable positions (Kinesis) a
restarted runner resumes after the last batch it finished, so a crash loses nothing. With
``exit_on_error`` (the standalone ``speedlayer process`` service) a batch that still fails after
the pipeline's retries stops consumption without committing it and sets ``failed``; the service
exits and its restart retries the batch. Without it (the embedded stack) the batch is logged and
skipped, as the feed's backfill or a replay re-delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from processors.pipeline import CandlePipeline
from speedlayer.bus.base import RAW_TOPIC, Bus, Subscription, candle_topic
from speedlayer.clock import Clock
from speedlayer.models import Bar, Candle

log = logging.getLogger(__name__)


class CandlePublisher:
    """Publishes candle updates on the bus, one topic per interval."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def __call__(self, candles: Sequence[Candle]) -> None:
        by_interval: dict[str, list[Candle]] = {}
        for candle in candles:
            by_interval.setdefault(candle.interval, []).append(candle)
        for interval, batch in by_interval.items():
            await self.bus.publish(candle_topic(interval), batch)


class PipelineRunner:
    def __init__(
        self,
        pipeline: CandlePipeline,
        bus: Bus,
        clock: Clock,
        *,
        max_batch: int = 50_000,
        tick_s: float = 1.0,
        stats_every_s: float = 5.0,
        queue_batches: int = 1024,
        consumer: str = "speedlayer",
        exit_on_error: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.bus = bus
        self.clock = clock
        self.max_batch = max_batch
        self.tick_s = tick_s
        self.stats_every_s = stats_every_s
        self.queue_batches = queue_batches
        self.consumer = consumer
        self.exit_on_error = exit_on_error
        self.failed = asyncio.Event()  # set when consumption stopped on a failed batch
        self.failure: BaseException | None = None
        self.last_bar_end_ms = 0
        self.bars_in = 0
        self.candles_out = 0
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        if self.pipeline.publish is None:
            self.pipeline.publish = CandlePublisher(self.bus)
        await self.pipeline.recover()
        self._subscription = self.bus.subscribe(
            [RAW_TOPIC], maxsize=self.queue_batches, overflow="block", consumer=self.consumer
        )
        self._subscription.auto_commit = False  # commit after processing (no await before this)
        self._tasks = [
            asyncio.create_task(self._consume(self._subscription), name="pipeline-consume"),
            asyncio.create_task(self._tick(), name="pipeline-tick"),
            asyncio.create_task(self._report(), name="pipeline-stats"),
        ]

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close("runner stopped")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def lag_ms(self) -> int | None:
        """Now minus the end of the newest bar processed (None before the first bar)."""
        if not self.last_bar_end_ms:
            return None
        return self.clock.now_ms() - self.last_bar_end_ms

    async def _consume(self, subscription: Subscription) -> None:
        queue = subscription.queue
        async for _, batch in subscription:
            bars: list[Bar] = list(batch)
            while len(bars) < self.max_batch and not queue.empty():
                try:
                    _, more = await subscription.get()
                except Exception:
                    break
                bars.extend(more)
            error = await self._process(bars)
            if error is not None and self.exit_on_error:
                self.failure = error
                self.failed.set()
                return  # not committed: a restart resumes before this batch
            try:
                await subscription.commit()
            except Exception:  # the next commit covers this batch too
                log.exception("storing the consumer position failed; retrying at the next batch")

    async def process(self, bars: Sequence[Bar]) -> None:
        await self._process(bars)

    async def _process(self, bars: Sequence[Bar]) -> Exception | None:
        if not bars:  # e.g. only a position marker (the end of a closed shard)
            return None
        async with self._lock:
            try:
                result = await self.pipeline.handle(bars)
            except Exception as exc:
                # Nothing is lost by skipping: the store keeps what was written, and the feed's
                # backfill or a replay re-delivers; but make the failure loud.
                log.exception("pipeline failed on a batch of %d bars", len(bars))
                return exc
        self.bars_in += len(bars)
        self.candles_out += len(result.candles)
        newest = max((bar.t for bar in bars), default=0) + 60_000
        if newest > self.last_bar_end_ms:
            self.last_bar_end_ms = newest
        return None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            async with self._lock:
                try:
                    candles = await self.pipeline.tick()
                except Exception:
                    log.exception("finalizing candles failed")
                    continue
            self.candles_out += len(candles)

    async def _report(self) -> None:
        last = time.monotonic()
        bars, candles = self.bars_in, self.candles_out
        while True:
            await asyncio.sleep(self.stats_every_s)
            now = time.monotonic()
            elapsed = now - last
            lag = self.lag_ms()
            log.info(
                "bars in %.0f/s, candles out %.0f/s, feed lag %s, open buckets %d",
                (self.bars_in - bars) / elapsed,
                (self.candles_out - candles) / elapsed,
                "n/a" if lag is None else f"{lag / 1000:.1f}s",
                self.pipeline.resampler.open_bucket_count(),
            )
            last, bars, candles = now, self.bars_in, self.candles_out
