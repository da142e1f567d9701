"""The pipeline's failure policy (docs/design.md#failure-policy) with the in-memory store: a
write that fails is retried, never skipped, and reported while it lasts; past the deadline the
error is raised for the owner to stop on."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.errors import StoreError
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import Bar, Candle
from speedlayer.store.memory import MemoryStore

T0 = 1_704_204_000_000  # 2024-01-02T14:00Z
INTERVALS = IntervalSet(list(DEFAULT_INTERVALS), {"*": "100y"})


class FailingStore(MemoryStore):
    """Fails the next ``failures`` upserts; ``problems`` records the pipeline's report at each."""

    def __init__(self, failures: int) -> None:
        super().__init__(INTERVALS, ManualClock(T0))
        self.failures = failures
        self.pipeline: CandlePipeline | None = None
        self.problems: list[str | None] = []

    async def upsert(self, candles: Sequence[Candle]) -> int:
        assert self.pipeline is not None
        self.problems.append(self.pipeline.problem())
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("database or disk is full")
        return await super().upsert(candles)


def pipeline_on(store: FailingStore, deadline_s: float | None) -> CandlePipeline:
    pipeline = CandlePipeline(
        Resampler(INTERVALS, ManualClock(T0 + 3_600_000)),
        store,
        retry_deadline_s=deadline_s,
        retry_initial_s=0.001,
        retry_cap_s=0.002,
    )
    store.pipeline = pipeline
    return pipeline


def bars(minute: int) -> list[Bar]:
    t = T0 + minute * 60_000
    return [Bar(s, t, 10.0, 11.0, 9.0, 10.5, 100.0) for s in ("AAA", "BBB")]


async def test_a_failing_write_is_retried_until_it_succeeds_and_reported_meanwhile() -> None:
    store = FailingStore(failures=25)
    async with store:
        pipeline = pipeline_on(store, deadline_s=None)
        await pipeline.handle(bars(0))
        assert store.problems[0] is None
        assert all(p is not None and "disk is full" in p for p in store.problems[1:26])
        assert pipeline.problem() is None
        assert pipeline.stats.write_retries == 25
        stored = await store.query("AAA", INTERVALS.get("1m"))
        assert [c.timestamp for c in stored] == [T0]


async def test_a_write_failing_past_the_deadline_is_raised() -> None:
    store = FailingStore(failures=10**9)
    async with store:
        pipeline = pipeline_on(store, deadline_s=0.05)
        with pytest.raises(StoreError, match="disk is full"):
            await pipeline.handle(bars(0))
        assert pipeline.problem() is not None
        assert await store.query("AAA", INTERVALS.get("1m")) == []


async def test_candles_written_past_their_retention_are_counted_and_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """History older than the retention (here the default 1m retention, with the clock a year
    after the bars) is stored but never served: the pipeline says so, with the counts."""
    intervals = IntervalSet(list(DEFAULT_INTERVALS))
    clock = ManualClock(T0 + 365 * 86_400_000)
    store = MemoryStore(intervals, clock)
    async with store:
        pipeline = CandlePipeline(Resampler(intervals, clock), store, retry_deadline_s=None)
        with caplog.at_level("WARNING", logger="processors.pipeline"):
            await pipeline.handle(bars(0))
            await pipeline.handle(bars(1))
        stats = pipeline.stats
        assert stats.candles_expired == stats.candles_published > 0
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, warnings  # once, then at most once a minute
        assert "SPEEDLAYER_RETENTION" in warnings[0]
        assert warnings[0].startswith(f"{len(bars(0)) * 7} of {len(bars(0)) * 7} candles")
        assert "AAA 4h at 2024-01-02 12:00 UTC" in warnings[0]  # the oldest bucket
        assert await store.query("AAA", intervals.get("1m")) == []


async def test_candles_within_their_retention_raise_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore(failures=0)
    async with store:
        pipeline = pipeline_on(store, deadline_s=None)
        with caplog.at_level("WARNING", logger="processors.pipeline"):
            await pipeline.handle(bars(0))
        assert pipeline.stats.candles_expired == 0
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
