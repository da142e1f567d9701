"""The processing service: raw bars from the bus -> pipeline -> candle updates on the bus.

One task consumes the raw topic (draining whatever is queued into one pipeline batch, so a burst
is stored and published in few round trips), one ticks the clock to finalize candles, and one logs
throughput and feed lag. Pipeline calls are serialized by a lock: the resampler is not re-entrant.

The raw subscription is named ``consumer`` and commits its position itself, after each batch is
stored and published (``Subscription.commit``): on a bus with durable positions (Kinesis, Kafka)
a restarted runner resumes after the last batch it finished, so a crash loses nothing.

Supervision (docs/design.md#failure-policy, processors.supervisor). The runner owns its tasks
and notices when one ends. The pipeline retries failed writes itself (``problem()`` says so
meanwhile); a batch that still fails (past the retry deadline, or a non-retriable error), a
consumer that dies under the subscription (``Subscription.failed``), or any task that ends on its
own, stops consumption *without committing* and sets ``failed`` with the reason in ``failure``:
the service then exits with an error, and its restart resumes before the batch (on the embedded
stack, the feed's start-up backfill re-delivers what the store lacks). A failed batch is never
skipped.

Garbage collection between bursts. A live feed delivers a minute's bars in a burst of about a
second, then nothing for the rest of the minute, and nearly all of the process's allocations
happen in the bursts; so the collector's thresholds are crossed, and its passes (a full one over
the resampler's state takes tens of milliseconds) stop the process, mostly while a burst is being
processed, where they add to the bars' latency. The runner's fourth task therefore makes a full
collection once the pipeline has been idle for ``idle_collect_s`` after a batch: the counters start
each burst at zero, so the passes a burst triggers are young-generation ones. The pause is long
enough (2 s) for the API's hub to have delivered the burst's candles to its WebSocket clients
(a few hundred ms with 1,000 clients), which a collection in the midst of would hold up. A feed
without pauses (a replay, a saturated bus) never triggers it, and the collector's own thresholds
apply as before.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence

from processors.pipeline import CandlePipeline
from processors.supervisor import Supervisor
from speedlayer.bus.base import RAW_TOPIC, Bus, Subscription, candle_topic
from speedlayer.clock import Clock
from speedlayer.errors import ServiceFailed
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


class PipelineRunner(Supervisor):
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
        idle_collect_s: float | None = 2.0,
    ) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.bus = bus
        self.clock = clock
        self.max_batch = max_batch
        self.tick_s = tick_s
        self.stats_every_s = stats_every_s
        self.queue_batches = queue_batches
        self.consumer = consumer
        self.idle_collect_s = idle_collect_s
        self.idle_collections = 0
        self.last_bar_end_ms = 0
        self.bars_in = 0
        self._last_batch_at: float | None = None  # monotonic; None once collected after it
        self.candles_out = 0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self.pipeline.publish is None:
            self.pipeline.publish = CandlePublisher(self.bus)
        await self.pipeline.recover()
        self._subscription = subscription = self.bus.subscribe(
            [RAW_TOPIC], maxsize=self.queue_batches, overflow="block", consumer=self.consumer
        )
        subscription.auto_commit = False  # commit after processing (no await before this)
        tasks = {
            "pipeline-consume": self._consume(subscription),
            "pipeline-tick": self._tick(),
            "pipeline-stats": self._report(),
        }
        if self.idle_collect_s is not None:
            tasks["pipeline-gc"] = self._collect_when_idle(self.idle_collect_s)
        self._start_tasks(tasks)

    def problem(self) -> str | None:
        """None while the runner works; else why it stopped, or the write being retried."""
        if self.failure is not None:
            return f"pipeline stopped: {self.failure}"
        return self.pipeline.problem()

    def lag_ms(self) -> int | None:
        """Now minus the end of the newest bar processed (None before the first bar)."""
        if not self.last_bar_end_ms:
            return None
        return self.clock.now_ms() - self.last_bar_end_ms

    async def _consume(self, subscription: Subscription) -> None:
        await self._consume_batches(subscription, self._process, self.max_batch, "raw topic")

    async def _process(self, bars: Sequence[Bar]) -> None:
        if not bars:  # e.g. only a position marker (the end of a closed shard)
            return
        async with self._lock:
            try:
                result = await self.pipeline.handle(bars)
            except Exception as exc:
                log.exception("pipeline failed on a batch of %d bars; stopping", len(bars))
                raise ServiceFailed(f"a batch of {len(bars)} bars failed: {exc}") from exc
        self._last_batch_at = time.monotonic()
        self.bars_in += len(bars)
        self.candles_out += len(result.candles)
        newest = max((bar.t for bar in bars), default=0) + 60_000
        if newest > self.last_bar_end_ms:
            self.last_bar_end_ms = newest

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            async with self._lock:
                try:
                    candles = await self.pipeline.tick()
                except Exception as exc:
                    raise ServiceFailed(f"finalizing candles failed: {exc}") from exc
            self.candles_out += len(candles)

    async def _collect_when_idle(self, idle_s: float) -> None:
        """A full garbage collection once per pause of ``idle_s`` after a batch (see above)."""
        while True:
            await asyncio.sleep(idle_s / 2)
            last = self._last_batch_at
            if last is None or time.monotonic() - last < idle_s or not gc.isenabled():
                continue
            gc.collect()
            self._last_batch_at = None
            self.idle_collections += 1

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
