"""The candle pipeline: bars -> resampler -> store -> candle publishers.

It owns the order that makes restarts safe: restore the buckets the store may know about, apply
the batch, write every changed candle, publish, and only then let the resampler evict state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from processors.resampler import BatchResult, Resampler, RestoreRequest
from speedlayer.errors import StoreError
from speedlayer.models import Bar, Candle
from speedlayer.store.base import Store

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Candle]], Awaitable[None]]


@dataclass
class PipelineStats:
    batches: int = 0
    bars_accepted: int = 0
    bars_duplicate: int = 0
    candles_published: int = 0
    rows_written: int = 0
    buckets_restored: int = 0


class CandlePipeline:
    def __init__(
        self,
        resampler: Resampler,
        store: Store,
        publish: Publish | None = None,
        *,
        retry_attempts: int = 8,
        retry_initial_s: float = 0.05,
    ) -> None:
        self.resampler = resampler
        self.store = store
        self.publish = publish
        self.retry_attempts = retry_attempts
        self.retry_initial_s = retry_initial_s
        self.stats = PipelineStats()

    async def recover(self) -> int:
        """Load the store's non-final candles so they are finalized on schedule after a restart."""
        requests = []
        for interval in self.resampler.intervals:
            for candle in await self.store.forming(interval):
                requests.append(
                    RestoreRequest(
                        candle.symbol,
                        candle.timestamp,
                        candle.timestamp + interval.interval_ms,
                        ((interval, candle.timestamp),),
                    )
                )
        await self._restore(requests)
        if requests:
            log.info("resuming %d forming candles from the store", len(requests))
        return len(requests)

    async def handle(self, bars: Sequence[Bar]) -> BatchResult:
        """Apply one batch of validated bars (in arrival order) and write/publish the result."""
        resampler = self.resampler
        unknown = resampler.unknown_symbols(bars)
        if unknown:
            resampler.note_stored_until(await self.store.last_bar_times(unknown))
        requests = resampler.restore_requests(bars)
        if requests:
            await self._restore(requests)
        result = resampler.process(bars)
        await self._emit(result.candles)
        resampler.evict()
        stats = self.stats
        stats.batches += 1
        stats.bars_accepted += result.accepted
        stats.bars_duplicate += result.duplicates
        return result

    async def tick(self) -> list[Candle]:
        """Finalize what the clock has passed; call periodically on live feeds."""
        candles = self.resampler.advance()
        await self._emit(candles)
        self.resampler.evict()
        return candles

    async def _emit(self, candles: Sequence[Candle]) -> None:
        if not candles:
            return
        self.stats.rows_written += await self._upsert_with_retry(candles)
        self.stats.candles_published += len(candles)
        if self.publish is not None:
            await self.publish(candles)

    async def _upsert_with_retry(self, candles: Sequence[Candle]) -> int:
        """Upserts are idempotent, so a failed write is simply tried again (with backoff)."""
        delay = self.retry_initial_s
        for attempt in range(1, self.retry_attempts + 1):
            try:
                return await self.store.upsert(candles)
            except StoreError as exc:
                if attempt == self.retry_attempts:
                    raise
                log.warning("store write failed (attempt %d): %s; retrying", attempt, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def _restore(self, requests: Sequence[RestoreRequest]) -> None:
        for request in requests:
            bars = await self.store.bars_between(request.symbol, request.start_ms, request.end_ms)
            stored: dict[tuple[str, int], Candle] = {}
            for interval, start in request.buckets:
                found = await self.store.get_candles(interval, [(request.symbol, start)])
                for (_, ts), candle in found.items():
                    stored[(interval.name, ts)] = candle
            self.resampler.restore(request, bars, stored)
            self.stats.buckets_restored += len(request.buckets)
