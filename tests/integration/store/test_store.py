"""The Store contract, run against every backend (MemoryStore, SQLiteStore, DynamoDBStore).

DynamoDBStore runs against dynalite (the ``dynalite_url`` session fixture in conftest.py).

Expected values are written out by hand (bucket starts, retention in days) rather than derived
from ``speedlayer.intervals``, so a wrong formula there fails here too.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.errors import StoreError
from speedlayer.intervals import DEFAULT_INTERVALS, Interval, IntervalSet
from speedlayer.models import Bar, Candle
from speedlayer.store.base import Store
from speedlayer.store.dynamodb import DynamoDBStore
from speedlayer.store.memory import MemoryStore
from speedlayer.store.sqlite import SQLiteStore

MIN_MS = 60_000
DAY_S = 86_400
# 2024-01-02T14:37:00Z
T0_MS = 1_704_206_220_000
NOW_MS = T0_MS + 3_600_000
INTERVALS = IntervalSet(DEFAULT_INTERVALS)
TABLE_NAMES = {
    "1m": "speed_layer_ohlcv_1min",
    "5m": "speed_layer_ohlcv_5min",
    "15m": "speed_layer_ohlcv_15min",
    "30m": "speed_layer_ohlcv_30min",
    "1h": "speed_layer_ohlcv_1h",
    "2h": "speed_layer_ohlcv_2h",
    "4h": "speed_layer_ohlcv_4h",
}


def iv(name: str) -> Interval:
    return INTERVALS.get(name)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def make(
    symbol: str,
    interval: str,
    timestamp: int,
    *,
    revision: int = 1,
    final: bool = True,
    ttl: int | None = None,
    price: float = 100.0,
    volume: float = 1000.0,
    vwap: float | None = None,
    trades: int | None = None,
    bars: int = 1,
) -> Candle:
    return Candle(
        symbol=symbol,
        interval=interval,
        timestamp=timestamp,
        open=price,
        high=price + 1.5,
        low=price - 0.25,
        close=price + 0.5,
        volume=volume,
        vwap=vwap,
        trades=trades,
        bars=bars,
        final=final,
        revision=revision,
        ttl=NOW_MS // 1000 + 10 * DAY_S if ttl is None else ttl,
    )


@dataclass
class Env:
    store: Store
    clock: ManualClock
    kind: str
    path: Path


BACKENDS = ["memory", "sqlite", "dynamodb"]


def open_store(
    kind: str,
    path: Path,
    clock: ManualClock,
    intervals: IntervalSet,
    dynamodb_url: str | None = None,
) -> Store:
    if kind == "memory":
        return MemoryStore(intervals, clock)
    if kind == "dynamodb":
        assert dynamodb_url is not None
        # a fresh set of the seven tables per store (the emulator is shared by the session)
        prefix = f"t{uuid.uuid4().hex[:12]}_"
        return DynamoDBStore(intervals, clock, endpoint_url=dynamodb_url, table_prefix=prefix)
    return SQLiteStore(path, intervals, clock)


def emulator_url(request: pytest.FixtureRequest, kind: str) -> str | None:
    """Start (once per session) the emulator a backend needs; memory/sqlite need none."""
    return str(request.getfixturevalue("dynalite_url")) if kind == "dynamodb" else None


@pytest.fixture(params=BACKENDS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    clock = ManualClock(NOW_MS)
    path = tmp_path / "store.db"
    kind = request.param
    store = open_store(kind, path, clock, INTERVALS, emulator_url(request, kind))
    async with store:
        yield Env(store, clock, kind, path)
        if isinstance(store, DynamoDBStore):
            with contextlib.suppress(StoreError):
                await store.delete_tables()


# -- ttl ----------------------------------------------------------------------------------------

# (interval, bucket start of T0 = 14:37, bucket end, default retention in days)
TTL_CASES = [
    ("1m", "2024-01-02T14:37", "2024-01-02T14:38", 7),
    ("5m", "2024-01-02T14:35", "2024-01-02T14:40", 7),
    ("15m", "2024-01-02T14:30", "2024-01-02T14:45", 30),
    ("30m", "2024-01-02T14:30", "2024-01-02T15:00", 30),
    ("1h", "2024-01-02T14:00", "2024-01-02T15:00", 90),
    ("2h", "2024-01-02T14:00", "2024-01-02T16:00", 90),
    ("4h", "2024-01-02T12:00", "2024-01-02T16:00", 90),
]


@pytest.mark.parametrize("clock_offset_ms", [0, 3_600_000, 2 * DAY_S * 1000])
async def test_ttl_of_written_candles_is_bucket_end_plus_retention(
    env: Env, clock_offset_ms: int
) -> None:
    """ttl comes from event time: the same whatever the wall clock says at write time."""
    env.clock.set(T0_MS + clock_offset_ms)
    pipeline = CandlePipeline(Resampler(INTERVALS, env.clock), env.store)
    await pipeline.handle([Bar("AAPL", T0_MS, 10.0, 11.0, 9.0, 10.5, 100.0)])
    for name, start, end, days in TTL_CASES:
        stored = await env.store.query("AAPL", iv(name))
        assert [c.timestamp for c in stored] == [ms(start)], name
        expected_ttl = ms(end) // 1000 + days * DAY_S
        assert stored[0].ttl == expected_ttl, (name, stored[0].ttl, expected_ttl)
        assert stored[0].interval == name


@pytest.mark.parametrize("kind", BACKENDS)
async def test_ttl_follows_retention_overrides(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    intervals = IntervalSet(DEFAULT_INTERVALS, {"1m": "3d", "1h": "12h", "*": "1y"})
    overrides = {"1m": 3 * DAY_S, "1h": 12 * 3600}
    url = emulator_url(request, kind)
    clock = ManualClock(T0_MS)
    async with open_store(kind, tmp_path / "ovr.db", clock, intervals, url) as store:
        pipeline = CandlePipeline(Resampler(intervals, clock), store)
        await pipeline.handle([Bar("AAPL", T0_MS, 10.0, 11.0, 9.0, 10.5, 100.0)])
        for name, _start, end, _days in TTL_CASES:
            (candle,) = await store.query("AAPL", intervals.get(name))
            retention = overrides.get(name, 365 * DAY_S)
            assert candle.ttl == ms(end) // 1000 + retention, (kind, name)


# -- expiry -------------------------------------------------------------------------------------


async def test_expired_candles_are_never_returned_even_before_purge(env: Env) -> None:
    now_s = NOW_MS // 1000
    base = ms("2024-01-02T14:00")
    candles = [
        make("AAPL", "5m", base + 0 * 300_000, ttl=now_s - 100),
        make("AAPL", "5m", base + 1 * 300_000, ttl=now_s),  # ttl == now: expired
        make("AAPL", "5m", base + 2 * 300_000, ttl=now_s + 1),
        make("AAPL", "5m", base + 3 * 300_000, ttl=now_s + 1000),
    ]
    await env.store.upsert(candles)
    got = await env.store.query("AAPL", iv("5m"))
    assert [c.timestamp for c in got] == [base + 600_000, base + 900_000]
    got_desc = await env.store.query("AAPL", iv("5m"), order="desc")
    assert [c.timestamp for c in got_desc] == [base + 900_000, base + 600_000]
    # just before the ttl second starts the candle is still alive; anywhere inside it, it is not
    env.clock.set((now_s + 1) * 1000 - 1)
    assert [c.timestamp for c in await env.store.query("AAPL", iv("5m"))] == [
        base + 600_000,
        base + 900_000,
    ]
    env.clock.set((now_s + 1) * 1000 + 999)
    assert [c.timestamp for c in await env.store.query("AAPL", iv("5m"))] == [base + 900_000]
    # get_candles is resampler state: it returns expired candles too
    found = await env.store.get_candles(iv("5m"), [("AAPL", c.timestamp) for c in candles])
    assert set(found) == {("AAPL", c.timestamp) for c in candles}


async def test_limit_counts_only_unexpired_candles(env: Env) -> None:
    now_s = NOW_MS // 1000
    base = ms("2024-01-02T10:00")
    candles = [
        make("MSFT", "1h", base + i * 3_600_000, ttl=now_s - 1 if i % 2 == 0 else now_s + 50)
        for i in range(6)
    ]
    await env.store.upsert(candles)
    got = await env.store.query("MSFT", iv("1h"), limit=2)
    assert [c.timestamp for c in got] == [base + 3_600_000, base + 3 * 3_600_000]
    got = await env.store.query("MSFT", iv("1h"), limit=2, order="desc")
    assert [c.timestamp for c in got] == [base + 5 * 3_600_000, base + 3 * 3_600_000]


async def test_purge_expired_deletes_exactly_the_expired_candles(env: Env) -> None:
    now_s = NOW_MS // 1000
    base = ms("2024-01-02T12:00")
    alive: list[Candle] = []
    dead: list[Candle] = []
    for k, name in enumerate(["1m", "15m", "4h"]):
        step = {"1m": 60_000, "15m": 900_000, "4h": 14_400_000}[name]
        for i in range(5):
            for symbol in ("AAPL", "SPY"):
                ttl = now_s - 5 + i * 2 + k  # some <= now, some > now
                candle = make(symbol, name, base + i * step, ttl=ttl)
                (dead if ttl <= now_s else alive).append(candle)
    await env.store.upsert(alive + dead)
    assert dead and alive
    assert await env.store.purge_expired() == len(dead)
    for name in ("1m", "15m", "4h"):
        everything = [c for c in alive + dead if c.interval == name]
        found = await env.store.get_candles(iv(name), [(c.symbol, c.timestamp) for c in everything])
        assert set(found.values()) == {c for c in alive if c.interval == name}
    assert await env.store.purge_expired() == 0
    # a later clock expires the rest
    env.clock.set((now_s + 100) * 1000)
    assert await env.store.purge_expired() == len(alive)
    for name in ("1m", "15m", "4h"):
        assert await env.store.query("AAPL", iv(name)) == []
        assert await env.store.query("SPY", iv(name)) == []


async def test_store_is_consistent_after_purge_and_rewrite(env: Env) -> None:
    now_s = NOW_MS // 1000
    base = ms("2024-01-02T14:00")
    await env.store.upsert(
        [make("AAPL", "1m", base + i * MIN_MS, ttl=now_s - 1 if i in (1, 3) else now_s + 60)
         for i in range(5)]
    )  # fmt: skip
    assert await env.store.purge_expired() == 2
    await env.store.upsert([make("AAPL", "1m", base + 3 * MIN_MS, ttl=now_s + 60, revision=2)])
    got = await env.store.query("AAPL", iv("1m"))
    assert [c.timestamp for c in got] == [
        base,
        base + 2 * MIN_MS,
        base + 3 * MIN_MS,
        base + 4 * MIN_MS,
    ]
    got = await env.store.query("AAPL", iv("1m"), start_ms=base + MIN_MS, order="desc", limit=3)
    assert [c.timestamp for c in got] == [base + 4 * MIN_MS, base + 3 * MIN_MS, base + 2 * MIN_MS]
    bars = await env.store.bars_between("AAPL", base, base + 10 * MIN_MS)
    assert [b.t for b in bars] == [base, base + 2 * MIN_MS, base + 3 * MIN_MS, base + 4 * MIN_MS]


# -- upsert -------------------------------------------------------------------------------------


async def test_upsert_is_idempotent(env: Env) -> None:
    base = ms("2024-01-02T14:00")
    candles = [
        make(sym, name, base + i * step, revision=i + 1, vwap=100.25, trades=7)
        for sym in ("AAPL", "MSFT")
        for name, step in (("1m", 60_000), ("5m", 300_000), ("2h", 7_200_000))
        for i in range(4)
    ]
    await env.store.upsert(candles)
    first = {
        (s, n): await env.store.query(s, iv(n))
        for s in ("AAPL", "MSFT")
        for n in ("1m", "5m", "2h")
    }
    await env.store.upsert(candles)
    await env.store.upsert(list(reversed(candles)))
    for (symbol, name), rows in first.items():
        assert await env.store.query(symbol, iv(name)) == rows
        assert rows == [c for c in candles if c.symbol == symbol and c.interval == name]


async def test_upsert_never_replaces_a_higher_revision(env: Env) -> None:
    ts = ms("2024-01-02T14:30")
    v5 = make("AAPL", "15m", ts, revision=5, price=100.0, final=True)
    assert await env.store.upsert([v5]) == 1
    older = make("AAPL", "15m", ts, revision=3, price=90.0, final=False)
    assert await env.store.upsert([older]) == 0
    assert await env.store.query("AAPL", iv("15m")) == [v5]
    # equal revision replaces (a re-delivery of the same revision converges)
    same = make("AAPL", "15m", ts, revision=5, price=101.0)
    await env.store.upsert([same])
    assert await env.store.query("AAPL", iv("15m")) == [same]
    newer = make("AAPL", "15m", ts, revision=6, price=102.0, vwap=102.3, trades=12)
    assert await env.store.upsert([newer]) == 1
    assert await env.store.query("AAPL", iv("15m")) == [newer]
    # in one batch, out of order: the higher revision stays whatever comes last
    r8 = make("AAPL", "15m", ts, revision=8, price=108.0)
    r7 = make("AAPL", "15m", ts, revision=7, price=107.0)
    await env.store.upsert([r8, r7])
    assert await env.store.query("AAPL", iv("15m")) == [r8]
    assert await env.store.get_candles(iv("15m"), [("AAPL", ts)]) == {("AAPL", ts): r8}


async def test_round_trip_preserves_types_and_nulls(env: Env) -> None:
    ts = ms("2024-01-02T14:00")
    a = make("BTC-USD", "1h", ts, vwap=None, trades=None, final=False, volume=0.125)
    b = make("EUR/USD", "1h", ts, vwap=1.0987654321, trades=0, final=True, volume=1e12)
    await env.store.upsert([a, b])
    (ga,) = await env.store.query("BTC-USD", iv("1h"))
    (gb,) = await env.store.query("EUR/USD", iv("1h"))
    assert ga == a and gb == b
    assert ga.vwap is None and ga.trades is None and ga.final is False
    assert gb.final is True and isinstance(gb.trades, int) and isinstance(gb.timestamp, int)


# -- query --------------------------------------------------------------------------------------


async def test_query_range_limit_and_order(env: Env) -> None:
    base = ms("2024-01-02T13:00")
    step = 300_000
    ts = [base + i * step for i in range(10)]
    await env.store.upsert([make("AAPL", "5m", t, price=100 + i) for i, t in enumerate(ts)])
    # neighbours that must never leak in: other symbols (incl. a prefix), other intervals
    await env.store.upsert(
        [make("AAPLX", "5m", t) for t in ts]
        + [make("AAP", "5m", t) for t in ts]
        + [make("AAPL", "15m", base + i * 900_000) for i in range(4)]
        + [make("AAPL", "1m", t + 60_000) for t in ts]
    )
    q = env.store.query
    five = iv("5m")

    async def times(**kwargs: object) -> list[int]:
        return [c.timestamp for c in await q("AAPL", five, **kwargs)]  # type: ignore[arg-type]

    assert await times() == ts
    assert [c.open for c in await q("AAPL", five)] == [100.0 + i for i in range(10)]
    assert await times(start_ms=ts[2], end_ms=ts[5]) == ts[2:5]  # start incl., end excl.
    assert await times(start_ms=ts[2] + 1, end_ms=ts[5]) == ts[3:5]
    assert await times(start_ms=ts[2] - 1, end_ms=ts[5] + 1) == ts[2:6]
    assert await times(start_ms=ts[7]) == ts[7:]
    assert await times(end_ms=ts[3]) == ts[:3]
    assert await times(start_ms=ts[5], end_ms=ts[5]) == []
    assert await times(start_ms=ts[9] + 1) == []
    assert await times(limit=3) == ts[:3]
    assert await times(order="desc") == ts[::-1]
    assert await times(order="desc", limit=3) == [ts[9], ts[8], ts[7]]
    assert await times(start_ms=ts[2], end_ms=ts[6], order="desc") == [ts[5], ts[4], ts[3], ts[2]]
    assert await times(start_ms=ts[2], end_ms=ts[6], order="desc", limit=2) == [ts[5], ts[4]]
    assert await times(start_ms=ts[2], end_ms=ts[6], limit=2) == [ts[2], ts[3]]
    assert await times(limit=100) == ts
    assert await q("NOPE", five) == []
    assert [c.timestamp for c in await q("AAPL", iv("15m"))] == [
        base + i * 900_000 for i in range(4)
    ]
    assert all(c.symbol == "AAPL" and c.interval == "5m" for c in await q("AAPL", five))


# -- resampler state: bars, last bar times, candles by key, forming, symbols ----------------------


async def test_bars_between_returns_minute_candles_as_bars(env: Env) -> None:
    base = ms("2024-01-02T14:00")
    minute = [
        make("AAPL", "1m", base + i * MIN_MS, price=10 + i, volume=100 + i,
             vwap=(10.5 + i) if i % 2 else None, trades=(3 + i) if i % 3 else None)
        for i in range(8)
    ]  # fmt: skip
    await env.store.upsert(list(reversed(minute)))
    await env.store.upsert([make("AAPLX", "1m", base + i * MIN_MS) for i in range(8)])
    await env.store.upsert([make("AAPL", "5m", base), make("AAPL", "5m", base + 300_000)])
    bars = await env.store.bars_between("AAPL", base + 2 * MIN_MS, base + 6 * MIN_MS)
    assert bars == [
        Bar("AAPL", c.timestamp, c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades)
        for c in minute[2:6]
    ]
    assert await env.store.bars_between("AAPL", base + 2 * MIN_MS + 1, base + 3 * MIN_MS) == []
    assert len(await env.store.bars_between("AAPL", 0, base + 100 * MIN_MS)) == 8
    assert await env.store.bars_between("MSFT", 0, base + 100 * MIN_MS) == []


async def test_last_bar_times_come_from_the_minute_table(env: Env) -> None:
    base = ms("2024-01-02T14:00")
    await env.store.upsert(
        [make("AAPL", "1m", base + i * MIN_MS) for i in (3, 0, 7, 5)]
        + [make("SPY", "1m", base - 10 * MIN_MS)]
        # a later 5m candle must not count as a bar
        + [make("SPY", "5m", base + 3_000_000), make("ONLY5M", "5m", base)]
    )
    assert await env.store.last_bar_times(["AAPL", "SPY", "ONLY5M", "NONE"]) == {
        "AAPL": base + 7 * MIN_MS,
        "SPY": base - 10 * MIN_MS,
        "ONLY5M": None,
        "NONE": None,
    }
    assert await env.store.last_bar_times([]) == {}


async def test_get_candles_by_key(env: Env) -> None:
    base = ms("2024-01-02T14:00")
    a = make("AAPL", "30m", base, revision=3)
    b = make("AAPL", "30m", base + 1_800_000, final=False)
    c = make("MSFT", "30m", base, ttl=NOW_MS // 1000 - 1)  # expired: still state
    await env.store.upsert([a, b, c, make("AAPL", "1h", base)])
    keys = [("AAPL", base), ("AAPL", base + 1_800_000), ("MSFT", base), ("AAPL", base + 1)]
    assert await env.store.get_candles(iv("30m"), keys) == {
        ("AAPL", base): a,
        ("AAPL", base + 1_800_000): b,
        ("MSFT", base): c,
    }
    assert await env.store.get_candles(iv("2h"), keys) == {}
    assert await env.store.get_candles(iv("30m"), []) == {}


async def test_forming_returns_only_non_final_candles_of_the_interval(env: Env) -> None:
    base = ms("2024-01-02T14:00")
    forming = [
        make("AAPL", "5m", base + 300_000, final=False),
        make("SPY", "5m", base, final=False),
    ]
    await env.store.upsert(
        [*forming, make("AAPL", "5m", base, final=True), make("AAPL", "15m", base, final=False)]
    )
    got = await env.store.forming(iv("5m"))
    assert sorted(got, key=lambda c: (c.symbol, c.timestamp)) == sorted(
        forming, key=lambda c: (c.symbol, c.timestamp)
    )
    assert await env.store.forming(iv("1h")) == []
    # finalizing removes it from the forming set
    await env.store.upsert([make("SPY", "5m", base, final=True, revision=2)])
    assert [c.symbol for c in await env.store.forming(iv("5m"))] == ["AAPL"]


async def test_symbols_are_those_with_unexpired_candles_in_any_interval(env: Env) -> None:
    assert await env.store.symbols() == []
    now_s = NOW_MS // 1000
    base = ms("2024-01-02T14:00")
    await env.store.upsert(
        [make(s, "1m", base) for s in ("SPY", "AAPL", "BTC-USD", "AAPL")]
        + [make("AAPL", "1m", base + MIN_MS), make("ONLY1H", "1h", base)]
        # only expired candles: not a symbol any query would return anything for
        + [make("GONE", "1m", base, ttl=now_s), make("GONE", "4h", base - 7_200_000, ttl=now_s)]
        # one expired and one live candle: still a symbol
        + [make("HALF", "5m", base, ttl=now_s - 1), make("HALF", "15m", base, ttl=now_s + 1)]
    )
    assert await env.store.symbols() == ["AAPL", "BTC-USD", "HALF", "ONLY1H", "SPY"]
    env.clock.set((now_s + 1) * 1000)
    assert "HALF" not in await env.store.symbols()


async def test_symbols_follow_purges_and_later_writes(env: Env) -> None:
    """The symbol list is kept as candles come and go: a symbol whose candles all expired is
    gone, and comes back with a new candle."""
    now_s = NOW_MS // 1000
    base = ms("2024-01-02T14:00")
    await env.store.upsert(
        [make("KEEP", "1m", base, ttl=now_s + 100), make("DROP", "5m", base, ttl=now_s + 10),
         make("DROP", "1h", base, ttl=now_s + 20)]
    )  # fmt: skip
    assert await env.store.symbols() == ["DROP", "KEEP"]
    env.clock.set((now_s + 30) * 1000)
    await env.store.purge_expired()
    assert await env.store.symbols() == ["KEEP"]
    await env.store.upsert([make("DROP", "15m", base, ttl=now_s + 1000)])
    assert await env.store.symbols() == ["DROP", "KEEP"]


# -- SQLite specifics ---------------------------------------------------------------------------


async def test_sqlite_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "layout.db"
    async with SQLiteStore(path, INTERVALS, ManualClock(NOW_MS)) as store:
        await store.upsert([make("AAPL", "1m", ms("2024-01-02T14:00"))])
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name LIKE 'speed_layer_ohlcv_%'"
                )
            }
            assert tables == set(TABLE_NAMES.values())
            for table in TABLE_NAMES.values():
                info = conn.execute(f"PRAGMA table_info({table})").fetchall()
                pk = sorted((row[5], row[1]) for row in info if row[5] > 0)
                assert pk == [(1, "symbol"), (2, "timestamp")], table
                columns = [row[1] for row in info]
                assert columns == list(Candle.__struct_fields__), table
            assert conn.execute("SELECT symbol FROM speed_layer_ohlcv_1min").fetchall() == [
                ("AAPL",)
            ]
        conn.close()


async def test_sqlite_symbols_read_an_index_not_the_candle_tables(tmp_path: Path) -> None:
    """/symbols is one read of a small index table: no statement of ``symbols()`` touches a
    candle table, however many candles there are. A database written before the index existed
    gets it filled when the store opens."""
    path = tmp_path / "symbols.db"
    base = ms("2024-01-02T14:00")
    candles = [make(s, "1m", base + i * MIN_MS) for s in ("AAPL", "MSFT") for i in range(5)]
    async with SQLiteStore(path, INTERVALS, ManualClock(NOW_MS)) as store:
        await store.upsert([*candles, make("SPY", "4h", ms("2024-01-02T12:00"))])
        statements: list[str] = []
        original = store._connect

        def traced() -> sqlite3.Connection:
            conn = original()
            conn.set_trace_callback(statements.append)
            return conn

        store._connect = traced  # type: ignore[method-assign]
        store._local = threading.local()  # new reader connections, traced
        assert await store.symbols() == ["AAPL", "MSFT", "SPY"]
        assert statements, "symbols() ran no statement"
        assert not [s for s in statements if "speed_layer_ohlcv_" in s], statements
    # an older database: the same tables without the index
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE speed_layer_symbols")
    conn.close()
    async with SQLiteStore(path, INTERVALS, ManualClock(NOW_MS)) as store:
        assert await store.symbols() == ["AAPL", "MSFT", "SPY"]


async def test_sqlite_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "persist.db"
    clock = ManualClock(NOW_MS)
    base = ms("2024-01-02T12:00")
    written = [
        make(sym, name, base + i * step, revision=i + 2, final=i % 2 == 0, vwap=99.5, trades=i)
        for sym in ("AAPL", "SPY")
        for name, step in (("1m", 60_000), ("30m", 1_800_000), ("4h", 14_400_000))
        for i in range(3)
    ]
    async with SQLiteStore(path, INTERVALS, clock) as store:
        await store.upsert(written)
    async with SQLiteStore(path, INTERVALS, clock) as store:
        for sym in ("AAPL", "SPY"):
            for name in ("1m", "30m", "4h"):
                assert await store.query(sym, iv(name)) == [
                    c for c in written if c.symbol == sym and c.interval == name
                ]
        assert await store.symbols() == ["AAPL", "SPY"]
        assert await store.last_bar_times(["AAPL"]) == {"AAPL": base + 2 * MIN_MS}
        assert sorted(c.timestamp for c in await store.forming(iv("4h"))) == [
            base + 14_400_000,
            base + 14_400_000,
        ]
        # and it keeps accepting writes with the revision rule intact
        assert await store.upsert([make("AAPL", "4h", base, revision=1, price=1.0)]) == 0
        await store.upsert([make("AAPL", "4h", base, revision=9, price=5.0)])
    async with SQLiteStore(path, INTERVALS, clock) as store:
        (first, *_rest) = await store.query("AAPL", iv("4h"))
        assert (first.revision, first.open) == (9, 5.0)


async def test_stopped_store_is_reported(env: Env) -> None:
    await env.store.ping()
    await env.store.stop()
    with pytest.raises(StoreError, match="not started"):
        await env.store.ping()
    await env.store.start()
    await env.store.ping()


def test_default_intervals_map_to_seed_table_names() -> None:
    assert {i.name: i.table for i in INTERVALS} == TABLE_NAMES
    assert [i.name for i in INTERVALS] == ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
    assert [i.retention_s // DAY_S for i in INTERVALS] == [7, 7, 30, 30, 90, 90, 90]
