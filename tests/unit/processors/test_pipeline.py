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
