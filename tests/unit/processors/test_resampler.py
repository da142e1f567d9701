"""The resampler, driven directly with a ManualClock, and through CandlePipeline with stores."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import MAX_PRICE, MAX_TRADES, MAX_VOLUME, Bar, Candle
from speedlayer.store.base import Store
from speedlayer.store.memory import MemoryStore
from speedlayer.store.sqlite import SQLiteStore
from tests.oracle import CandleValues, oracle_candles, values_close

MIN = 60_000
HOUR = 60 * MIN
GRACE = 10_000
LATENESS = 15 * MIN
T0 = 1_700_006_400_000  # 2023-11-15T00:00:00Z, aligned to every default interval
IVS = IntervalSet(list(DEFAULT_INTERVALS))
IV_MS = {iv.name: iv.interval_ms for iv in IVS}


def bar(
    minute: int,
    o: float = 10.0,
    h: float | None = None,
    l: float | None = None,  # noqa: E741
    c: float | None = None,
    v: float = 100.0,
    vw: float | None = None,
    n: int | None = None,
    symbol: str = "AAA",
) -> Bar:
    h = max(o, c or o) if h is None else h
    l = min(o, c or o) if l is None else l  # noqa: E741
    return Bar(symbol, T0 + minute * MIN, o, h, l, o if c is None else c, v, vw, n)


def values(c: Candle) -> CandleValues:
    return (c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades, c.bars)


def by_interval(candles: Sequence[Candle]) -> dict[str, Candle]:
    out = {c.interval: c for c in candles}
    assert len(out) == len(candles), "a candle was returned twice"
    return out


def make(now_ms: int = T0, **kwargs: int) -> tuple[Resampler, ManualClock]:
    clock = ManualClock(now_ms)
    return Resampler(IVS, clock, grace_ms=GRACE, **kwargs), clock


# -- basic updates ------------------------------------------------------------------------------


def test_one_bar_gives_one_candle_per_interval() -> None:
    r, _ = make(T0 + 67 * MIN + 30_000)
    b = bar(67, o=10.0, h=12.0, l=9.0, c=11.0, v=250.0, vw=10.5, n=17)
    result = r.process([b])
    assert result.accepted == 1
    assert result.duplicates == 0
    got = by_interval(result.candles)
    expected_start = {
        "1m": T0 + 67 * MIN,
        "5m": T0 + 65 * MIN,
        "15m": T0 + 60 * MIN,
        "30m": T0 + 60 * MIN,
        "1h": T0 + 60 * MIN,
        "2h": T0,
        "4h": T0,
    }
    assert set(got) == set(expected_start)
    for name, candle in got.items():
        assert candle.symbol == "AAA"
        assert candle.timestamp == expected_start[name]
        assert values(candle) == (10.0, 12.0, 9.0, 11.0, 250.0, 10.5, 17, 1)
        assert candle.revision == 1
        assert candle.final is False
        assert candle.ttl == IVS.get(name).ttl(expected_start[name])


def test_forming_candle_updates_with_increasing_revisions() -> None:
    r, _ = make(T0 + 50_000)  # no minute is over yet: nothing is finalized here
    feed = [
        bar(0, o=10.0, h=11.0, l=9.0, c=10.5, v=100.0, vw=10.0, n=3),
        bar(1, o=10.5, h=13.0, l=10.0, c=12.0, v=300.0, vw=12.0, n=4),
        bar(2, o=12.0, h=12.5, l=8.5, c=9.0, v=100.0, vw=9.0, n=5),
    ]
    expected = [
        (10.0, 11.0, 9.0, 10.5, 100.0, 10.0, 3, 1),
        (10.0, 13.0, 9.0, 12.0, 400.0, 11.5, 7, 2),
        (10.0, 13.0, 8.5, 9.0, 500.0, 11.0, 12, 3),
    ]
    for i, (b, want) in enumerate(zip(feed, expected, strict=True)):
        got = by_interval(r.process([b]).candles)
        assert set(got) == set(IV_MS)
        five = got["5m"]
        assert five.timestamp == T0
        assert values(five) == want
        assert five.revision == i + 1
        assert five.final is False
        assert got["4h"].revision == i + 1
        # Each minute is its own 1m candle, published once so far.
        assert got["1m"].timestamp == b.t
        assert got["1m"].revision == 1


def test_exact_duplicate_changes_nothing() -> None:
    r, clock = make(T0 + 30_000)
    b0 = bar(0, o=10.0, c=11.0, v=5.0, vw=10.5, n=2)
    first = r.process([b0])
    assert len(first.candles) == 7
    again = r.process([Bar(*(getattr(b0, f) for f in Bar.__struct_fields__))])
    assert again.candles == []
    assert again.accepted == 0
    assert again.duplicates == 1
    # Duplicates inside one batch, and next to a new bar.
    b1 = bar(1, o=11.0, c=12.0, v=7.0)
    clock.set(T0 + 60_000)  # minute 0 over, but not yet final
    mixed = r.process([b0, b1, b1, b0])
    assert mixed.accepted == 1
    assert mixed.duplicates == 3
    got = by_interval(mixed.candles)
    assert got["5m"].revision == 2
    assert values(got["5m"]) == (10.0, 12.0, 10.0, 12.0, 12.0, 10.5, 2, 2)
    assert got["1m"].timestamp == b1.t
    assert got["1m"].revision == 1


def test_superseding_bar_replaces_and_can_lower_the_high() -> None:
    r, clock = make()
    clock.set(T0 + 2 * MIN)
    r.process([bar(0, o=10.0, h=10.0, l=9.0, c=9.5, v=100.0, n=1)])
    r.process([bar(1, o=9.5, h=12.0, l=9.5, c=11.0, v=200.0, n=2)])
    corrected = bar(1, o=9.5, h=11.0, l=9.2, c=10.8, v=150.0, n=5)
    result = r.process([corrected])
    assert result.accepted == 1
    assert result.duplicates == 0
    got = by_interval(result.candles)
    assert values(got["1m"]) == (9.5, 11.0, 9.2, 10.8, 150.0, None, 5, 1)
    assert got["1m"].revision == 2
    for name in ("5m", "15m", "30m", "1h", "2h", "4h"):
        # The old bar is gone: high 12 is no longer there, its volume is not added.
        assert values(got[name]) == (10.0, 11.0, 9.0, 10.8, 250.0, None, 6, 2), name
        assert got[name].revision == 3


def test_superseding_bar_publishes_only_candles_that_change() -> None:
    r, _ = make(T0 + 50_000)
    r.process([bar(0, o=10.0, h=20.0, l=5.0, c=10.0, v=100.0)])
    r.process([bar(1, o=10.0, h=12.0, l=9.0, c=11.0, v=100.0)])
    # Same volume and close, high still below the bucket's max, low above its min.
    result = r.process([bar(1, o=10.0, h=13.0, l=8.0, c=11.0, v=100.0)])
    got = by_interval(result.candles)
    assert set(got) == {"1m"}
    assert got["1m"].revision == 2
    assert values(got["1m"]) == (10.0, 13.0, 8.0, 11.0, 100.0, None, None, 1)
    # And the next change of the 5m candle continues from revision 2.
    assert by_interval(r.process([bar(2, o=11.0, c=11.0)]).candles)["5m"].revision == 3


def test_superseding_an_earlier_minute_out_of_order() -> None:
    r, _ = make(T0 + 3 * MIN)
    r.process([bar(0, o=10.0, c=10.0, v=1.0), bar(1, o=11.0, c=12.0, v=2.0)])
    result = r.process([bar(0, o=9.0, h=9.5, l=8.0, c=9.5, v=4.0)])
    got = by_interval(result.candles)
    assert values(got["5m"]) == (9.0, 12.0, 8.0, 12.0, 6.0, None, None, 2)


def _awkward_bars() -> list[Bar]:
    """Ten bars whose float sums depend on the order they are added in."""
    rng = random.Random(7)
    out = []
    for m in range(10):
        lo = round(rng.uniform(90, 110), 4)
        hi = round(lo + rng.uniform(0, 3), 4)
        o = round(rng.uniform(lo, hi), 4)
        c = round(rng.uniform(lo, hi), 4)
        v = round(rng.uniform(0, 10), 3) if m % 3 else 0.1 * (m + 1)
        vw = round(rng.uniform(lo, hi), 4) if m % 4 else None
        out.append(bar(m, o=o, h=hi, l=lo, c=c, v=v, vw=vw, n=m * 7 if m % 2 else None))
    return out


def _final_values(r: Resampler, feeds: Sequence[Sequence[Bar]]) -> dict[tuple[str, int], Candle]:
    latest: dict[tuple[str, int], Candle] = {}
    for batch in feeds:
        for c in r.process(batch).candles:
            latest[(c.interval, c.timestamp)] = c
    return latest


def test_out_of_order_bars_give_the_same_candles() -> None:
    bars = _awkward_bars()
    in_order = _final_values(make(T0 + 10 * MIN)[0], [[b] for b in bars])
    shuffled = bars[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != bars
    out_of_order = _final_values(make(T0 + 10 * MIN)[0], [[b] for b in shuffled])
    reversed_one_batch = _final_values(make(T0 + 10 * MIN)[0], [bars[::-1]])
    assert set(in_order) == set(out_of_order) == set(reversed_one_batch)
    for key, candle in in_order.items():
        # Bit-for-bit, not approximately.
        assert values(out_of_order[key]) == values(candle), key
        assert values(reversed_one_batch[key]) == values(candle), key
    expected = oracle_candles(bars, IV_MS)
    for (name, start), candle in in_order.items():
        assert values_close(values(candle), expected[(name, "AAA", start)])


def test_vwap_and_trades_only_over_bars_that_carry_them() -> None:
    r, _ = make(T0 + 20 * MIN)
    result = r.process(
        [
            # bucket [0, 5): vw on two of three bars, n on two of three
            bar(0, o=10.0, v=100.0, vw=10.0, n=5),
            bar(1, o=10.0, v=300.0, vw=None, n=None),
            bar(2, o=10.0, v=100.0, vw=20.0, n=7),
            # bucket [5, 10): neither vw nor n anywhere
            bar(5, o=10.0, v=100.0),
            bar(6, o=10.0, v=50.0),
            # bucket [10, 15): vw present but only on zero-volume bars; n = 0 is a count
            bar(10, o=10.0, v=0.0, vw=10.0, n=0),
            bar(11, o=10.0, v=40.0),
        ]
    )
    five = {c.timestamp: c for c in result.candles if c.interval == "5m"}
    assert (five[T0].volume, five[T0].vwap, five[T0].trades) == (500.0, 15.0, 12)
    assert (five[T0 + 5 * MIN].vwap, five[T0 + 5 * MIN].trades) == (None, None)
    assert five[T0 + 5 * MIN].volume == 150.0
    assert (five[T0 + 10 * MIN].vwap, five[T0 + 10 * MIN].trades) == (None, 0)
    fifteen = next(c for c in result.candles if c.interval == "15m")
    assert (fifteen.volume, fifteen.vwap, fifteen.trades, fifteen.bars) == (690.0, 15.0, 12, 7)


# -- final ---------------------------------------------------------------------------------------


def test_final_via_advance() -> None:
    r, clock = make(T0 + 30_000)
    r.process([bar(0, o=10.0, c=11.0)])
    clock.set(T0 + MIN + GRACE - 1)
    assert r.advance() == []
    clock.set(T0 + MIN + GRACE + 1)
    got = by_interval(r.advance())
    assert set(got) == {"1m"}
    assert got["1m"].final is True
    assert got["1m"].revision == 2
    assert values(got["1m"]) == (10.0, 11.0, 10.0, 11.0, 100.0, None, None, 1)
    assert r.advance() == []
    clock.set(T0 + 5 * MIN + GRACE - 1)
    assert r.advance() == []
    clock.set(T0 + 5 * MIN + GRACE + 1)
    assert set(by_interval(r.advance())) == {"5m"}
    clock.set(T0 + 4 * HOUR + GRACE + 1)
    got = by_interval(r.advance())
    assert set(got) == {"15m", "30m", "1h", "2h", "4h"}
    assert all(c.final and c.revision == 2 for c in got.values())
    assert r.advance() == []


def test_final_inside_process() -> None:
    r, clock = make(T0 + 30_000)
    r.process([bar(0, o=10.0), bar(0, o=10.0, symbol="BBB")])
    clock.set(T0 + 6 * MIN + 30_000)
    result = r.process([bar(6, o=12.0)])
    finals = {(c.symbol, c.interval): c for c in result.candles if c.final}
    assert set(finals) == {("AAA", "1m"), ("BBB", "1m"), ("AAA", "5m"), ("BBB", "5m")}
    assert all(c.revision == 2 and c.timestamp == T0 for c in finals.values())
    forming = {c.interval: c for c in result.candles if not c.final}
    assert forming["1m"].timestamp == T0 + 6 * MIN
    assert forming["5m"].timestamp == T0 + 5 * MIN
    assert forming["15m"].revision == 2  # two bars, never final yet
    assert len(result.candles) == 4 + 7


def test_late_bar_into_final_bucket_republishes_final() -> None:
    r, clock = make(T0 + 30_000)
    for m in range(4):
        clock.set(T0 + m * MIN + 30_000)
        r.process([bar(m, o=10.0 + m)])
    clock.set(T0 + 5 * MIN + GRACE + 1)
    finalized = by_interval([c for c in r.advance() if c.timestamp == T0 and c.interval == "5m"])
    assert finalized["5m"].final is True
    assert finalized["5m"].revision == 5  # four bars, then final
    # A correction and a new minute in the final 5m bucket.
    result = r.process([bar(2, o=20.0, v=50.0), bar(4, o=5.0)])
    five = [c for c in result.candles if c.interval == "5m"]
    assert len(five) == 1
    assert five[0].final is True
    assert five[0].revision == 7
    assert values(five[0]) == (10.0, 20.0, 5.0, 5.0, 450.0, None, None, 5)
    one = {c.timestamp: c for c in result.candles if c.interval == "1m"}
    assert one[T0 + 2 * MIN].final is True
    assert one[T0 + 2 * MIN].revision == 3  # bar, final, correction
    assert one[T0 + 4 * MIN].final is True  # a new minute whose bucket is long over
    assert one[T0 + 4 * MIN].revision == 1
    assert r.advance() == []


def test_bar_for_a_long_past_bucket_is_final_at_once() -> None:
    r, _ = make(T0 + 5 * HOUR)
    got = by_interval(r.process([bar(30, o=10.0)]).candles)
    assert all(c.final for c in got.values())
    assert all(c.revision == 1 for c in got.values())


# -- bounded state -------------------------------------------------------------------------------


def test_state_is_bounded() -> None:
    r, clock = make()
    symbols = ["AAA", "BBB", "CCC"]
    minutes = 16 * 60
    counts: list[int] = []
    evicted = 0
    for m in range(minutes):
        clock.set(T0 + (m + 1) * MIN + 2_000)
        r.process([bar(m, o=10.0 + (m % 7), symbol=s) for s in symbols])
        evicted += r.evict()
        counts.append(r.open_bucket_count())
    # Everything from before the last 15 minutes + 4 hours must have gone.
    assert evicted > minutes * len(symbols)
    # Per symbol: at most ~17 one-minute buckets and a few of each longer interval.
    assert max(counts) <= len(symbols) * 40
    # After warm-up the state depends only on the phase within 4 hours, not on how many
    # minutes have been processed.
    for m in range(300, minutes - 240):
        assert counts[m] == counts[m + 240], m
    assert counts[-1] < len(symbols) * 40


def test_evict_keeps_forming_and_recent_buckets() -> None:
    r, clock = make()
    clock.set(T0 + MIN + 2_000)
    r.process([bar(0)])
    # Far later bar for another symbol moves the watermark, but AAA's 4h bucket is forming.
    clock.set(T0 + 3 * MIN)
    r.process([bar(2, symbol="BBB")])
    before = r.open_bucket_count()
    assert r.evict() == 0
    assert r.open_bucket_count() == before == 14


# -- through the pipeline: restarts and restores -------------------------------------------------

StoreFactory = Callable[[str, ManualClock], Awaitable[Store]]


@pytest.fixture(params=["memory", "sqlite"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """make(name, clock): a started store; the same name reopens the same data (a restart)."""
    started: list[Store] = []
    memory: dict[str, MemoryStore] = {}

    async def make_store(name: str, clock: ManualClock) -> Store:
        store: Store
        if request.param == "memory":
            if name in memory:
                return memory[name]
            store = memory[name] = MemoryStore(IVS, clock)
        else:
            store = SQLiteStore(tmp_path / f"{name}.db", IVS, clock)
        await store.start()
        started.append(store)
        return store

    yield make_store
    for store in started:
        await store.stop()


def new_pipeline(store: Store, clock: ManualClock) -> CandlePipeline:
    return CandlePipeline(Resampler(IVS, clock, grace_ms=GRACE, lateness_ms=LATENESS), store)


async def dump(store: Store) -> dict[tuple[str, str, int], Candle]:
    out = {}
    for iv in IVS:
        for symbol in ("AAA", "BBB", "CCC"):
            for c in await store.query(symbol, iv):
                out[(iv.name, symbol, c.timestamp)] = c
    return out


def _scenario(kind: str, seed: int = 11) -> list[tuple[int, list[Bar]]]:
    """Batches (clock, bars) over 5 hours for 3 symbols, starting at T0 + 2h, with late
    corrections within and beyond the lateness, duplicates of old bars, missing minutes.

    ``kind`` "dyadic" uses values whose products and sums are exact in binary floating point;
    "decimal" uses realistic decimal prices and fractional volumes.
    """
    rng = random.Random(seed)

    def price() -> float:
        if kind == "dyadic":
            return rng.randint(50 * 64, 150 * 64) / 64
        return round(rng.uniform(50, 150), 4)

    def make_bar(symbol: str, minute: int) -> Bar:
        a, b, c, d = sorted(price() for _ in range(4))
        o, cl = (b, c) if rng.random() < 0.5 else (c, b)
        if kind == "dyadic":
            v: float = rng.randint(0, 5000)
        else:
            v = rng.choice([float(rng.randint(1, 5000)), round(rng.uniform(0, 3000), 3)])
        vw = (
            rng.choice([None, b, c, (b + c) / 2])
            if kind == "dyadic"
            else rng.choice([None, round(rng.uniform(a, d), 4)])
        )
        n = rng.choice([None, rng.randint(0, 500)])
        return bar(minute, o=o, h=d, l=a, c=cl, v=v, vw=vw, n=n, symbol=symbol)

    batches: list[tuple[int, list[Bar]]] = []
    sent: list[Bar] = []
    start = 120
    for m in range(start, start + 300):
        batch = [make_bar(s, m) for s in ("AAA", "BBB", "CCC") if rng.random() < 0.9]
        if sent and rng.random() < 0.3:
            old = rng.choice(sent)
            age = (T0 + m * MIN - old.t) // MIN
            if age <= 60:
                batch.append(make_bar(old.symbol, (old.t - T0) // MIN))  # correction
        if sent and rng.random() < 0.3:
            batch.append(rng.choice(sent))  # duplicate (or re-send of an older version)
        if rng.random() < 0.1:
            batch.append(make_bar(rng.choice(["AAA", "BBB"]), m - rng.randint(16, 90)))
        rng.shuffle(batch)
        sent.extend(batch)
        batches.append((T0 + (m + 1) * MIN + 2_000, batch))
    return batches


async def _run(
    pipeline: CandlePipeline, clock: ManualClock, batches: Sequence[tuple[int, list[Bar]]]
) -> None:
    for now, batch in batches:
        clock.set(now)
        await pipeline.handle(batch)


async def _single_and_restarted(
    store_factory: StoreFactory, batches: list[tuple[int, list[Bar]]], split: int
) -> tuple[dict[tuple[str, str, int], Candle], dict[tuple[str, str, int], Candle]]:
    end = batches[-1][0] + 5 * HOUR

    clock = ManualClock(T0)
    single = new_pipeline(await store_factory("single", clock), clock)
    await _run(single, clock, batches)
    clock.set(end)
    await single.tick()
    expected = await dump(single.store)

    clock2 = ManualClock(T0)
    first = new_pipeline(await store_factory("restart", clock2), clock2)
    await _run(first, clock2, batches[:split])
    await first.store.stop()
    second = new_pipeline(await store_factory("restart", clock2), clock2)
    await second.recover()
    await _run(second, clock2, batches[split:])
    clock2.set(end)
    await second.tick()
    return expected, await dump(second.store)


@pytest.mark.parametrize("kind", ["dyadic", "decimal"])
async def test_restart_gives_the_same_store(store_factory: StoreFactory, kind: str) -> None:
    batches = _scenario(kind)
    all_bars = [b for _, batch in batches for b in batch]
    expected, restarted = await _single_and_restarted(store_factory, batches, len(batches) // 2)

    # The single run is right: it matches the oracle, and everything ended final.
    oracle = oracle_candles(all_bars, IV_MS)
    assert {(name, s, t) for name, s, t in expected} == set(oracle)
    for key, candle in expected.items():
        assert values_close(values(candle), oracle[key]), key
        assert candle.final is True
    # The second half really did contain late corrections and duplicates of first-half bars.
    first_half_keys = {(b.symbol, b.t) for _, batch in batches[: len(batches) // 2] for b in batch}
    assert sum((b.symbol, b.t) in first_half_keys for _, bt in batches[150:] for b in bt) > 10

    assert set(restarted) == set(expected)
    mismatched = [key for key in expected if restarted[key] != expected[key]]
    assert mismatched == [], (
        f"{len(mismatched)} candles differ, e.g. {mismatched[0]}: "
        f"single={expected[mismatched[0]]} restarted={restarted[mismatched[0]]}"
    )


async def test_restart_mid_bucket_then_late_correction(store_factory: StoreFactory) -> None:
    """A hand-made restart: forming 5m bucket, a final (not yet evicted) 1m bucket corrected
    after the restart, and a duplicate of a pre-restart bar."""
    batches = [
        (T0 + 1 * MIN + 2_000, [bar(0, o=10.0, c=11.0, v=8.0, vw=10.5, n=3)]),
        (T0 + 2 * MIN + 2_000, [bar(1, o=11.0, c=12.0, v=4.0, vw=11.5, n=1)]),
        # restart here
        (
            T0 + 3 * MIN + 2_000,
            [bar(2, o=12.0, c=9.0, v=2.0), bar(1, o=11.0, c=12.0, v=4.0, vw=11.5, n=1)],
        ),
        (T0 + 4 * MIN + 2_000, [bar(0, o=10.0, h=13.0, c=11.0, v=16.0, vw=10.25, n=9)]),
        (T0 + 25 * MIN + 2_000, [bar(24, o=9.0, symbol="BBB")]),
    ]
    expected, restarted = await _single_and_restarted(store_factory, batches, 2)
    five = expected[("5m", "AAA", T0)]
    assert values(five) == (10.0, 13.0, 9.0, 9.0, 22.0, 10.5, 10, 3)
    assert five.final is True
    assert five.revision == 5  # 3 bars + correction + final (the duplicate changed nothing)
    assert restarted == expected


async def test_restart_after_downtime_finalizes_due_candles(store_factory: StoreFactory) -> None:
    """Candles left forming in the store must be finalized after a restart even when their
    end + grace passed while the process was down, exactly as without the restart."""
    b = bar(0, o=10.0, c=11.0, v=8.0)

    clock = ManualClock(T0 + 30_000)
    single = new_pipeline(await store_factory("single", clock), clock)
    await single.handle([b])
    clock.set(T0 + 10 * MIN)
    await single.tick()
    expected = await dump(single.store)
    assert expected[("1m", "AAA", T0)].final is True
    assert expected[("1m", "AAA", T0)].revision == 2
    assert expected[("5m", "AAA", T0)].final is True
    assert expected[("15m", "AAA", T0)].final is False

    clock2 = ManualClock(T0 + 30_000)
    first = new_pipeline(await store_factory("restart", clock2), clock2)
    await first.handle([b])
    await first.store.stop()
    clock2.set(T0 + 10 * MIN)  # down for ten minutes
    second = new_pipeline(await store_factory("restart", clock2), clock2)
    await second.recover()
    await second.tick()
    assert await dump(second.store) == expected


async def test_very_late_bar_restores_evicted_bucket(store_factory: StoreFactory) -> None:
    clock = ManualClock(T0)
    pipeline = new_pipeline(await store_factory("late", clock), clock)
    # Reference: the same feed with a resampler that never evicts anything.
    ref_clock = ManualClock(T0)
    ref = CandlePipeline(
        Resampler(IVS, ref_clock, grace_ms=GRACE, lateness_ms=10**12),
        await store_factory("reference", ref_clock),
    )
    feed: list[tuple[int, list[Bar]]] = [
        (T0 + (m + 1) * MIN + 2_000, [bar(m, o=10.0 + m % 5, c=10.5, v=2.0 + m, vw=10.25, n=m)])
        for m in range(40)
    ]
    await _run(pipeline, clock, feed)
    await _run(ref, ref_clock, feed)
    assert pipeline.resampler.open_bucket_count() < ref.resampler.open_bucket_count()
    before = await dump(pipeline.store)
    assert before == await dump(ref.store)
    restored_before = pipeline.stats.buckets_restored

    late = bar(2, o=10.0, h=30.0, l=1.0, c=2.0, v=100.0, vw=5.0, n=1000)
    result = await pipeline.handle([late])
    ref_result = await ref.handle([late])
    assert pipeline.stats.buckets_restored > restored_before
    got = by_interval(result.candles)
    assert set(got) == set(IV_MS)
    for name, candle in got.items():
        old = before[(name, "AAA", candle.timestamp)]
        assert candle.revision == old.revision + 1, name
    assert got["1m"].final and got["5m"].final and got["15m"].final
    assert not got["1h"].final
    all_bars = [b for _, batch in feed for b in batch] + [late]
    oracle = oracle_candles(all_bars, IV_MS)
    for name, candle in got.items():
        assert values_close(values(candle), oracle[(name, "AAA", candle.timestamp)]), name
    assert result.candles == ref_result.candles
    assert await dump(pipeline.store) == await dump(ref.store)

    # A duplicate of an evicted bar is recognised as one after the restore.
    dup = await pipeline.handle([feed[5][1][0]])
    assert (dup.accepted, dup.duplicates, dup.candles) == (0, 1, [])


@pytest.mark.parametrize(("v", "vw"), [(3.0, 10.8), (0.0, 10.5)])
async def test_duplicate_of_evicted_bar_is_a_duplicate(
    store_factory: StoreFactory, v: float, vw: float
) -> None:
    """The stored 1-minute candle must still be recognised as the same bar when that bar is
    sent again after its bucket was evicted, also when its vw does not survive the trip through
    the candle's vwap (10.8 * 3 / 3 != 10.8 in binary floating point; no vwap at zero volume)."""
    clock = ManualClock(T0)
    pipeline = new_pipeline(await store_factory("vw", clock), clock)
    original = bar(0, o=10.0, h=11.0, l=10.0, c=11.0, v=v, vw=vw, n=2)
    feed = [(T0 + MIN + 2_000, [original])] + [
        (T0 + (m + 1) * MIN + 2_000, [bar(m, o=11.0)]) for m in range(1, 40)
    ]
    await _run(pipeline, clock, feed)
    before = await dump(pipeline.store)
    result = await pipeline.handle([original])
    republished = [(c.interval, c.revision) for c in result.candles]
    assert (result.accepted, result.duplicates, republished) == (0, 1, [])
    assert await dump(pipeline.store) == before


# -- bars at the bounds of validate_bar -----------------------------------------------------------

BOUND_T = 1_700_006_400_000


def test_a_day_of_bars_at_the_bounds_sums_to_finite_numbers() -> None:
    bars = [
        Bar("MAX", BOUND_T + i * 60_000, MAX_PRICE, MAX_PRICE, MAX_PRICE, MAX_PRICE, MAX_VOLUME,
            MAX_PRICE, MAX_TRADES)
        for i in range(1440)
    ]  # fmt: skip
    resampler = Resampler(
        IntervalSet(["1m", "4h", "1d"], {}), ManualClock(BOUND_T + 10 * 86_400_000)
    )
    candles = resampler.process(bars).candles
    assert {c.interval for c in candles} == {"1m", "4h", "1d"}
    for c in candles:
        assert all(math.isfinite(x) for x in (c.open, c.high, c.low, c.close, c.volume))
        assert c.vwap is not None and math.isfinite(c.vwap)
        assert c.trades is not None and c.trades < 2**53
