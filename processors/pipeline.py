"""The candle pipeline: bars -> resampler -> store -> candle publishers.

It owns the order that makes restarts safe: restore the buckets the store may know about, apply
the batch, write every changed candle, publish, and only then let the resampler evict state.

Failures (docs/design.md#failure-policy). Once the resampler has applied a batch, its candles
must reach the store and the bus, or the resampler's state and the store disagree (a 5m candle
counting a 1m bar that was never stored). So a write or publish that fails with a retriable error
is tried again with backoff, for as long as ``retry_deadline_s`` allows, and nothing after it
runs meanwhile (the caller waits: backpressure). ``problem()`` says so while it lasts, for
readiness. A failure that outlasts the deadline (or is not retriable) is raised: the owner then
stops without committing the batch, and a restart rebuilds the state from the store.

Retention. A candle whose ``ttl`` is already past when it is written (history older than the
retention of its interval, e.g. a replay of 2019 bars with the default retention) is stored, but no
read returns it and the next purge deletes it. The pipeline counts those (``stats.candles_expired``)
and logs a warning with the counts, at the first one and then at most once a minute, naming the
setting that keeps them (``SPEEDLAYER_RETENTION``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from processors.resampler import BatchResult, Resampler, RestoreRequest
from speedlayer.models import Bar, Candle
from speedlayer.retry import Backoff, retry
from speedlayer.store.base import Store

if TYPE_CHECKING:
    from speedlayer.columns import CandleColumns

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Candle]], Awaitable[None]]
T = TypeVar("T")
EXPIRED_WARNING_EVERY_S = 60.0


@dataclass
class PipelineStats:
    batches: int = 0
    bars_accepted: int = 0
    bars_duplicate: int = 0
    candles_published: int = 0
    rows_written: int = 0
    buckets_restored: int = 0
    write_retries: int = 0
    candles_expired: int = 0  # written already past their retention (see the module docstring)


class CandlePipeline:
    def __init__(
        self,
        resampler: Resampler,
        store: Store,
        publish: Publish | None = None,
        *,
        retry_deadline_s: float | None = 300.0,
        retry_initial_s: float = 0.05,
        retry_cap_s: float = 5.0,
    ) -> None:
        self.resampler = resampler
        self.store = store
        self.publish = publish
        self.retry_deadline_s = retry_deadline_s
        self.retry_initial_s = retry_initial_s
        self.retry_cap_s = retry_cap_s
        self.stats = PipelineStats()
        self.failing_since: float | None = None  # monotonic time of the first failed attempt
        self.last_error: BaseException | None = None
        self._expired_warned_at: float | None = None  # monotonic time of the last warning

    def problem(self) -> str | None:
        """None unless a write or publish is failing and being retried right now."""
        if self.failing_since is None:
            return None
        return (
            f"candle write failing for {time.monotonic() - self.failing_since:.0f}s "
            f"({self.stats.write_retries} retries): {self.last_error}"
        )

    async def recover(self) -> int:
        """Load the store's non-final candles so they are finalized on schedule after a restart."""
        requests = []
        for interval in self.resampler.intervals:
            for candle in await self.store.forming(interval):
                requests.append(
                    RestoreRequest(
                        candle.symbol,
                        candle.timestamp,
                        interval.bucket_end(candle.timestamp),
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
            stored_until = await self._until_done(
                "store read", lambda: self.store.last_bar_times(unknown)
            )
            resampler.note_stored_until(stored_until)
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

    async def write_history(
        self, candles: Sequence[Candle], *, accepted: int, duplicates: int
    ) -> None:
        """Write (and publish) final candles made outside the resampler from ``accepted`` bars
        (``processors.history``: the columnar engine), with the same retries and counts."""
        await self._emit(candles)
        stats = self.stats
        stats.batches += 1
        stats.bars_accepted += accepted
        stats.bars_duplicate += duplicates

    async def write_history_columns(
        self,
        columns: Sequence[CandleColumns],
        names: Sequence[str],
        *,
        accepted: int,
        duplicates: int,
        slice_candles: int = 50_000,
    ) -> None:
        """``write_history`` of candles as columns (``names[code]`` is a code's symbol), written
        in their order: the store makes its rows ``slice_candles`` at a time (no ``Candle`` per
        row); published candles are made and sent that many at a time, each slice after the
        last."""
        from speedlayer.columns import to_candles  # numpy: only the replay command has columns

        if self.publish is not None:
            for cc in columns:
                for at in range(0, len(cc), slice_candles):
                    await self._emit(to_candles([cc.slice(at, at + slice_candles)], names))
            await self.write_history([], accepted=accepted, duplicates=duplicates)
            return
        count = sum(len(cc) for cc in columns)
        if count:
            store = self.store
            written = await self._until_done(
                "store write", lambda: store.upsert_columns(columns, names, slice_candles)
            )
            self.stats.rows_written += written
            self.stats.candles_published += count
            now_s = store.now_s()
            for cc in columns:
                expired = (cc.ttls() <= now_s).nonzero()[0]
                if expired.size:  # the warning names the oldest
                    oldest = int(expired[cc.timestamp[expired].argmin()])
                    self._note_expired(
                        to_candles([cc.slice(oldest, oldest + 1)], names), int(expired.size)
                    )
        stats = self.stats
        stats.batches += 1
        stats.bars_accepted += accepted
        stats.bars_duplicate += duplicates

    async def read_store(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A store read, retried like the pipeline's own (``retry_deadline_s``)."""
        return await self._until_done("store read", operation)

    async def tick(self) -> list[Candle]:
        """Finalize what the clock has passed; call periodically on live feeds."""
        candles = self.resampler.advance()
        await self._emit(candles)
        self.resampler.evict()
        return candles

    async def _emit(self, candles: Sequence[Candle]) -> None:
        if not candles:
            return
        store, publish = self.store, self.publish
        # Added after the await: ``x += await ...`` would read x first and lose the rows of
        # writes finishing meanwhile (processors.history has several in flight).
        written = await self._until_done("store write", lambda: store.upsert(candles))
        self.stats.rows_written += written
        self.stats.candles_published += len(candles)
        now_s = store.now_s()
        expired = [candle for candle in candles if candle.ttl <= now_s]
        if expired:
            self._note_expired(expired)
        if publish is not None:
            await self._until_done("candle publish", lambda: publish(candles))

    def _note_expired(self, expired: Sequence[Candle], count: int | None = None) -> None:
        """Count ``count`` expired candles (``len(expired)`` by default); ``expired`` holds the
        oldest of them at least (the warning names it)."""
        stats = self.stats
        stats.candles_expired += len(expired) if count is None else count
        now = time.monotonic()
        if (
            self._expired_warned_at is not None
            and now - self._expired_warned_at < EXPIRED_WARNING_EVERY_S
        ):
            return
        self._expired_warned_at = now
        oldest = min(expired, key=lambda candle: candle.timestamp)
        log.warning(
            "%d of %d candles written so far were already past their retention (e.g. %s %s "
            "at %s): they are never served and the next purge deletes them. To keep history, "
            "set SPEEDLAYER_RETENTION on this service (e.g. '*=10y') and replay it again",
            stats.candles_expired, stats.candles_published, oldest.symbol, oldest.interval,
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(oldest.timestamp / 1000)),
        )  # fmt: skip

    async def _until_done(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """``operation()`` retried while it fails retriably (upserts are idempotent and a
        publish is at least once), until ``retry_deadline_s``; see the module docstring."""
        backoff = Backoff(
            initial_s=self.retry_initial_s, cap_s=self.retry_cap_s, timeout_s=self.retry_deadline_s
        )
        result = await retry(operation, what=what, backoff=backoff, on_failure=self._failed)
        self.failing_since = self.last_error = None
        return result

    def _failed(self, error: BaseException, failures: int) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.last_error = error
        self.stats.write_retries += 1

    async def _restore(self, requests: Sequence[RestoreRequest]) -> None:
        for request in requests:
            store, symbol = self.store, request.symbol
            bars = await self._until_done(
                "store read",
                lambda: store.bars_between(symbol, request.start_ms, request.end_ms),  # noqa: B023
            )
            stored: dict[tuple[str, int], Candle] = {}
            for interval, start in request.buckets:
                found = await self._until_done(
                    "store read",
                    lambda: store.get_candles(interval, [(symbol, start)]),  # noqa: B023
                )
                for (_, ts), candle in found.items():
                    stored[(interval.name, ts)] = candle
            self.resampler.restore(request, bars, stored)
            self.stats.buckets_restored += len(request.buckets)
