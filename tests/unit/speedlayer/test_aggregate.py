"""speedlayer.aggregate.candle_from_bars gives, bit for bit, the candle the resampler makes of the
same bucket: the API's computed sizes (api/aggregates.py) must not drift from the stored ones."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.resampler import Resampler
from speedlayer.aggregate import candle_from_bars
from speedlayer.clock import ManualClock
from speedlayer.intervals import MINUTE_MS, IntervalSet
from speedlayer.models import Bar, Candle

T0 = 1_704_205_800_000  # 2024-01-02T14:30Z
SIZES = ("3m", "7m", "10m", "1h")
VALUES = ("open", "high", "low", "close", "volume", "vwap", "trades", "bars")


def _values(candle: Candle) -> tuple[object, ...]:
    # repr keeps the last bit of floats (and tells 0.0 from -0.0)
    return tuple(repr(getattr(candle, name)) for name in VALUES)


def _bars(rng: random.Random, minutes: int) -> list[Bar]:
    out = []
    price = 100.0
    for i in range(minutes):
        if rng.random() < 0.3:
            continue  # a minute without trades
        o = price
        c = max(0.01, o + rng.uniform(-1, 1))
        h, low = max(o, c) + rng.random(), min(o, c) - rng.random() * 0.5
        low = max(low, 0.005)
        v = 0.0 if rng.random() < 0.1 else rng.choice([rng.randint(1, 10**6), rng.random() * 1e4])
        vw = None if rng.random() < 0.3 else rng.uniform(low, h)
        n = None if rng.random() < 0.3 else rng.randint(0, 5000)
        out.append(Bar("SYM", T0 + i * MINUTE_MS, o, h, low, c, v, vw, n))
        price = c
    return out


def _resampled(bars: list[Bar], order: list[Bar]) -> dict[tuple[str, int], Candle]:
    clock = ManualClock(T0 + 10**9)  # everything final at once
    resampler = Resampler(IntervalSet(list(SIZES)), clock)
    latest: dict[tuple[str, int], Candle] = {}
    for start in range(0, len(order), 17):  # several batches, so both sum paths run
        for candle in resampler.process(order[start : start + 17]).candles:
            latest[(candle.interval, candle.timestamp)] = candle
    return latest


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), minutes=st.integers(1, 200), shuffled=st.booleans())
def test_equals_the_resampler_bit_for_bit(seed: int, minutes: int, shuffled: bool) -> None:
    rng = random.Random(seed)
    bars = _bars(rng, minutes)
    if not bars:
        return
    order = list(bars)
    if shuffled:
        rng.shuffle(order)  # arrival order must not matter to either
    candles = _resampled(bars, order)
    intervals = IntervalSet(list(SIZES))
    checked = 0
    for interval in intervals:
        groups: dict[int, list[Bar]] = {}
        for bar in bars:
            groups.setdefault(interval.bucket_start(bar.t), []).append(bar)
        for start, group in groups.items():
            want = candles[(interval.name, start)]
            got = candle_from_bars(
                "SYM", interval.name, start, group, final=True, revision=want.revision, ttl=want.ttl
            )
            assert _values(got) == _values(want), (interval.name, start, got, want)
            assert got == want
            checked += 1
    assert checked == len(candles)


def test_one_bar_keeps_its_vwap_and_sums_skip_missing_values() -> None:
    bar = Bar("SYM", T0, 10.0, 11.0, 9.0, 10.5, 0.0, 10.2, None)
    one = candle_from_bars("SYM", "5m", T0, [bar], final=False, revision=1, ttl=9)
    assert (one.vwap, one.volume, one.trades, one.bars) == (10.2, 0.0, None, 1)  # v = 0 keeps vw
    second = Bar("SYM", T0 + MINUTE_MS, 10.5, 12.0, 10.0, 11.0, 300.0, None, 4)
    two = candle_from_bars("SYM", "5m", T0, [bar, second], final=False, revision=1, ttl=9)
    # bars with vw have no volume: no VWAP; trades from the bar that has them
    assert (two.open, two.high, two.low, two.close) == (10.0, 12.0, 9.0, 11.0)
    assert (two.volume, two.vwap, two.trades, two.bars) == (300.0, None, 4, 2)
    with pytest.raises(ValueError, match="at least one bar"):
        candle_from_bars("SYM", "5m", T0, [], final=False, revision=1, ttl=9)
