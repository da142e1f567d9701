"""Live ingest end to end, over real sockets, with each simulator fault switched on.

The path is the one ``speedlayer up`` builds (speedlayer/stack.py), minus the API: the Polygon
simulator (WebSocket + REST on 127.0.0.1, port 0) -> ``PolygonFeed`` -> ``MemoryBus`` ->
``PipelineRunner(CandlePipeline(Resampler, SQLiteStore))``, all on the simulator's clock.

The simulator replays a CSV written by the test (a random walk of ``SYMBOLS`` symbols over
``DATA_MINUTES`` minutes; thin symbols skip minutes, so buckets hold varying bar counts). A replay
has an end: the simulator sends every minute, then every event it still owes (delayed bars,
duplicates, and corrections up to 15 simulated minutes later), then ``finished`` becomes true
while its REST endpoint keeps serving backfill. So ``served()`` taken after ``finished`` is the
final truth of every minute, and the tests compare the store against all of it:

* the 1m table holds exactly the served (symbol, minute) keys, with o h l c v vw equal bit for bit
  and ``bars == 1`` (trade counts are not compared: WebSocket events carry none, REST results do);
* every higher interval holds exactly the buckets of ``tests/oracle.py`` over ``served()``, with
  the same o h l c (exact), volume and vwap (up to summation order) and ``bars`` (exact: nothing
  lost, nothing counted twice);
* a candle whose end + grace the clock had passed before the pipeline's last ticks is final, and
  one whose end + grace lies after the clock at stop time is not.

One test per fault (each alone), one with every data fault together, a restart on the same
SQLite file, and one with corrections, reconnects and a realistic REST round trip together
(``test_backfill_does_not_undo_a_live_correction``, which fails: a gap backfill answer older than
a correction received live meanwhile replaces it).

Data starts ``LEAD_MINUTES`` after the simulator's clock does, so the feed is subscribed before
the first bar is sent (checked: ``bars_emitted == 0`` when it is). The data covers 15:50-16:14Z,
so every interval from 5m to 4h has a bucket that ends (16:00) and one that does not.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ingest.polygon import PolygonConfig, PolygonFeed
from ingest.simulator import FaultConfig, PolygonSimulator, SimulatedClock, SimulatorConfig
from ingest.synthetic import RandomWalk, symbol_names, write_csv
from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from processors.runner import PipelineRunner
from speedlayer.bus.base import RAW_TOPIC, Subscription, candle_topic
from speedlayer.bus.memory import MemoryBus
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import MINUTE_MS, Bar
from speedlayer.store.sqlite import SQLiteStore
from tests.oracle import CandleValues, oracle_candles, values_close

pytestmark = pytest.mark.timeout(45)

MINUTE = MINUTE_MS
DATA_START = 1_704_210_600_000  # 2024-01-02 15:50:00Z
LEAD_MINUTES = 4  # empty minutes before the data: time for the feed to subscribe
SIM_START = DATA_START - LEAD_MINUTES * MINUTE
DATA_MINUTES = 24
FULL_MINUTES = 2  # every symbol trades in the first and last minutes of the data
SYMBOLS = 40
SPEED = 10.0  # simulated minutes per wall second
GRACE_MS = 10_000
TICK_S = 0.05
RUN_TIMEOUT_S = 30.0
INTERVALS = IntervalSet(list(DEFAULT_INTERVALS))
HIGHER = {iv.name: iv.interval_ms for iv in INTERVALS if iv.name != "1m"}


# -- data -----------------------------------------------------------------------------------------


def write_replay(path: Path, *, seed: int = 11) -> Path:
    """A random walk of SYMBOLS symbols over DATA_MINUTES minutes from DATA_START, as replay CSV.

    Thin symbols skip minutes, except in the first and last FULL_MINUTES, where every symbol
    trades: so the feed knows every symbol before any fault can hit it (a symbol it has never seen
    is outside the gap backfill of ``symbols=["*"]``, see PolygonFeed), and every symbol is seen
    again at the end (the restart test's start-up backfill is per symbol, on first sight).
    """
    walk = RandomWalk(symbol_names(SYMBOLS), seed)
    activity = walk.activity.copy()
    bars: list[Bar] = []
    for i in range(DATA_MINUTES):
        full = i < FULL_MINUTES or i >= DATA_MINUTES - FULL_MINUTES
        walk.activity[:] = 1.0 if full else activity
        bars.extend(walk.minute(DATA_START + i * MINUTE))
    write_csv(iter(bars), str(path))
    return path


@pytest.fixture
def replay(tmp_path: Path) -> Path:
    return write_replay(tmp_path / "bars.csv")


def sim_config(replay: Path, faults: FaultConfig | None = None) -> SimulatorConfig:
    return SimulatorConfig(
        host="127.0.0.1",
        port=0,
        speed=SPEED,
        replay=[str(replay)],
        start_ms=SIM_START,
        faults=faults or FaultConfig(),
    )


# -- the live path --------------------------------------------------------------------------------


class SlowTransport(httpx.AsyncBaseTransport):
    """Real HTTP, but each response reaches the client ``delay_s`` after the server produced it:
    the round trip of a distant REST API (tens to hundreds of ms for Polygon's)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        await asyncio.sleep(self.delay_s)
        return httpx.Response(
            response.status_code, headers=response.headers, content=body, request=request
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class Tap:
    """An extra bus subscriber recording what went by: (wall time, simulated time, item)."""

    def __init__(self, bus: MemoryBus, topics: list[str], clock: SimulatedClock) -> None:
        self.subscription: Subscription = bus.subscribe(topics, maxsize=100_000)
        self.clock = clock
        self.items: list[tuple[float, int, Any]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for _, batch in self.subscription:
            now, sim_now = time.monotonic(), self.clock.now_ms()
            self.items.extend((now, sim_now, item) for item in batch)

    async def stop(self) -> None:
        self.subscription.close()
        await asyncio.wait_for(self.task, 5)


@dataclass
class LivePath:
    """Feed -> bus -> runner(pipeline(resampler, SQLite store)), wired like ``speedlayer up``."""

    sim: PolygonSimulator
    db: Path
    lookback_min: int = 0
    ping_s: float = 5.0
    lateness_ms: int = 15 * MINUTE
    tap_raw: bool = False
    tap_candles: bool = False
    rest_delay_s: float = 0.0
    bus: MemoryBus = field(default_factory=MemoryBus)
    http: httpx.AsyncClient | None = None
    raw: Tap | None = None
    candles: Tap | None = None
    _stopped: set[str] = field(default_factory=set)

    async def start(self) -> None:
        clock = self.sim.clock
        if self.rest_delay_s:  # else the feed owns its client, as in speedlayer/stack.py
            transport = SlowTransport(self.rest_delay_s)
            self.http = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10.0))
        await self.bus.start()
        self.store = SQLiteStore(self.db, INTERVALS, clock)
        await self.store.start()
        resampler = Resampler(INTERVALS, clock, grace_ms=GRACE_MS, lateness_ms=self.lateness_ms)
        self.pipeline = CandlePipeline(resampler, self.store)
        self.runner = PipelineRunner(self.pipeline, self.bus, clock, tick_s=TICK_S)
        await self.runner.start()
        if self.tap_raw:
            self.raw = Tap(self.bus, [RAW_TOPIC], clock)
        if self.tap_candles:
            self.candles = Tap(self.bus, [candle_topic(iv.name) for iv in INTERVALS], clock)
        self.feed = PolygonFeed(
            PolygonConfig(
                api_key="simulator",
                ws_url=self.sim.ws_url,
                rest_url=self.sim.rest_url,
                market="stocks",
                symbols=["*"],
                backoff_initial_s=0.05,
                backoff_max_s=0.5,
                backfill_lookback_min=self.lookback_min,
                ping_interval_s=self.ping_s,
                ping_timeout_s=self.ping_s,
            ),
            self.bus,
            clock,
            http=self.http,
        )
        await self.feed.start()

    def published(self) -> int:
        stats = self.feed.stats
        return stats.bars_published + stats.backfill_bars

    def progress(self) -> str:
        stats = self.feed.stats
        return (
            f"feed: live {stats.bars_published} + backfill {stats.backfill_bars} bars published, "
            f"{stats.connects} connects, backfill errors {dict(stats.backfill_errors)}; "
            f"runner: {self.runner.bars_in} bars processed"
        )

    async def settle(self, quiet_s: float = 0.3) -> None:
        """Until backfill is idle, the runner has processed every bar the feed published, and
        nothing has moved for ``quiet_s``."""
        last: tuple[int, ...] = ()
        quiet_since = time.monotonic()
        while True:
            if "feed" not in self._stopped:
                await self.feed.backfill_idle()
            state = (self.feed.stats.frames, self.published(), self.runner.bars_in)
            if state != last:
                last, quiet_since = state, time.monotonic()
            elif (
                self.runner.bars_in == self.published()
                and time.monotonic() - quiet_since >= quiet_s
            ):
                return
            await asyncio.sleep(0.02)

    async def stop_feed(self) -> None:
        if "feed" not in self._stopped:
            self._stopped.add("feed")
            await self.feed.stop()
            if self.http is not None:  # a client passed in stays open; close it ourselves
                await self.http.aclose()

    async def stop(self) -> None:
        await self.stop_feed()
        for name, stop in (
            ("runner", self.runner.stop),
            ("raw", self.raw.stop if self.raw else None),
            ("candles", self.candles.stop if self.candles else None),
            ("store", self.store.stop),
            ("bus", self.bus.stop),
        ):
            if stop is not None and name not in self._stopped:
                self._stopped.add(name)
                await stop()


@dataclass
class Finish:
    finalized_before_ms: int  # the pipeline ticked after this simulated time...
    stopped_at_ms: int  # ... and stopped before this one


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


async def start_live(live: LivePath) -> None:
    await live.start()
    await live.feed.wait_connected(5)
    assert live.sim.stats.bars_emitted == 0, "the feed subscribed after the first bars were sent"


async def run_to_end(live: LivePath) -> Finish:
    """Let the simulator send everything (owed corrections included), let the feed and its
    backfill go idle, drain the pipeline, stop the feed, tick the pipeline, stop it."""
    sim = live.sim
    try:
        await wait_until(lambda: sim.finished, RUN_TIMEOUT_S, "the simulator to finish")
        async with asyncio.timeout(15):
            await live.settle()
        await live.stop_feed()
        async with asyncio.timeout(10):
            await live.settle(quiet_s=0.1)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"the live path did not settle: {live.progress()}") from exc
    before = sim.clock.now_ms()
    await asyncio.sleep(4 * TICK_S)  # the runner ticks (finalizes) at least twice meanwhile
    await live.stop()
    return Finish(before, sim.clock.now_ms())


async def restart_to_end(sim: PolygonSimulator, db: Path, **options: Any) -> LivePath:
    """A fresh process on the same file (its start-up backfill covers the downtime), run to the
    end; the store must then hold exactly what the simulator served."""
    live = LivePath(sim, db, lookback_min=60, **options)
    try:
        await live.start()
        await live.feed.wait_connected(5)
        finish = await run_to_end(live)
    finally:
        await live.stop()
    assert_store_equals_served(db, sim.served(), finish)
    return live


# -- comparing the store with the truth -----------------------------------------------------------

# open high low close volume vwap trades bars final revision
Row = tuple[float, float, float, float, float, float | None, int | None, int, bool, int]


def read_store(db: Path) -> dict[str, dict[tuple[str, int], Row]]:
    """Every row of every interval table (expired or not), straight from the SQLite file."""
    tables: dict[str, dict[tuple[str, int], Row]] = {}
    conn = sqlite3.connect(db)
    try:
        for interval in INTERVALS:
            rows = conn.execute(
                "SELECT symbol, timestamp, open, high, low, close, volume, vwap, trades, bars, "
                f"final, revision FROM {interval.table}"
            )
            tables[interval.name] = {
                (s, ts): (o, h, lo, c, v, vw, n, bars, bool(final), rev)
                for s, ts, o, h, lo, c, v, vw, n, bars, final, rev in rows
            }
    finally:
        conn.close()
    return tables


def _diff(
    what: str, expected: set[tuple[str, int]], actual: set[tuple[str, int]], bad: list[str]
) -> list[str]:
    problems = []
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    if missing:
        problems.append(f"{what}: {len(missing)} missing, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{what}: {len(extra)} extra, e.g. {extra[:5]}")
    if bad:
        problems.append(f"{what}: {len(bad)} differ, e.g. " + "; ".join(bad[:3]))
    return problems


def assert_store_equals_served(
    db: Path, served: dict[tuple[str, int], Bar], finish: Finish
) -> dict[str, dict[tuple[str, int], Row]]:
    stored = read_store(db)
    assert served, "the simulator served nothing"
    problems: list[str] = []

    minute = stored["1m"]
    bad = []
    for key, bar in served.items():
        row = minute.get(key)
        if row is not None:
            truth = (bar.o, bar.h, bar.l, bar.c, bar.v, bar.vw)
            if row[:6] != truth or row[7] != 1:
                bad.append(f"{key}: stored {row}, served {truth}")
    problems += _diff("1m", set(served), set(minute), bad)

    oracle = oracle_candles(served.values(), HIGHER)
    for name in HIGHER:
        expected = {(s, ts): values for (iv, s, ts), values in oracle.items() if iv == name}
        rows = stored[name]
        bad = []
        for key, values in expected.items():
            row = rows.get(key)
            if row is None:
                continue
            got: CandleValues = (*row[:6], None, row[7])
            want: CandleValues = (*values[:6], None, values[7])
            if not values_close(got, want):
                bad.append(f"{key}: stored {got}, oracle {want}")
        problems += _diff(name, set(expected), set(rows), bad)

    for interval in INTERVALS:
        for (symbol, ts), row in stored[interval.name].items():
            due = ts + interval.interval_ms + GRACE_MS
            if due <= finish.finalized_before_ms and not row[8]:
                problems.append(f"{interval.name} {symbol} {ts}: not final, due at {due}")
            if due > finish.stopped_at_ms and row[8]:
                problems.append(f"{interval.name} {symbol} {ts}: final before its time {due}")
    assert not problems, "the store differs from what the simulator served:\n" + "\n".join(
        problems[:40]
    )
    return stored


def assert_no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]
    assert not errors, "errors were logged:\n" + "\n".join(errors[:10])


@pytest.fixture
async def running(replay: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await make(faults, **live_options)`` -> (simulator, live path), both started;
    everything is stopped at the end of the test."""
    started: list[Any] = []

    async def make(faults: FaultConfig | None = None, **options: Any) -> tuple[Any, LivePath]:
        sim = PolygonSimulator(sim_config(replay, faults))
        await sim.start()
        started.append(sim)
        live = LivePath(sim, replay.parent / "candles.db", **options)
        started.append(live)
        await start_live(live)
        return sim, live

    yield make
    for item in reversed(started):
        await item.stop()


Make = Callable[..., Any]


# -- an independent observer ----------------------------------------------------------------------


class Observer:
    """A raw WebSocket client subscribed to ``AM.*``: every frame it gets, with arrival times."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, bytes]] = []
        self.task = asyncio.create_task(self._run())

    @classmethod
    async def open(cls, sim: PolygonSimulator) -> Observer:
        ws = await asyncio.wait_for(connect(sim.ws_url + "/stocks"), 5)
        await asyncio.wait_for(ws.recv(), 5)  # connected
        for action, params in (("auth", "k"), ("subscribe", "AM.*")):
            await ws.send(orjson.dumps({"action": action, "params": params}).decode())
            [reply] = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["status"] in ("auth_success", "success"), reply
        return cls(ws)

    async def _run(self) -> None:
        try:
            async for message in self.ws:
                data = message.encode() if isinstance(message, str) else message
                self.frames.append((time.monotonic(), data))
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.task, 5)


# -- the tests ------------------------------------------------------------------------------------


async def test_no_faults_store_equals_served(
    running: Make, caplog: pytest.LogCaptureFixture
) -> None:
    sim, live = await running(tap_candles=True)
    observer = await Observer.open(sim)
    assert sim.stats.bars_emitted == 0, "the observer subscribed too late"
    began = time.monotonic()
    finish = await run_to_end(live)
    wall_s = time.monotonic() - began
    await observer.close()
    served = sim.served()
    stored = assert_store_equals_served(live.db, served, finish)
    assert live.feed.stats.connects == 1 and live.feed.stats.backfill_bars == 0
    assert live.pipeline.stats.bars_duplicate == 0
    assert live.runner.bars_in == len(served)
    assert_no_errors_logged(caplog)

    # The candle stream: per key, revisions strictly increase in publication order and the last
    # one is what the store holds; a candle is never published final before end + grace.
    assert live.candles is not None
    published: dict[tuple[str, str, int], list[int]] = {}
    finalized_late_ms: dict[tuple[str, str, int], int] = {}
    early = []
    for _, sim_at, candle in live.candles.items:
        key = (candle.interval, candle.symbol, candle.timestamp)
        published.setdefault(key, []).append(candle.revision)
        if candle.final:
            due = candle.timestamp + INTERVALS.get(candle.interval).interval_ms + GRACE_MS
            if sim_at < due:
                early.append((key, sim_at, due))
            finalized_late_ms.setdefault(key, sim_at - due)
    assert not early, f"published final before end + grace: {early[:5]}"
    for (interval, symbol, ts), revisions in published.items():
        assert revisions == sorted(set(revisions)), (interval, symbol, ts, revisions)
        assert stored[interval][(symbol, ts)][9] == revisions[-1], (interval, symbol, ts)
    assert set(published) == {
        (interval, symbol, ts) for interval, rows in stored.items() for symbol, ts in rows
    }

    # Measurements (printed, not asserted: benchmarks live in bench/). Latency: from the arrival
    # of a minute's last event at an independent client to the last 1m candle of that minute
    # stored (the pipeline publishes candles right after their store write).
    sent_at: dict[int, float] = {}
    for at, frame in observer.frames:
        for event in orjson.loads(frame):
            if event.get("ev") == "AM":
                sent_at[event["s"]] = max(sent_at.get(event["s"], 0.0), at)
    stored_at: dict[int, float] = {}
    for at, _, candle in live.candles.items:
        if candle.interval == "1m" and candle.revision == 1:
            stored_at[candle.timestamp] = max(stored_at.get(candle.timestamp, 0.0), at)
    latencies = sorted(1000 * (stored_at[t] - sent_at[t]) for t in sent_at if t in stored_at)
    assert len(latencies) == DATA_MINUTES
    rows = sum(len(table) for table in stored.values())
    print(
        f"\nlive path: {len(served)} bars, {rows} candle rows, {len(live.candles.items)} candle "
        f"updates; {DATA_MINUTES} minutes of {SYMBOLS} symbols at speed {SPEED} in "
        f"{wall_s:.2f}s wall; last event of a minute received -> its 1m candles stored: "
        f"median {statistics.median(latencies):.1f} ms, max {latencies[-1]:.1f} ms; "
        f"final published at most {max(finalized_late_ms.values()) / (SPEED * 60):.0f} ms "
        f"(wall) after end + grace"
    )


@pytest.mark.parametrize("code", [1011, 1006])
async def test_forced_disconnects_are_backfilled(
    running: Make, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    faults = FaultConfig(disconnect_every_s=0.8, disconnect_code=code)
    sim, live = await running(faults)
    finish = await run_to_end(live)
    assert_store_equals_served(live.db, sim.served(), finish)
    stats = live.feed.stats
    assert sim.stats.disconnects_injected >= 2
    assert stats.connects >= 3, stats
    assert stats.backfill_bars > 0 and not stats.backfill_errors
    assert stats.last_disconnect is not None and str(code) in stats.last_disconnect
    assert_no_errors_logged(caplog)


async def test_duplicates_are_not_double_counted(
    running: Make, caplog: pytest.LogCaptureFixture
) -> None:
    sim, live = await running(FaultConfig(duplicate_rate=0.3))
    finish = await run_to_end(live)
    assert_store_equals_served(live.db, sim.served(), finish)
    assert sim.stats.duplicates_injected >= 50
    # Every duplicate reached the resampler and was recognised as one (they are not dropped
    # earlier, so this is exact).
    assert live.pipeline.stats.bars_duplicate == sim.stats.duplicates_injected
    assert live.feed.stats.connects == 1
    assert_no_errors_logged(caplog)


async def test_late_corrections_replace_the_bars_they_correct(
    running: Make, caplog: pytest.LogCaptureFixture
) -> None:
    # The replay ends only after every correction owed (up to 15 minutes late) has been sent, so
    # served() is the final version of every bar, and all of it is compared.
    sim, live = await running(FaultConfig(correction_rate=0.2), tap_raw=True)
    finish = await run_to_end(live)
    served = sim.served()
    stored = assert_store_equals_served(live.db, served, finish)
    assert live.raw is not None
    first: dict[tuple[str, int], Bar] = {}
    for _, _, bar in live.raw.items:
        first.setdefault((bar.symbol, bar.t), bar)
    changed = [key for key, bar in first.items() if bar != served[key]]
    assert len(changed) >= 50, len(changed)
    assert len(changed) <= sim.stats.corrections_injected
    late = [key for key in changed if key[1] < DATA_START + (DATA_MINUTES - 15) * MINUTE]
    assert late, "no correction of a minute that got its whole 15-minute correction window"
    for key in changed:  # the store has the correction, not the first version
        assert stored["1m"][key][4] == served[key].v > first[key].v
    assert_no_errors_logged(caplog)


async def test_out_of_order_bars_land_in_their_buckets(
    running: Make, caplog: pytest.LogCaptureFixture
) -> None:
    sim, live = await running(FaultConfig(out_of_order_rate=0.3), tap_raw=True)
    finish = await run_to_end(live)
    assert_store_equals_served(live.db, sim.served(), finish)
    assert live.raw is not None
    late, newest = 0, 0
    for _, _, bar in live.raw.items:
        late += bar.t < newest
        newest = max(newest, bar.t)
    assert late >= 20, late
    assert sim.stats.out_of_order_injected >= late
    assert_no_errors_logged(caplog)


def _expected_rejections(frames: list[tuple[float, bytes]]) -> tuple[Counter[str], int]:
    """Classify the malformed frames an independent client got, without the ingest code:
    (expected rejection counts by reason, bare objects). A bare object is a copy of an event just
    sent, which a lenient client may accept (it is the truth)."""
    expected: Counter[str] = Counter()
    bare = 0
    for _, raw in frames:
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            expected["malformed_json"] += 1
            continue
        if isinstance(document, dict):
            bare += 1
            continue
        for event in document:
            if event.get("ev") != "AM":
                continue
            if "o" not in event:
                expected["missing_field"] += 1
            elif not isinstance(event["o"], int | float):
                expected["not_a_number"] += 1
    return expected, bare


async def test_malformed_frames_are_rejected_and_counted(
    running: Make, caplog: pytest.LogCaptureFixture
) -> None:
    sim, live = await running(FaultConfig(malformed_rate=0.3))
    observer = await Observer.open(sim)
    assert sim.stats.bars_emitted == 0, "the observer subscribed too late"
    finish = await run_to_end(live)
    await observer.close()
    assert_store_equals_served(live.db, sim.served(), finish)
    expected, bare = _expected_rejections(observer.frames)
    assert sum(expected.values()) + bare == sim.stats.malformed_injected >= 10
    assert live.feed.stats.connects == 1
    assert live.feed.stats.rejected == expected
    assert_no_errors_logged(caplog)


async def test_all_data_faults_together(running: Make, caplog: pytest.LogCaptureFixture) -> None:
    faults = FaultConfig(
        duplicate_rate=0.2, correction_rate=0.3, out_of_order_rate=0.3, malformed_rate=0.2
    )
    # A short lateness makes late corrections hit buckets already evicted from memory, so they
    # are rebuilt from the store's 1m table.
    sim, live = await running(faults, lateness_ms=3 * MINUTE)
    finish = await run_to_end(live)
    assert_store_equals_served(live.db, sim.served(), finish)
    stats = sim.stats
    assert min(stats.duplicates_injected, stats.corrections_injected) >= 50
    assert min(stats.out_of_order_injected, stats.malformed_injected) >= 10
    assert live.pipeline.stats.buckets_restored > 0
    assert sum(live.feed.stats.rejected.values()) > 0
    assert_no_errors_logged(caplog)


async def test_stalled_connection_detected_by_ping_then_backfilled(
    running: Make, caplog: pytest.LogCaptureFixture
) -> None:
    sim, live = await running(FaultConfig(stall_after_s=0.8), ping_s=0.2)
    finish = await run_to_end(live)
    assert_store_equals_served(live.db, sim.served(), finish)
    stats = live.feed.stats
    assert sim.stats.stalls_injected >= 2
    assert stats.connects >= 3
    assert stats.last_disconnect is not None and "keepalive" in stats.last_disconnect
    assert stats.backfill_bars > 0 and not stats.backfill_errors
    assert_no_errors_logged(caplog)


async def test_second_client_evicts_the_feed_which_recovers(
    running: Make, caplog: pytest.LogCaptureFixture
) -> None:
    sim, live = await running(FaultConfig(max_connections=1))
    await wait_until(lambda: sim.stats.minutes_sent >= LEAD_MINUTES + 6, 10, "six minutes of data")
    # Another client on the same key: it evicts the feed, which reconnects (evicting it).
    intruder = await Observer.open(sim)
    await wait_until(lambda: intruder.task.done(), 10, "the feed to evict the second client")
    finish = await run_to_end(live)
    assert_store_equals_served(live.db, sim.served(), finish)
    stats = live.feed.stats
    assert sim.stats.max_connections_closed >= 2
    assert stats.status_messages["max_connections"] >= 1
    assert stats.connects >= 2 and stats.backfill_bars > 0
    assert_no_errors_logged(caplog)


async def test_restart_resumes_from_the_store_and_backfills_the_downtime(
    replay: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = replay.parent / "candles.db"
    async with PolygonSimulator(sim_config(replay)) as sim:
        first = LivePath(sim, db)
        try:
            await start_live(first)
            await wait_until(
                lambda: sim.stats.minutes_sent >= LEAD_MINUTES + 8, 10, "eight minutes of data"
            )
        finally:
            await first.stop()  # abrupt: bars still queued on the bus are lost
        before = read_store(db)
        down_from = sim.stats.minutes_sent
        await sim.wait_minutes(5, timeout=5)
        missed = sim.stats.minutes_sent - down_from
        second = await restart_to_end(sim, db, tap_candles=True)
    assert missed >= 5
    assert sum(map(len, before.values())) > 0
    assert second.feed.stats.backfill_bars > 0
    assert second.pipeline.stats.buckets_restored > 0
    # Revisions go on from the stored ones: consumers order and de-duplicate updates by
    # revision, so an update after the restart must never carry a revision already published.
    assert second.candles is not None
    behind = []
    for _, _, candle in second.candles.items:
        old = before[candle.interval].get((candle.symbol, candle.timestamp))
        if old is not None and candle.revision <= old[9]:
            behind.append((candle.interval, candle.symbol, candle.timestamp, old[9], candle))
    assert not behind, f"{len(behind)} updates re-used stored revisions, e.g. {behind[:3]}"
    assert_no_errors_logged(caplog)


def stale_overwrites(
    raw: list[tuple[float, int, Any]], served: dict[tuple[str, int], Bar]
) -> list[str]:
    """Keys whose served (final) version went through the raw topic and was then followed by an
    older version from REST (``n`` set): the backfill overwrote a newer live correction."""
    history: dict[tuple[str, int], list[tuple[float, Bar]]] = {}
    for at, _, bar in raw:
        history.setdefault((bar.symbol, bar.t), []).append((at, bar))
    found = []
    for key, seen in history.items():
        truth = served[key]
        wire = [(at, msgspec.structs.replace(bar, n=None)) for at, bar in seen]
        live_truth = [at for at, bar in wire if bar == truth]
        if live_truth and wire[-1][1] != truth:
            last_at, last = seen[-1]
            found.append(
                f"{key}: the live correction (v={truth.v}) was published, then "
                f"{1000 * (last_at - live_truth[0]):.0f} ms later an older version from REST "
                f"(v={last.v}, n={last.n}) replaced it"
            )
    return found


async def test_backfill_does_not_undo_a_live_correction(
    running: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Corrections and reconnects together, with a REST round trip of 150 ms (Polygon's real API
    is that far away): after each reconnect the gap backfill asks for the last 15 minutes of
    every symbol; a correction of one of those minutes that arrives live while the request is in
    flight must survive the older REST answer that arrives after it."""
    faults = FaultConfig(correction_rate=0.5, disconnect_every_s=1.5)
    sim, live = await running(faults, tap_raw=True, rest_delay_s=0.15)
    finish = await run_to_end(live)
    served = sim.served()
    assert live.feed.stats.connects >= 2 and live.feed.stats.backfill_bars > 0
    assert live.raw is not None
    stale = stale_overwrites(live.raw.items, served)
    assert not stale, (
        f"{len(stale)} live corrections were overwritten by older REST backfill results:\n"
        + "\n".join(stale[:5])
    )
    assert_store_equals_served(live.db, served, finish)
    assert_no_errors_logged(caplog)
