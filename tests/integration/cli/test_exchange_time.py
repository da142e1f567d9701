"""Exchange-time candles on real bars across daylight-saving changes
(docs/design.md#exchange-time-candles).

SPY of ``pyalgotrade_ninjatrader`` crosses 2011-03-13 (New York springs forward) and SHY of
``lean`` trades on 2008-03-07 and 2008-03-10, either side of 2008-03-09. Both the streaming
resampler and the columnar engine, with exchange alignment, must give the candles of a pandas
oracle computed in the exchange's time zone: hour buckets from pandas' wall-clock floor at the
09:30 anchor, ``1d`` from the XNYS sessions of ``exchange_calendars`` matched with ``merge_asof``.
The two engines must also agree with each other bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import exchange_calendars  # type: ignore[import-untyped]
import pandas as pd
import pytest

from processors.columnar import SymbolTable, bar_columns, final_candles
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.intervals import MINUTE_MS, ExchangeTime, IntervalSet
from speedlayer.models import Bar, Candle
from tests.integration.cli.test_replay import read_csv_bars
from tests.oracle import (
    Bucketer,
    CandleValues,
    exchange_wall_buckets,
    oracle_candles,
    session_buckets,
    values_close,
)
from tests.unit.processors.test_resampler_properties import batched

ZONE = "America/New_York"
INTERVALS = ["1m", "5m", "15m", "30m", "1h", "2h", "4h", "1d"]
FAR = 4_000_000_000_000  # the clock: every bucket is final
Key = tuple[str, str, int]


@pytest.fixture(scope="module")
def intervals() -> IntervalSet:
    return IntervalSet(INTERVALS, {"*": "30y"}, exchange=ExchangeTime())


@pytest.fixture(scope="module")
def oracle_intervals(intervals: IntervalSet) -> dict[str, int | Bucketer]:
    schedule = exchange_calendars.get_calendar("XNYS", start="2007-01-02").schedule
    epoch = pd.Timestamp(0, tz="UTC")
    opens = ((schedule["open"] - epoch) // pd.Timedelta(milliseconds=1)).tolist()
    closes = ((schedule["close"] - epoch) // pd.Timedelta(milliseconds=1)).tolist()
    out: dict[str, int | Bucketer] = {}
    for iv in intervals:
        if iv.frame == "utc":
            out[iv.name] = iv.interval_ms
        elif iv.frame == "wall":
            out[iv.name] = exchange_wall_buckets(
                ZONE, "9h30min", f"{iv.interval_ms // MINUTE_MS}min"
            )
        else:
            out[iv.name] = session_buckets(opens, closes)
    return out


CASES = {
    "spy-2011-03-13": ("pyalgotrade_ninjatrader", "SPY", "2011-03-09", "2011-03-17"),
    "shy-2008-03-09": ("lean", "SHY", "2008-03-01", "2008-03-15"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest, realbars: Path) -> Iterator[tuple[str, list[Bar]]]:
    folder, symbol, first, last = CASES[request.param]
    lo = int(pd.Timestamp(first, tz="UTC").value // 1_000_000)
    hi = int(pd.Timestamp(last, tz="UTC").value // 1_000_000)
    bars = [
        b
        for b in read_csv_bars(realbars / folder / "bars_1m.csv")
        if b.symbol == symbol and lo <= b.t < hi
    ]
    assert len(bars) > 500
    yield request.param, bars


def streaming(intervals: IntervalSet, bars: Sequence[Bar]) -> dict[Key, Candle]:
    resampler = Resampler(intervals, ManualClock(FAR))
    out: dict[Key, Candle] = {}
    for batch in batched(bars, 700):
        for c in resampler.process(batch).candles:
            out[(c.interval, c.symbol, c.timestamp)] = c
    return out


def columnar(intervals: IntervalSet, bars: Sequence[Bar]) -> dict[Key, Candle]:
    symbols = SymbolTable()
    ordered = sorted({(b.symbol, b.t): b for b in bars}.values(), key=lambda b: (b.symbol, b.t))
    cols = bar_columns(ordered, symbols)
    return {
        (c.interval, c.symbol, c.timestamp): c
        for c in final_candles(cols, symbols.names, intervals.items)
    }


def values(c: Candle) -> CandleValues:
    return (c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades, c.bars)


def local(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC").tz_convert(ZONE)


def test_both_engines_match_the_exchange_zone_oracle(
    case: tuple[str, list[Bar]],
    intervals: IntervalSet,
    oracle_intervals: dict[str, Any],
) -> None:
    _, bars = case
    expected = oracle_candles(bars, oracle_intervals)
    stream = streaming(intervals, bars)
    batch = columnar(intervals, bars)
    assert set(stream) == set(expected)
    assert set(batch) == set(expected)
    for key, want in expected.items():
        assert values_close(values(stream[key]), want), (key, stream[key], want)
    assert batch == stream  # bit for bit, revision and ttl included
    for (name, _, start), c in stream.items():
        iv = intervals.get(name)
        assert c.final
        assert c.ttl == iv.bucket_end(start) // 1000 + iv.retention_s


def test_the_data_crosses_the_switch_and_buckets_follow_the_local_clock(
    case: tuple[str, list[Bar]], intervals: IntervalSet
) -> None:
    _, bars = case
    stream = streaming(intervals, bars)
    offsets = {local(t).utcoffset() for t in (b.t for b in bars)}
    assert offsets == {pd.Timedelta(hours=-5), pd.Timedelta(hours=-4)}  # EST and EDT
    days = [(start, c) for (name, _, start), c in stream.items() if name == "1d"]
    assert len(days) >= 2
    for start, c in days:
        opened = local(start)
        assert (opened.hour, opened.minute) == (9, 30)
        assert local(intervals.get("1d").bucket_end(start)).strftime("%H:%M") == "16:00"
        assert c.bars <= 390  # regular hours only
    # Both sides of the switch: the session opens at 14:30 UTC in winter, 13:30 UTC in summer.
    assert {pd.Timestamp(start, unit="ms").hour for start, _ in days} == {13, 14}
    for name in ("1h", "2h", "4h"):
        starts = [local(start) for (n, _, start), _ in stream.items() if n == name]
        assert starts and all(s.minute == 30 for s in starts)
        wanted = {9, 11, 13, 15} if name == "2h" else {9, 13}
        assert {s.hour for s in starts} >= wanted


def test_bars_outside_the_session_are_in_no_daily_candle_but_in_the_hours(
    case: tuple[str, list[Bar]], intervals: IntervalSet
) -> None:
    _, bars = case
    stream = streaming(intervals, bars)
    outside = [
        b for b in bars if not (9 * 60 + 30 <= local(b.t).hour * 60 + local(b.t).minute < 960)
    ]
    day_bars = sum(c.bars for (name, _, _), c in stream.items() if name == "1d")
    minute_bars = sum(c.bars for (name, _, _), c in stream.items() if name == "1m")
    assert day_bars == minute_bars - len({(b.symbol, b.t) for b in outside})
    if outside:  # SPY trades before and after the session in this file
        assert day_bars < minute_bars
    hour_bars = sum(c.bars for (name, _, _), c in stream.items() if name == "1h")
    assert hour_bars == minute_bars
