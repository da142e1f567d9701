"""Property tests: the resampler against the pandas oracle, and its order/batching invariance."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import Bar, Candle
from speedlayer.store.memory import MemoryStore
from tests.oracle import CandleValues, oracle_candles, values_close

MIN = 60_000
HOUR = 60 * MIN
GRACE = 10_000
BASE = 1_700_006_400_000 + 2 * HOUR  # 02:00 UTC: a few hours of minutes cross 4h boundaries
SYMBOLS = ("AAA", "BBB", "CCC")
IVS = IntervalSet(list(DEFAULT_INTERVALS))
IV_MS = {iv.name: iv.interval_ms for iv in IVS}

Key = tuple[str, str, int]  # (interval, symbol, bucket start), as the oracle keys candles

# `make test-fast` (SPEEDLAYER_TEST_FAST=1) tries fewer examples; `make test` the full number.
FAST = bool(os.environ.get("SPEEDLAYER_TEST_FAST"))
PROPERTY_SETTINGS = settings(
    max_examples=30 if FAST else 120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- strategies ----------------------------------------------------------------------------------

# Decimal values as they come from feeds: cents, 4-decimal VWAPs, fractional volumes, most of
# which are not exact in binary floating point (so sums depend on their order).
cents = st.integers(100, 50_000)
volumes = st.one_of(
    st.integers(0, 5_000_000).map(lambda thousandths: thousandths / 1000),
    st.integers(0, 10_000).map(float),
    st.integers(0, 8_000).map(lambda eighths: eighths / 8),
)


@st.composite
def bar_for(draw: st.DrawFn, symbol: str, minute: int) -> Bar:
    a, b, c, d = sorted(draw(st.lists(cents, min_size=4, max_size=4)))
    o, cl = (b, c) if draw(st.booleans()) else (c, b)
    vw = draw(st.none() | st.integers(a * 100, d * 100).map(lambda x: x / 10_000))
    n = draw(st.none() | st.integers(0, 2_000))
    v = draw(volumes)
    return Bar(symbol, BASE + minute * MIN, o / 100, d / 100, a / 100, cl / 100, v, vw, n)


@st.composite
def versions(draw: st.DrawFn, max_keys: int = 40) -> list[list[Bar]]:
    """For each distinct (symbol, minute) key, 1-3 versions of its bar."""
    span = draw(st.sampled_from([8, 30, 300]))  # minutes: dense buckets or a few hours
    every_key = [(symbol, minute) for symbol in SYMBOLS for minute in range(span)]
    count = draw(st.integers(1, min(max_keys, len(every_key))))
    keys = draw(st.permutations(every_key))[:count]
    return [
        draw(st.lists(bar_for(symbol, minute), min_size=1, max_size=3)) for symbol, minute in keys
    ]


@st.composite
def arrivals(draw: st.DrawFn) -> list[Bar]:
    """Every version of every key, plus exact duplicates, in random arrival order."""
    events = [b for group in draw(versions()) for b in group]
    dups = draw(st.lists(st.sampled_from(events), max_size=len(events) // 2 + 1))
    events += dups
    draw(st.randoms(use_true_random=False)).shuffle(events)
    return events


@st.composite
def two_orders(draw: st.DrawFn) -> tuple[list[Bar], list[Bar]]:
    """Two arrival orders of the same bars (with superseded versions and duplicates) in which
    each key's last-arriving version, the one that survives, is the same."""
    groups = draw(versions())
    survivors = {(g[0].symbol, g[0].t): g[-1] for g in groups}
    events = [b for g in groups for b in g]
    events += draw(st.lists(st.sampled_from(events), max_size=len(events) // 2 + 1))
    orders = []
    for _ in range(2):
        order = events[:]
        draw(st.randoms(use_true_random=False)).shuffle(order)
        last = {(b.symbol, b.t): i for i, b in enumerate(order)}
        for key, i in last.items():
            # Swap the survivor into the key's last position (it may also appear earlier).
            j = next(k for k, b in enumerate(order) if b is survivors[key] or b == survivors[key])
            order[i], order[j] = order[j], order[i]
        assert {(b.symbol, b.t): b for b in order} == survivors
        orders.append(order)
    return orders[0], orders[1]


def span_end(bars: Sequence[Bar]) -> int:
    return max(b.t for b in bars) + MIN


clocks = st.integers(0, 6 * HOUR).map(lambda offset: BASE + offset)


# -- drivers -------------------------------------------------------------------------------------


def values(c: Candle) -> CandleValues:
    return (c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades, c.bars)


def run_direct(batches: Sequence[Sequence[Bar]], now_ms: int) -> dict[Key, list[Candle]]:
    """Feed the resampler directly with a fixed clock; every published state, per key."""
    resampler = Resampler(IVS, ManualClock(now_ms), grace_ms=GRACE)
    published: dict[Key, list[Candle]] = {}
    for batch in batches:
        for c in resampler.process(batch).candles:
            published.setdefault((c.interval, c.symbol, c.timestamp), []).append(c)
    return published


def latest(published: dict[Key, list[Candle]]) -> dict[Key, Candle]:
    return {key: states[-1] for key, states in published.items()}


def run_pipeline(
    batches: Sequence[Sequence[Bar]],
    *,
    now_ms: int | None = None,
    lateness_ms: int = 5 * MIN,
    finish: bool = True,
    restart_at: int | None = None,
    downtime: bool = False,
    pause: tuple[int, int] = (0, 0),
) -> dict[Key, Candle]:
    """CandlePipeline + MemoryStore with a short lateness (so buckets are evicted and later
    restored from the store). The clock is fixed at ``now_ms``, or, when None, follows the
    bars (just after the latest minute seen). Before batch ``restart_at`` the resampler and
    pipeline are replaced by new ones on the same store (a restart; with ``downtime``, after
    the clock has moved on to that batch's time). ``pause`` = (batch index, ms): from that
    batch on, a clock that follows the bars runs that much later. Returns the store's
    candles."""

    async def main() -> dict[Key, Candle]:
        clock = ManualClock(BASE)
        store = MemoryStore(IVS, clock)

        def new_pipeline() -> CandlePipeline:
            resampler = Resampler(IVS, clock, grace_ms=GRACE, lateness_ms=lateness_ms)
            return CandlePipeline(resampler, store)

        async with store:
            pipeline = new_pipeline()
            seen = BASE
            for i, batch in enumerate(batches):
                if i == restart_at and not downtime:
                    pipeline = new_pipeline()
                    await pipeline.recover()
                seen = max(seen, span_end(batch))
                late_ms = pause[1] if i >= pause[0] else 0
                clock.set(now_ms if now_ms is not None else seen + 2_000 + late_ms)
                if i == restart_at and downtime:  # the clock moved on while it was down
                    pipeline = new_pipeline()
                    await pipeline.recover()
                await pipeline.handle(batch)
            if finish:
                clock.set(seen + 5 * HOUR + pause[1])
                await pipeline.tick()
            out: dict[Key, Candle] = {}
            for iv in IVS:
                for symbol in SYMBOLS:
                    for c in await store.query(symbol, iv):
                        out[(iv.name, symbol, c.timestamp)] = c
            return out

    return asyncio.run(main())


def batched(events: Sequence[Bar], size: int) -> list[list[Bar]]:
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


def assert_matches_oracle(got: dict[Key, Candle], expected: dict[Key, CandleValues]) -> None:
    assert set(got) == set(expected)
    for key, want in expected.items():
        assert values_close(values(got[key]), want), (key, values(got[key]), want)


# -- properties ----------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(events=arrivals(), now_ms=clocks, batch_size=st.integers(1, 8))
def test_candles_equal_the_oracle(events: list[Bar], now_ms: int, batch_size: int) -> None:
    expected = oracle_candles(events, IV_MS)

    published = run_direct(batched(events, batch_size), now_ms)
    assert_matches_oracle(latest(published), expected)
    for key, states in published.items():
        # Every publication has a higher revision than the one before.
        revisions = [c.revision for c in states]
        assert revisions == sorted(set(revisions)), (key, revisions)
        assert revisions[0] >= 1

    stored = run_pipeline(batched(events, batch_size))
    assert_matches_oracle(stored, expected)
    assert all(c.final for c in stored.values())


@PROPERTY_SETTINGS
@given(orders=two_orders(), now_ms=clocks, batch_size=st.integers(1, 8))
def test_arrival_order_does_not_change_values(
    orders: tuple[list[Bar], list[Bar]], now_ms: int, batch_size: int
) -> None:
    first, second = orders
    a = latest(run_direct(batched(first, batch_size), now_ms))
    b = latest(run_direct(batched(second, batch_size), now_ms))
    assert set(a) == set(b)
    for key in a:
        assert values(a[key]) == values(b[key]), key  # bit for bit

    # Through the pipeline, with evictions and restores from the store along the way.
    sa = run_pipeline(batched(first, batch_size))
    sb = run_pipeline(batched(second, batch_size))
    assert set(sa) == set(a) == set(sb)
    for key in a:
        assert values(sa[key]) == values(a[key]), key
        assert values(sb[key]) == values(a[key]), key


@PROPERTY_SETTINGS
@given(
    events=arrivals(),
    now_ms=clocks,
    sizes=st.tuples(st.integers(1, 10), st.integers(1, 60)).filter(lambda s: s[0] != s[1]),
)
def test_batch_size_does_not_change_anything(
    events: list[Bar], now_ms: int, sizes: tuple[int, int]
) -> None:
    small, large = sizes
    a = latest(run_direct(batched(events, small), now_ms))
    b = latest(run_direct(batched(events, large), now_ms))
    c = latest(run_direct([events], now_ms))
    # Whole candles: values, final and revision.
    assert a == b == c

    # Through the pipeline with the same fixed clock: evictions happen at different points
    # depending on the batch size, and restored buckets must continue exactly.
    sa = run_pipeline(batched(events, small), now_ms=now_ms, finish=False)
    sb = run_pipeline(batched(events, large), now_ms=now_ms, finish=False)
    assert sa == sb
    assert {key: values(x) for key, x in sa.items()} == {key: values(x) for key, x in a.items()}


@settings(PROPERTY_SETTINGS, max_examples=20 if FAST else 80)
@given(
    events=arrivals(),
    batch_size=st.integers(1, 8),
    downtime_ms=st.sampled_from([None, 0, 2 * MIN, 20 * MIN, 3 * HOUR]),
    data=st.data(),
)
def test_restart_at_any_point_changes_nothing(
    events: list[Bar], batch_size: int, downtime_ms: int | None, data: st.DataObject
) -> None:
    """A restart before batch ``restart_at``: with ``downtime_ms`` None, before the clock moves
    on; otherwise after the clock has moved on to that batch's time plus ``downtime_ms``. The
    run without a restart sees the same clock."""
    batches = batched(events, batch_size)
    restart_at = data.draw(st.integers(0, len(batches) - 1), label="restart_at")
    pause = (restart_at, downtime_ms or 0)
    restarted = run_pipeline(
        batches, restart_at=restart_at, downtime=downtime_ms is not None, pause=pause
    )
    # Whole candles, revisions and final flags included.
    assert restarted == run_pipeline(batches, pause=pause)
