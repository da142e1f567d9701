"""Simulated history is a pure function of (seed, symbol, minute): simulators started at other
times serve the same bars over REST and WebSocket, and a restarted ``speedlayer up`` rewrites no
final candle of the same database."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.synthetic import RandomWalk, symbol_names
from tests.conftest import SPEEDLAYER, free_port, stop_by_sigterm
from tests.integration.feed.test_simulator import MINUTE, START, Collector, simulator, subscribed

pytestmark = pytest.mark.timeout(60)

FIELDS = ("o", "h", "l", "c", "v", "vw")
SYMBOLS = ("AAPL", "MSFT", "KO")  # KO: a thin one (skips minutes)


async def rest_bars(sim: Any, ticker: str, first: int, last: int) -> dict[int, tuple[Any, ...]]:
    url = f"{sim.rest_url}/v2/aggs/ticker/{ticker}/range/1/minute/{first}/{last}"
    async with httpx.AsyncClient(timeout=10) as http:
        body = (await http.get(url, params={"apiKey": "k", "limit": 50_000})).json()
    return {row["t"]: tuple(row[f] for f in FIELDS) for row in body.get("results", [])}


async def live_events(sim: Any, minutes: int) -> list[dict[str, Any]]:
    ws = await subscribed(sim)
    collector = Collector(ws)
    await sim.wait_minutes(minutes, timeout=20)
    await ws.close()
    await collector.finish()
    return collector.events()


async def test_simulators_started_at_other_times_serve_the_same_bars() -> None:
    """A starts at START with 60 minutes of history; B ten minutes later with 30, so B's REST
    history covers minutes A streamed live and A's history covers part of B's."""
    later = START + 10 * MINUTE
    async with simulator(symbols=20, history_minutes=60, speed=8) as a:
        a_live = await live_events(a, 3)
        a_rest = {s: await rest_bars(a, s, START - 60 * MINUTE, START - 1) for s in SYMBOLS}
    async with simulator(symbols=20, history_minutes=30, speed=8, start_ms=later) as b:
        b_rest = {s: await rest_bars(b, s, later - 30 * MINUTE, later - 1) for s in SYMBOLS}
        b_live = await live_events(b, 2)
    # REST history against REST history, where both have the minute
    for symbol in a_rest:
        shared = set(a_rest[symbol]) & set(b_rest[symbol])
        assert len(shared) >= 8, (symbol, sorted(shared))  # 20 shared minutes; KO skips some
        assert {t: a_rest[symbol][t] for t in shared} == {t: b_rest[symbol][t] for t in shared}
    # A's live WebSocket minutes are in B's REST history, bar for bar
    streamed = {(e["sym"], e["s"]): tuple(e[f] for f in FIELDS) for e in a_live}
    assert {t for _, t in streamed} >= {START, START + MINUTE, START + 2 * MINUTE}
    checked = 0
    for (symbol, t), values in streamed.items():
        if symbol in b_rest and t in b_rest[symbol]:
            assert b_rest[symbol][t] == values, (symbol, t)
            checked += 1
    assert checked >= 3
    # and B's live minutes are what a fresh walk gives for them (no state from B's history)
    walk = RandomWalk(symbol_names(20), seed=7)
    for event in b_live:
        (bar,) = [x for x in walk.minute(event["s"]) if x.symbol == event["sym"]]
        assert tuple(event[f] for f in FIELDS) == (bar.o, bar.h, bar.l, bar.c, bar.v, bar.vw)


def test_walk_is_pure_per_symbol_and_minute() -> None:
    """The same (seed, symbol, minute) whatever was asked before and however long the symbol
    list (the first ten names trade every minute, so lists share a prefix, as the simulator's
    do); each open is the previous minute's close."""
    t = START + 7 * MINUTE
    in_order = list(RandomWalk(symbol_names(30), seed=7).bars(START, 8))
    cold = RandomWalk(symbol_names(30), seed=7).minute(t)
    assert cold == [bar for bar in in_order if bar.t == t]
    longer = RandomWalk(symbol_names(300), seed=7).minute(t)
    assert [bar for bar in longer if bar.symbol in symbol_names(30)] == cold
    alone = RandomWalk(["AAPL"], seed=7).minute(t)
    assert alone == [bar for bar in cold if bar.symbol == "AAPL"]
    assert RandomWalk(symbol_names(30), seed=8).minute(t) != cold
    aapl = [bar for bar in in_order if bar.symbol == "AAPL"]
    assert len(aapl) == 8 and all(b.o == a.c for a, b in itertools.pairwise(aapl))


class Up:
    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "up.db"
        self.log = tmp_path / "up.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def run(self, history: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SPEEDLAYER_LOG_LEVEL": "info"}
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [SPEEDLAYER, "up", "--db", str(self.db), "--port", str(self.port),
                 "--symbols", "5", "--history", str(history)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 40
        while True:
            assert proc.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return proc
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def final_candles(self, interval: str, count: int) -> dict[int, tuple[int, int]]:
        """timestamp -> (revision, bars) of AAPL's final candles, once ``count`` are stored."""
        url = f"{self.url}/candles/AAPL?interval={interval}&order=desc&limit=1000"
        deadline = time.monotonic() + 30
        while True:
            rows = httpx.get(url, timeout=5).json()["candles"]
            final = {r["timestamp"]: (r["revision"], r["bars"]) for r in rows if r["final"]}
            if len(final) >= count:
                return final
            assert time.monotonic() < deadline, f"{len(final)} final\n{self.log.read_text()}"
            time.sleep(0.2)


def test_restarted_up_rewrites_no_final_candle(tmp_path: Path) -> None:
    """The second run regenerates a longer history (another first minute: the old walk then drew
    other prices) and backfills it over the same database: every candle the first run left
    final keeps its revision; the new, earlier minutes are only added."""
    up = Up(tmp_path)
    proc = up.run(history=30)
    try:
        first = {iv: up.final_candles(iv, n) for iv, n in (("1m", 25), ("5m", 5))}
    finally:
        stop_by_sigterm(proc, lambda: "speedlayer up did not stop")
    proc = up.run(history=45)
    try:
        for interval, count in (("1m", 40), ("5m", 8)):
            second = up.final_candles(interval, count)
            kept = {t: second.get(t) for t in first[interval]}
            if interval != "1m":  # the earliest bucket may gain the new, earlier minutes
                earliest = min(first[interval])
                grown = kept[earliest]
                assert grown is not None and grown[1] >= first[interval][earliest][1]
                del kept[earliest]
            assert kept == {t: first[interval][t] for t in kept}, interval
    finally:
        stop_by_sigterm(proc, lambda: "speedlayer up did not stop")
