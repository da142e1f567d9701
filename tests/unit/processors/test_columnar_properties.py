"""Property tests: the columnar history path against the streaming resampler, bit for bit.

* ``final_candles`` (processors/columnar.py) on the de-duplicated bar set (last write wins by
  arrival) equals the streaming resampler's final candles field by field, floats compared by
  their bits, for random bars with duplicates, corrections and any arrival order.
* ``HistoryLoader`` (processors/history.py: columnar where exact, the streaming pipeline for the
  rest) leaves the store exactly as the streaming pipeline does: every field of every candle,
  revisions included, with any clock (final or forming buckets), any batch sizes (units carried
  across batches, late bars for units already written) and bars already stored by an earlier
  process (replay into a live database).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import astuple

from processors.columnar import SymbolTable, bar_columns, final_candles, sequential_sums
from processors.history import HistoryCounts, HistoryLoader
from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.models import Bar, Candle
from speedlayer.store.memory import MemoryStore
from tests.unit.processors.test_resampler_properties import (
    BASE,
    GRACE,
    HOUR,
    IVS,
    MIN,
    PROPERTY_SETTINGS,
    SYMBOLS,
    arrivals,
    bar_for,
    batched,
    clocks,
)

FAR = BASE + 400 * 24 * HOUR  # every bucket final
Key = tuple[str, str, int]


def bits(c: Candle) -> tuple[object, ...]:
    """Every field; floats by their exact bits (float.hex tells -0.0 from 0.0)."""
    return tuple(x.hex() if isinstance(x, float) else x for x in astuple(c))


def last_write_wins(events: Sequence[Bar]) -> list[Bar]:
    """The surviving bar of every key: the last arrival (an exact duplicate changes nothing)."""
    held: dict[tuple[str, int], Bar] = {}
    for bar in events:
        held[(bar.symbol, bar.t)] = bar
    return sorted(held.values(), key=lambda b: (b.symbol, b.t))


def corrected_keys(events: Sequence[Bar]) -> set[tuple[str, int]]:
    seen: dict[tuple[str, int], Bar] = {}
    out = set()
    for bar in events:
        key = (bar.symbol, bar.t)
        if key in seen and seen[key] != bar:
            out.add(key)
        seen.setdefault(key, bar)
    return out


def streaming_final(events: Sequence[Bar], batch_size: int) -> dict[Key, Candle]:
    resampler = Resampler(IVS, ManualClock(FAR), grace_ms=GRACE)
    out: dict[Key, Candle] = {}
    for batch in batched(events, batch_size):
        for c in resampler.process(batch).candles:
            out[(c.interval, c.symbol, c.timestamp)] = c
    return out


def columnar(bars: Sequence[Bar]) -> dict[Key, Candle]:
    symbols = SymbolTable()
    cols = bar_columns(bars, symbols)
    return {
        (c.interval, c.symbol, c.timestamp): c
        for c in final_candles(cols, symbols.names, IVS.items)
    }


@st.composite
def history(draw: st.DrawFn) -> list[Bar]:
    """History as files hold it: up to 10 hours of a few symbols' minutes, in time order, a
    little disordered (bars a few minutes late, some later than the lateness, so they reach
    units already written) or shuffled; a few exact duplicates and, sometimes, corrections."""
    span = draw(st.sampled_from([30, 300, 600]))
    every_key = [(symbol, minute) for minute in range(span) for symbol in SYMBOLS]
    chosen = draw(st.sets(st.integers(0, len(every_key) - 1), min_size=1, max_size=150))
    events = [draw(bar_for(*every_key[i])) for i in sorted(chosen)]
    fixes = draw(st.lists(st.sampled_from(events), max_size=3) | st.just([]))
    events += [draw(bar_for(b.symbol, (b.t - BASE) // MIN)) for b in fixes]
    events += draw(st.lists(st.sampled_from(events), max_size=len(events) // 10 + 1))
    order = draw(st.sampled_from(["time", "jitter", "shuffle"]))
    rng = draw(st.randoms(use_true_random=False))
    if order == "shuffle":
        rng.shuffle(events)
    else:
        late = 0 if order == "time" else 12 * MIN
        keyed = [
            (b.t + (rng.randint(0, late) if rng.random() < 0.2 else 0), i)
            for i, b in enumerate(events)
        ]
        events = [events[i] for _, i in sorted(keyed)]
    return events


@PROPERTY_SETTINGS
@given(events=arrivals() | history(), batch_size=st.integers(1, 50))
def test_columnar_candles_equal_the_streaming_resamplers_bit_for_bit(
    events: list[Bar], batch_size: int
) -> None:
    streamed = streaming_final(events, batch_size)
    ours = columnar(last_write_wins(events))
    assert set(ours) == set(streamed)
    fixed = corrected_keys(events)
    for key, want in streamed.items():
        got = ours[key]
        assert bits(got)[:12] == bits(want)[:12], (key, got, want)  # all but revision, ttl
        assert got.ttl == want.ttl and got.final and want.final
        interval_ms = IVS.get(key[0]).interval_ms
        if not any(s == key[1] and t - t % interval_ms == key[2] for s, t in fixed):
            assert got.revision == want.revision, key  # one revision per distinct bar


def test_columnar_candles_of_a_random_walk_equal_the_streaming_resamplers() -> None:
    """Deterministic and dense: 3 symbols x 10 hours of 4-decimal prices and fractional volumes,
    2 % of them sent again; every bucket of every interval bit for bit, revisions included."""
    rng = np.random.default_rng(5)
    events = []
    for minute in range(600):
        for symbol in SYMBOLS:
            lo = round(float(rng.uniform(10, 20)), 4)
            hi = round(lo + float(rng.uniform(0, 1)), 4)
            mid = round((lo + hi) / 2, 4)
            vw = None if rng.random() < 0.1 else mid
            n = None if rng.random() < 0.1 else int(rng.integers(0, 500))
            v = round(float(rng.uniform(0, 5000)), 3)
            events.append(Bar(symbol, BASE + minute * MIN, mid, hi, lo, hi, v, vw, n))
    events += [events[i] for i in rng.integers(0, len(events), 40).tolist()]
    streamed = streaming_final(events, 500)
    ours = columnar(last_write_wins(events))
    assert {k: bits(c) for k, c in ours.items()} == {k: bits(c) for k, c in streamed.items()}


def test_sums_are_sequential_not_pairwise() -> None:
    """A sum whose rounding depends on the order of additions: numpy's pairwise sum differs
    from adding one after the other; ``sequential_sums`` gives the latter."""
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1e6, size=(300, 1)) / 7
    python = 0.0
    for x in values[:, 0].tolist():
        python += x
    got = sequential_sums(values, np.array([0], dtype=np.int64), np.array([300], dtype=np.int64))
    assert got[0, 0].hex() == python.hex()
    assert float(np.add.reduce(values[:, 0])) != python  # why the engine avoids reduce


@pytest.mark.parametrize("volume", [-0.0, 0.0])
def test_one_bar_zero_volume_and_missing_vwap(volume: float) -> None:
    bars = [
        Bar("A", BASE, 1.0, 2.0, 0.5, 1.5, volume, 1.25, None),
        Bar("B", BASE, 1.0, 2.0, 0.5, 1.5, 3.0, None, 4),
        Bar("B", BASE + MIN, 1.0, 2.0, 0.5, 1.5, volume, 1.5, None),
    ]
    streamed = streaming_final(bars, 1)
    ours = columnar(bars)
    assert {k: bits(c) for k, c in ours.items()} == {k: bits(c) for k, c in streamed.items()}


# -- the whole history path against the streaming pipeline --------------------------------------


def dump(store: MemoryStore) -> dict[Key, tuple[object, ...]]:
    return {
        (name, symbol, ts): bits(c)
        for name, table in store._tables.items()
        for symbol, rows in table.items()
        for ts, c in rows.items()
    }


def run(
    prefix: Sequence[Bar],
    rest: Sequence[Bar],
    *,
    now_ms: int,
    history: bool,
    prefix_history: bool,
    batch_bars: int,
    stream_batch: int,
    write_candles: int = 50_000,
) -> tuple[dict[Key, tuple[object, ...]], tuple[int, int]]:
    """``prefix`` stored by a first process, then ``rest`` by a second one on the same store,
    each through the history loader or the streaming pipeline alone. Returns the store's rows
    and the second process's (accepted, duplicates)."""

    async def main() -> tuple[dict[Key, tuple[object, ...]], tuple[int, int]]:
        clock = ManualClock(now_ms)
        store = MemoryStore(IVS, clock)

        def pipeline() -> CandlePipeline:
            resampler = Resampler(IVS, clock, grace_ms=GRACE, lateness_ms=5 * MIN)
            return CandlePipeline(resampler, store)

        async def feed(bars: Sequence[Bar], through_history: bool) -> tuple[int, int]:
            p = pipeline()
            await p.recover()
            if through_history:
                loader = HistoryLoader(
                    p, batch_bars=batch_bars, stream_batch=stream_batch, write_candles=write_candles
                )
                for batch in batched(bars, stream_batch):
                    await loader.add(batch)
                await loader.finish()
                assert (loader.counts.accepted, loader.counts.duplicates) == (
                    p.stats.bars_accepted,
                    p.stats.bars_duplicate,
                )
                return loader.counts.accepted, loader.counts.duplicates
            for batch in batched(bars, stream_batch):
                await p.handle(batch)
            return p.stats.bars_accepted, p.stats.bars_duplicate

        async with store:
            if prefix:
                await feed(prefix, prefix_history)
            counts = await feed(rest, history)
            return dump(store), counts

    return asyncio.run(main())


@PROPERTY_SETTINGS
@given(
    events=arrivals() | history(),
    now_ms=st.one_of(st.just(FAR), clocks),
    split=st.floats(0, 1),
    prefix_history=st.booleans(),
    batch_bars=st.integers(1, 40),
    stream_batch=st.integers(1, 12),
    write_candles=st.integers(1, 30),
)
def test_history_loader_stores_what_the_streaming_pipeline_stores(
    events: list[Bar],
    now_ms: int,
    split: float,
    prefix_history: bool,
    batch_bars: int,
    stream_batch: int,
    write_candles: int,
) -> None:
    cut = int(len(events) * split)
    prefix, rest = events[:cut], events[cut:]
    args = {
        "now_ms": now_ms,
        "batch_bars": batch_bars,
        "stream_batch": stream_batch,
        "write_candles": write_candles,
    }
    ours, our_counts = run(prefix, rest, history=True, prefix_history=prefix_history, **args)
    theirs, their_counts = run(prefix, rest, history=False, prefix_history=False, **args)
    assert our_counts == their_counts
    assert set(ours) == set(theirs)
    diff = [(key, ours[key], theirs[key]) for key in theirs if ours[key] != theirs[key]]
    assert not diff, diff[:3]


class SlowStore(MemoryStore):
    """Writes that yield to the event loop, as a real store's do: several are in flight."""

    async def upsert(self, candles: Sequence[Candle]) -> int:
        await asyncio.sleep(0.001)
        return await super().upsert(candles)


def test_history_loader_uses_the_columnar_engine_and_merges_late_bars() -> None:
    """Not a vacuous equality: clean, complete, final history goes through the columnar engine
    (one write per candle); a unit with a correction goes through the pipeline; late bars for
    units already written (a new minute, a duplicate, a correction), also of a symbol the
    resampler has seen before, are merged on top of them, as the streaming pipeline would."""
    bars = [
        Bar(s, BASE + m * MIN, 10.0, 11.0, 9.0, 10.5, 100.0 + m / 8, 10.25 + m / 1000, m)
        for m in range(0, 600)
        for s in ("AAA", "BBB")
    ]
    withheld = bars[2 * 200]  # AAA's minute 200 (its second unit, 04:00-08:00), sent last
    early = [bars[11], Bar("AAA", BASE + 5 * MIN, 10.0, 11.0, 9.0, 10.25, 1.0, None, None)]
    late = [
        withheld,
        bars[2 * 300],  # a duplicate, AAA's second unit
        Bar("BBB", BASE + 300 * MIN, 10.0, 11.0, 9.0, 10.75, 3.0, 10.5, 7),  # a correction
        Bar("AAA", BASE + 7 * MIN, 10.0, 11.0, 9.0, 10.75, 3.0, 10.5, 7),  # AAA's first unit
    ]
    events = [*bars[:30], *early, *(b for b in bars[30:] if b is not withheld), *late]

    async def main() -> tuple[HistoryCounts, dict[Key, tuple[object, ...]], int]:
        clock = ManualClock(FAR)
        async with SlowStore(IVS, clock) as store:
            p = CandlePipeline(Resampler(IVS, clock, grace_ms=GRACE, lateness_ms=5 * MIN), store)
            loader = HistoryLoader(p, batch_bars=100, stream_batch=50, write_candles=64)
            for batch in batched(events, 70):
                await loader.add(batch)
            await loader.finish()
            return loader.counts, dump(store), p.stats.rows_written

    counts, ours, rows = asyncio.run(main())
    assert rows == counts.candles_published  # every write counted, however they interleave
    theirs, their_counts = run(
        [], events, now_ms=FAR, history=False, prefix_history=False, batch_bars=1, stream_batch=50
    )
    assert ours == theirs
    assert (counts.accepted, counts.duplicates) == their_counts == (len(bars) + 3, 2)
    # AAA's first unit (02:00-04:00: 120 bars and the correction) and the 4 late bars
    assert counts.streamed_bars == 121 + 4
    assert counts.columnar_bars == len(events) - 125
    assert rows < sum(cast(int, c[-2]) for c in theirs.values())  # written once, not every revision
