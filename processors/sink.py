"""The sink: candle updates from the bus's candle topics into the store.

On the Flink path (flink_sql/, docs/flink.md) the job publishes candles to the same topics the
embedded pipeline does, and this service stores them: ``speedlayer sink --bus kafka``. Per batch
it keeps the highest revision of each key and upserts them; the store never replaces a higher
revision (docs/design.md#store-contract), so redelivered or reordered updates converge.

The subscription is durable (``consumer``) and committed only after the batch is stored. A write
is retried with backoff until ``retry_deadline_s``; past it, or on a non-retriable error, or when
the consumer under the subscription dies, the sink fails without committing (see
processors.supervisor) and the service exits with an error; its restart resumes at the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from processors.supervisor import Supervisor
from speedlayer.bus.base import Bus, Subscription, candle_topic
from speedlayer.errors import ServiceFailed
from speedlayer.models import Candle
from speedlayer.retry import Backoff, retry
from speedlayer.store.base import Store

log = logging.getLogger(__name__)


def newest_per_key(candles: Iterable[Candle]) -> list[Candle]:
    """The highest revision of each (symbol, interval, timestamp), in first-seen key order."""
    out: dict[tuple[str, str, int], Candle] = {}
    for candle in candles:
        key = (candle.symbol, candle.interval, candle.timestamp)
        held = out.get(key)
        if held is None or candle.revision > held.revision:
            out[key] = candle
    return list(out.values())


class CandleSink(Supervisor):
    def __init__(
        self,
        store: Store,
        bus: Bus,
        intervals: Sequence[str],
        *,
        consumer: str = "speedlayer-sink",
        retry_deadline_s: float | None = 300.0,
        max_batch: int = 20_000,
        queue_batches: int = 1024,
        stats_every_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.store = store
        self.bus = bus
        self.topics = [candle_topic(name) for name in intervals]
        self.consumer = consumer
        self.retry_deadline_s = retry_deadline_s
        self.max_batch = max_batch
        self.queue_batches = queue_batches
        self.stats_every_s = stats_every_s
        self.candles_in = 0
        self.candles_written = 0
        self.write_retries = 0
        self.last_error: str | None = None

    async def start(self) -> None:
        self._subscription = subscription = self.bus.subscribe(
            self.topics, maxsize=self.queue_batches, overflow="block", consumer=self.consumer
        )
        subscription.auto_commit = False  # commit after storing (no await before this)
        self._start_tasks(
            {"sink-consume": self._consume(subscription), "sink-stats": self._report()}
        )

    def problem(self) -> str | None:
        """None while the sink works; else why it stopped, or the write being retried."""
        if self.failure is not None:
            return f"sink stopped: {self.failure}"
        if self.last_error is not None:
            return f"store write failing ({self.write_retries} retries): {self.last_error}"
        return None

    async def _consume(self, subscription: Subscription) -> None:
        await self._consume_batches(subscription, self._write, self.max_batch, "candle topic")

    def _failed_once(self, error: BaseException, _failures: int) -> None:
        self.write_retries += 1
        self.last_error = str(error)

    async def _write(self, candles: Sequence[Candle]) -> None:
        if not candles:
            return
        writes = newest_per_key(candles)
        try:
            await retry(
                lambda: self.store.upsert(writes),
                what=f"storing {len(writes)} candles",
                backoff=Backoff(timeout_s=self.retry_deadline_s),
                on_failure=self._failed_once,
            )
        except Exception as exc:
            raise ServiceFailed(f"a batch of {len(writes)} candles failed: {exc}") from exc
        self.last_error = None
        self.candles_in += len(candles)
        self.candles_written += len(writes)

    async def _report(self) -> None:
        last = time.monotonic()
        seen = self.candles_in
        while True:
            await asyncio.sleep(self.stats_every_s)
            now = time.monotonic()
            log.info("sink: candles in %.0f/s, %d written", (self.candles_in - seen) / (now - last),
                     self.candles_written)  # fmt: skip
            last, seen = now, self.candles_in
