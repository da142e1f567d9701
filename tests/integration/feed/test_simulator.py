"""The Polygon-protocol simulator, over real sockets on 127.0.0.1: handshake and subscriptions
exactly as docs/polygon.md says, the official `massive` clients (WebSocket and REST)
against it, every fault flag, speed, a full-market burst and replay."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import massive  # type: ignore[import-untyped]
import orjson
import pytest
from massive.exceptions import AuthError  # type: ignore[import-untyped]
from massive.websocket.models import (  # type: ignore[import-untyped]
    CurrencyAgg,
    EquityAgg,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from ingest.polygon.protocol import Rejected, from_event
from ingest.simulator import FaultConfig, PolygonSimulator, SimulatorConfig
from ingest.simulator.data import MARKETS, BarStore, EventEncoder, corrected, malformed_frame
from ingest.synthetic import RandomWalk, symbol_names
from speedlayer.errors import ConfigError
from speedlayer.models import Bar

pytestmark = pytest.mark.timeout(30)

START = 1_704_207_600_000  # 2024-01-02 15:00:00Z = 10:00 ET, a minute boundary
MINUTE = 60_000
AM_FIELDS = {"ev", "sym", "v", "av", "op", "vw", "o", "c", "h", "l", "a", "z", "s", "e"}
RECV_TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def simulator(faults: FaultConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
    settings: dict[str, Any] = {
        "symbols": 5, "speed": 2.0, "history_minutes": 0, "start_ms": START,
    }  # fmt: skip
    settings.update(kwargs)
    sim = PolygonSimulator(SimulatorConfig(**settings, faults=faults or FaultConfig()))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def status(status: str, message: str) -> list[dict[str, str]]:
    return [{"ev": "status", "status": status, "message": message}]


async def recv_frame(ws: ClientConnection, within: float = RECV_TIMEOUT) -> list[dict[str, Any]]:
    frame = orjson.loads(await asyncio.wait_for(ws.recv(), within))
    assert isinstance(frame, list), frame
    return frame


async def send(ws: ClientConnection, action: str, params: object) -> None:
    await ws.send(orjson.dumps({"action": action, "params": params}).decode())


async def open_ws(sim: PolygonSimulator, path: str = "/stocks", **kwargs: Any) -> ClientConnection:
    ws = await asyncio.wait_for(connect(sim.ws_url + path, **kwargs), RECV_TIMEOUT)
    assert await recv_frame(ws) == status("connected", "Connected Successfully")
    return ws


async def subscribed(
    sim: PolygonSimulator, channels: str = "AM.*", path: str = "/stocks"
) -> ClientConnection:
    ws = await open_ws(sim, path)
    await send(ws, "auth", "k")
    assert await recv_frame(ws) == status("auth_success", "authenticated")
    await send(ws, "subscribe", channels)
    for channel in channels.split(","):
        assert await recv_frame(ws) == status("success", f"subscribed to: {channel.strip()}")
    return ws


class Collector:
    """Reads every frame of a connection until it closes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[str] = []
        self.closed: ConnectionClosed | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, str)  # Polygon sends text frames
                self.frames.append(message)
        except ConnectionClosed as exc:
            self.closed = exc

    async def finish(self, within: float = 10) -> None:
        await asyncio.wait_for(self.task, within)

    def events(self) -> list[dict[str, Any]]:
        """Data events of the well-formed frames, in arrival order."""
        out: list[dict[str, Any]] = []
        for text in self.frames:
            try:
                frame = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(frame, list):
                out += [event for event in frame if event.get("ev") != "status"]
        return out


def bars_of(events: list[dict[str, Any]]) -> list[Bar]:
    out = []
    for event in events:
        record = from_event(event, "test")
        if isinstance(record, Bar):
            out.append(record)
    return out


def last_write_wins(bars: list[Bar]) -> dict[tuple[str, int], Bar]:
    return {(bar.symbol, bar.t): bar for bar in bars}


async def wait_for(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --- handshake, auth, subscriptions ---------------------------------------------------------


async def test_handshake_subscribe_and_unsubscribe_messages_exactly() -> None:
    async with simulator(speed=4) as sim:
        ws = await subscribed(sim, "AM.AAPL, AM.MSFT")
        seen: set[str] = set()
        minutes: set[int] = set()
        while len(minutes) < 2:
            for event in await recv_frame(ws):
                assert set(event) == AM_FIELDS
                assert event["ev"] == "AM" and event["e"] == event["s"] + MINUTE
                seen.add(event["sym"])
                minutes.add(event["s"])
                bar = from_event(event, "test")
                assert bar == sim.served()[(event["sym"], event["s"])]
        assert seen == {"AAPL", "MSFT"}

        await send(ws, "unsubscribe", "AM.MSFT")
        frame = await recv_frame(ws)
        while frame[0]["ev"] != "status":  # data frames already in flight
            frame = await recv_frame(ws)
        assert frame == status("success", "unsubscribed to: AM.MSFT")
        after: set[str] = set()
        first = sim.minutes_sent
        while sim.minutes_sent < first + 2:
            after |= {event["sym"] for event in await recv_frame(ws)}
        assert after == {"AAPL"}
        await ws.close()


async def test_auth_and_subscribe_sent_before_reading_anything_like_the_go_client() -> None:
    async with simulator(speed=4) as sim:
        ws = await asyncio.wait_for(connect(sim.ws_url + "/stocks"), RECV_TIMEOUT)
        await send(ws, "auth", "k")
        await send(ws, "subscribe", "AM.AAPL,AM.MSFT")
        assert await recv_frame(ws) == status("connected", "Connected Successfully")
        assert await recv_frame(ws) == status("auth_success", "authenticated")
        assert await recv_frame(ws) == status("success", "subscribed to: AM.AAPL")
        assert await recv_frame(ws) == status("success", "subscribed to: AM.MSFT")
        assert {event["sym"] for event in await recv_frame(ws)} <= {"AAPL", "MSFT"}
        await ws.close()


async def test_auth_failed_and_nothing_before_auth() -> None:
    async with simulator(api_key="secret", speed=4) as sim:
        ws = await open_ws(sim)
        await send(ws, "subscribe", "AM.*")
        [reply] = await recv_frame(ws)
        assert reply["status"] == "error" and reply["message"]
        await send(ws, "auth", "wrong")
        assert await recv_frame(ws) == status("auth_failed", "authentication failed")
        await send(ws, "subscribe", "AM.*")
        [reply] = await recv_frame(ws)
        assert reply["status"] == "error" and "auth" in reply["message"]
        await sim.wait_minutes(2, timeout=5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)  # two minutes went by, nothing was sent

        await send(ws, "auth", "secret")
        assert await recv_frame(ws) == status("auth_success", "authenticated")
        await send(ws, "subscribe", "AM.*")
        assert await recv_frame(ws) == status("success", "subscribed to: AM.*")
        assert all(event["ev"] == "AM" for event in await recv_frame(ws))
        await ws.close()


async def test_auth_fail_fault_rejects_every_key_and_the_official_client_gives_up() -> None:
    async with simulator(FaultConfig(auth_fail=True), api_key="k") as sim:
        ws = await open_ws(sim)
        await send(ws, "auth", "k")
        assert await recv_frame(ws) == status("auth_failed", "authentication failed")
        await ws.close()
        client = massive.WebSocketClient(
            api_key="k", feed=f"127.0.0.1:{sim.port}", secure=False, market="stocks"
        )

        async def ignore(_: Any) -> None:
            pass

        with pytest.raises(AuthError, match="authentication failed"):
            await asyncio.wait_for(client.connect(ignore), 5)
        assert sim.stats.auth_failures == 2


async def test_wildcard_gets_every_symbol_of_every_minute() -> None:
    async with simulator(symbols=40, speed=2) as sim:
        ws = await subscribed(sim)
        assert sim.stats.bars_emitted == 0, "subscribed too late"
        collector = Collector(ws)
        await sim.wait_minutes(3, timeout=10)
        await sim.stop()
        await collector.finish()
        received = Counter(event["s"] for event in collector.events())
        served = Counter(t for (_, t) in sim.served())
        assert len(served) >= 3
        assert received == served
        assert len({event["sym"] for event in collector.events()}) > 30


async def test_client_garbage_gets_error_statuses_and_the_connection_survives() -> None:
    async with simulator(speed=1) as sim:
        ws = await open_ws(sim)
        garbage: list[str | bytes] = [
            "not json",
            "[1, 2]",
            '"auth"',
            b"\xff\xfe",
            '{"action": "dance", "params": "AM.*"}',
            '{"params": "AM.*"}',
        ]
        for message in garbage:
            await ws.send(message)
            [reply] = await recv_frame(ws)
            assert reply["ev"] == "status" and reply["status"] == "error"
            assert isinstance(reply["message"], str) and reply["message"]
        await send(ws, "auth", "k")
        assert await recv_frame(ws) == status("auth_success", "authenticated")
        for params in (5, None, ["AM.AAPL"]):
            await send(ws, "subscribe", params)
            assert (await recv_frame(ws))[0]["status"] == "error"
        await send(ws, "subscribe", "AMAAPL, ZZ.AAPL, , AM.AAPL")
        assert (await recv_frame(ws))[0]["status"] == "error"  # no dot
        assert (await recv_frame(ws))[0]["status"] == "error"  # unknown channel
        assert await recv_frame(ws) == status("success", "subscribed to: AM.AAPL")
        assert sim.stats.client_errors == 11
        await ws.close()


# --- the official clients -------------------------------------------------------------------


async def test_official_ws_client_receives_equity_aggs() -> None:
    async with simulator(symbols=10, speed=4) as sim:
        received: list[Any] = []

        async def handler(messages: list[Any]) -> None:
            received.extend(messages)

        client = massive.WebSocketClient(
            api_key="k", feed=f"127.0.0.1:{sim.port}", secure=False, market="stocks",
            subscriptions=["AM.*"],
        )  # fmt: skip
        task = asyncio.create_task(client.connect(handler))
        await wait_for(lambda: len(received) >= 25, 10, "25 aggregates")
        await client.close()
        await asyncio.wait_for(task, 5)
        served = sim.served()
        for agg in received:
            assert isinstance(agg, EquityAgg)
            assert agg.end_timestamp == agg.start_timestamp + MINUTE
            bar = served[(agg.symbol, agg.start_timestamp)]
            assert (agg.open, agg.high, agg.low, agg.close) == (bar.o, bar.h, bar.l, bar.c)
            assert (agg.volume, agg.vwap) == (bar.v, bar.vw)
            assert agg.accumulated_volume >= agg.volume


@pytest.mark.parametrize("code", [1011, 1006])
async def test_official_ws_client_reconnects_after_injected_disconnects(code: int) -> None:
    faults = FaultConfig(disconnect_every_s=0.6, disconnect_code=code)
    async with simulator(faults, symbols=5, speed=8) as sim:
        batches: list[tuple[int, int]] = []  # (disconnects injected so far, events)

        async def handler(messages: list[Any]) -> None:
            batches.append((sim.stats.disconnects_injected, len(messages)))

        client = massive.WebSocketClient(
            api_key="k", feed=f"127.0.0.1:{sim.port}", secure=False, market="stocks",
            subscriptions=["AM.*"], max_reconnects=100,
        )  # fmt: skip
        task = asyncio.create_task(client.connect(handler))
        await wait_for(lambda: any(d >= 3 for d, _ in batches), 15, "data after 3 disconnects")
        assert not task.done()
        assert sim.stats.connections_total >= 4
        assert sim.stats.auth_successes >= 4
        assert {d for d, _ in batches} >= {0, 3}  # data before the first and after the third
        await client.close()
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(task, 5)


def _expected_agg(bars: list[Bar], t: int) -> dict[str, Any]:
    weight = sum(bar.v for bar in bars)
    return {
        "open": bars[0].o, "close": bars[-1].c, "high": max(bar.h for bar in bars),
        "low": min(bar.l for bar in bars), "volume": weight, "timestamp": t,
        "vwap": round(sum(bar.vw * bar.v for bar in bars if bar.vw) / weight, 4),
        "transactions": sum(bar.n or 0 for bar in bars),
    }  # fmt: skip


async def test_official_rest_client_pages_through_exactly_the_stored_bars() -> None:
    first = START - 100 * MINUTE
    last = START + 3 * MINUTE - 1  # only minutes already sent: the answer cannot move
    async with simulator(symbols=5, history_minutes=100, speed=4) as sim:
        await sim.wait_minutes(3, timeout=10)
        rest = massive.RESTClient(api_key="k", base=sim.rest_url, retries=0, read_timeout=5)

        def fetch(multiplier: int, timespan: str, from_: Any, to: Any) -> list[Any]:
            return list(rest.list_aggs("AAPL", multiplier, timespan, from_, to, limit=50))

        # An independent oracle: the same seeded random walk over history + live minutes.
        walk = RandomWalk(symbol_names(5), seed=7)
        expected = [b for i in range(103) for b in walk.minute(first + i * MINUTE)]
        aapl = [bar for bar in expected if bar.symbol == "AAPL"]
        assert len(aapl) == 103

        before = sim.stats.rest_requests
        aggs = await asyncio.to_thread(fetch, 1, "minute", first, last)
        assert sim.stats.rest_requests - before == 3  # 50 + 50 + 3 bars
        assert [
            (a.timestamp, a.open, a.high, a.low, a.close, a.volume, a.vwap, a.transactions)
            for a in aggs
        ] == [(b.t, b.o, b.h, b.l, b.c, b.v, b.vw, b.n) for b in aapl]
        served = sim.served()
        live_aggs = [a for a in aggs if a.timestamp >= START]
        assert len(live_aggs) == 3
        for agg in live_aggs:
            bar = served[("AAPL", agg.timestamp)]
            assert (agg.open, agg.high, agg.low, agg.close, agg.volume, agg.vwap) == (
                bar.o, bar.h, bar.l, bar.c, bar.v, bar.vw,
            )  # fmt: skip

        # The same ET day asked for by date; then hour and 5-minute buckets (epoch-aligned).
        by_date = await asyncio.to_thread(fetch, 1, "minute", "2024-01-02", "2024-01-02")
        stamps = [a.timestamp for a in by_date]  # minutes sent meanwhile come on top
        assert stamps[: len(aggs)] == [a.timestamp for a in aggs] and len(stamps) <= 110
        for multiplier, timespan, size in ((1, "hour", 3_600_000), (5, "minute", 300_000)):
            buckets = await asyncio.to_thread(fetch, multiplier, timespan, first, last)
            groups: dict[int, list[Bar]] = {}
            for bar in aapl:
                groups.setdefault(bar.t - bar.t % size, []).append(bar)
            want = [_expected_agg(bars, t) for t, bars in sorted(groups.items())]
            got = [{key: getattr(a, key) for key in want[0]} for a in buckets]
            assert got == want


async def test_rest_errors_pagination_and_sorting_raw() -> None:
    async with (
        simulator(symbols=3, history_minutes=30, speed=1, api_key="secret") as sim,
        httpx.AsyncClient(base_url=sim.rest_url, timeout=5) as http,
    ):
        path = f"/v2/aggs/ticker/AAPL/range/1/minute/{START - 30 * MINUTE}/{START - 1}"
        bearer = {"Authorization": "Bearer secret"}

        response = await http.get(path)
        assert response.status_code == 401
        body = response.json()
        assert body["status"] == "ERROR" and body["error"] == "API Key was not provided"
        assert body["request_id"]
        response = await http.get(path, headers={"Authorization": "Bearer nope"})
        assert (response.status_code, response.json()["error"]) == (401, "Unknown API Key")
        assert (await http.get(path, params={"apiKey": "secret"})).status_code == 200
        response = await http.get("/v2/reference/tickers", headers=bearer)
        assert response.status_code == 404 and response.json()["status"] == "NOT_FOUND"
        for bad in (
            path.replace("/1/minute/", "/x/minute/"),
            path.replace("/1/minute/", "/1/fortnight/"),
            path.replace("/1/minute/", "/1/day/"),
            path.replace(f"/{START - 1}", "/yesterday"),
            path + "?limit=0",
            path + "?sort=sideways",
            path + "?cursor=%%%",
        ):
            response = await http.get(bad, headers=bearer)
            assert response.status_code == 400, bad
            assert response.json()["status"] == "ERROR" and response.json()["error"]

        unknown = await http.get(path.replace("AAPL", "NOPE"), headers=bearer)
        assert unknown.status_code == 200
        assert "results" not in unknown.json() and unknown.json()["resultsCount"] == 0

        full = (await http.get(path, headers=bearer)).json()
        assert full["status"] == "OK" and full["ticker"] == "AAPL" and full["adjusted"] is True
        assert full["resultsCount"] == full["queryCount"] == 30 and "next_url" not in full
        assert set(full["results"][0]) == {"v", "vw", "o", "c", "h", "l", "t", "n"}
        for order in ("asc", "desc"):
            pages, url = [], f"{path}?limit=7&sort={order}"
            while url:
                page = (await http.get(url, headers=bearer)).json()
                pages.append(page)
                assert page["resultsCount"] == len(page["results"]) <= 7
                next_url = page.get("next_url")
                if next_url:
                    assert "apiKey" not in next_url and "cursor=" in next_url
                    parsed = httpx.URL(next_url)
                    url = parsed.raw_path.decode()
                else:
                    url = ""
            assert len(pages) == 5
            ts = [r["t"] for page in pages for r in page["results"]]
            assert ts == sorted(ts, reverse=order == "desc")
            assert sorted(ts) == [r["t"] for r in full["results"]]


@pytest.mark.parametrize(
    ("market", "channel", "rest_ticker", "pair"),
    [("crypto", "XA", "X:BTCUSD", "BTC-USD"), ("forex", "CA", "C:EURUSD", "EUR/USD")],
)
async def test_crypto_and_forex_pairs_and_rest_tickers(
    market: str, channel: str, rest_ticker: str, pair: str
) -> None:
    async with simulator(symbols=4, speed=4, market=market, history_minutes=5) as sim:
        with pytest.raises(InvalidStatus):
            await asyncio.wait_for(connect(sim.ws_url + "/stocks"), 5)
        ws = await subscribed(sim, f"{channel}.*", path=f"/{market}")
        events = await recv_frame(ws)
        assert {event["ev"] for event in events} == {channel}
        assert ("vw" in events[0]) is (market == "crypto")
        for event in events:
            assert sim.served()[(event["pair"], event["s"])] == from_event(event, "t")
        await ws.close()

        received: list[Any] = []

        async def handler(messages: list[Any]) -> None:
            received.extend(messages)

        client = massive.WebSocketClient(
            api_key="k", feed=f"127.0.0.1:{sim.port}", secure=False, market=market,
            subscriptions=[f"{channel}.{pair}"],
        )  # fmt: skip
        task = asyncio.create_task(client.connect(handler))
        await wait_for(lambda: len(received) >= 2, 5, f"{channel} aggregates")
        await client.close()
        await asyncio.wait_for(task, 5)
        assert all(isinstance(agg, CurrencyAgg) and agg.pair == pair for agg in received)

        rest = massive.RESTClient(api_key="k", base=sim.rest_url, retries=0, read_timeout=5)

        def fetch() -> list[Any]:
            return list(rest.list_aggs(rest_ticker, 1, "minute", START - 5 * MINUTE, START - 1))

        aggs = await asyncio.to_thread(fetch)
        assert len(aggs) == 5


# --- data faults ----------------------------------------------------------------------------


async def test_duplicates_are_exact_copies_in_later_frames() -> None:
    async with simulator(FaultConfig(duplicate_rate=0.3), symbols=30, speed=2) as sim:
        ws = await subscribed(sim)
        assert sim.stats.bars_emitted == 0, "subscribed too late"
        collector = Collector(ws)
        await sim.wait_minutes(3, timeout=10)
        await sim.stop()
        await collector.finish()
        frames = [orjson.loads(text) for text in collector.frames]
        position: dict[bytes, int] = {}
        duplicates = 0
        for index, frame in enumerate(frames):
            for event in frame:
                key = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
                if key in position:
                    duplicates += 1
                    assert position[key] < index  # a later frame
                else:
                    position[key] = index
        assert duplicates >= 5
        assert duplicates <= sim.stats.duplicates_injected
        bars = bars_of(collector.events())
        assert last_write_wins(bars) == sim.served()
        assert len(bars) == len(sim.served()) + duplicates


async def test_corrections_change_values_and_become_the_truth() -> None:
    faults = FaultConfig(correction_rate=0.5)
    async with simulator(faults, symbols=10, speed=20) as sim:
        ws = await subscribed(sim)
        collector = Collector(ws)
        await sim.wait_minutes(25, timeout=15)
        await sim.stop()
        await collector.finish()
        versions: dict[tuple[str, int], list[Bar]] = {}
        for bar in bars_of(collector.events()):
            versions.setdefault((bar.symbol, bar.t), []).append(bar)
        served = sim.served()
        corrected_keys = [key for key, seen in versions.items() if len(seen) > 1]
        assert len(corrected_keys) >= 20
        for key in corrected_keys:
            first, last = versions[key][0], versions[key][-1]
            assert last != first
            assert last.v > first.v and last.h >= first.h and last.l <= first.l
            assert (last.o, last.c) == (first.o, first.c)
            assert served[key] == last
        assert {key: seen[-1] for key, seen in versions.items()} == {
            key: served[key] for key in versions
        }
        assert len(versions) >= 0.9 * len(served)
        assert sim.stats.corrections_injected >= len(corrected_keys)


async def test_out_of_order_bars_arrive_after_later_minutes() -> None:
    faults = FaultConfig(out_of_order_rate=0.4)
    async with simulator(faults, symbols=20, speed=2) as sim:
        ws = await subscribed(sim)
        assert sim.stats.bars_emitted == 0, "subscribed too late"
        collector = Collector(ws)
        await sim.wait_minutes(3, timeout=10)
        await sim.stop()
        await collector.finish()
        events = collector.events()
        late, newest = 0, 0
        for event in events:
            late += event["s"] < newest
            newest = max(newest, event["s"])
        assert late >= 3
        assert sim.stats.out_of_order_injected >= late
        bars = bars_of(events)
        assert len(bars) == len(sim.served())  # delayed, not lost nor doubled
        assert last_write_wins(bars) == sim.served()


async def test_malformed_frames_are_sent_and_data_goes_on() -> None:
    async with simulator(FaultConfig(malformed_rate=0.5), symbols=20, speed=4) as sim:
        ws = await subscribed(sim)
        collector = Collector(ws)
        await sim.wait_minutes(3, timeout=10)
        await sim.stop()
        await collector.finish()
        malformed = 0
        for text in collector.frames:
            try:
                frame = orjson.loads(text)
            except orjson.JSONDecodeError:
                malformed += 1
                continue
            if not isinstance(frame, list):
                malformed += 1
                continue
            rejected = [e for e in frame if isinstance(from_event(e, "t"), Rejected)]
            malformed += bool(rejected)
        assert malformed >= 2
        assert malformed <= sim.stats.malformed_injected
        assert last_write_wins(bars_of(collector.events())).items() <= sim.served().items()


async def test_all_data_faults_together_keep_the_last_event_the_truth() -> None:
    faults = FaultConfig(
        duplicate_rate=0.3, correction_rate=0.5, out_of_order_rate=0.5, malformed_rate=0.2
    )
    async with simulator(faults, symbols=40, speed=20) as sim:
        ws = await subscribed(sim)
        collector = Collector(ws)
        await sim.wait_minutes(30, timeout=15)
        await sim.stop()
        await collector.finish()
        versions: dict[tuple[str, int], list[Bar]] = {}
        for bar in bars_of(collector.events()):
            versions.setdefault((bar.symbol, bar.t), []).append(bar)
        served = sim.served()
        assert sum(len(seen) > 1 for seen in versions.values()) > 100
        for key, seen in versions.items():
            # A correction (more volume) never arrives before a copy of what it replaces.
            assert seen[-1].v == max(bar.v for bar in seen), (key, seen)
            assert served[key] == seen[-1]


def test_malformed_frame_kinds() -> None:
    spec = MARKETS["stocks"]
    sample: dict[str, object] = {"ev": "AM", "sym": "AAPL", "o": 1}
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(malformed_frame(spec, sample, "AAPL", START, 0))
    assert orjson.loads(malformed_frame(spec, sample, "AAPL", START, 1)) == sample  # bare object
    for kind, reason in ((2, "missing_field"), (3, "not_a_number")):
        frame = orjson.loads(malformed_frame(spec, sample, "AAPL", START, kind))
        assert isinstance(frame, list)
        record = from_event(frame[0], "t")
        assert isinstance(record, Rejected) and record.reason == reason, kind


# --- connection faults ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["evict_oldest", "reject_newest"])
async def test_max_connections_status_then_close_1008(policy: str) -> None:
    faults = FaultConfig(max_connections=1, max_connections_policy=policy)
    async with simulator(faults, speed=1) as sim:
        first = await open_ws(sim)
        await send(first, "auth", "k")
        assert await recv_frame(first) == status("auth_success", "authenticated")
        second = await open_ws(sim)
        await send(second, "auth", "k")
        assert await recv_frame(second) == status("auth_success", "authenticated")
        victim, survivor = (first, second) if policy == "evict_oldest" else (second, first)
        [notice] = await recv_frame(victim)
        assert notice["status"] == "max_connections" and "Maximum number" in notice["message"]
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(victim.recv(), RECV_TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await send(survivor, "subscribe", "AM.AAPL")
        assert await recv_frame(survivor) == status("success", "subscribed to: AM.AAPL")
        assert sim.stats.max_connections_closed == 1
        await survivor.close()


async def test_stalled_server_makes_client_keepalive_time_out() -> None:
    async with simulator(FaultConfig(stall_after_s=0.5), speed=4) as sim:
        # close_timeout: after the ping timeout a client waits this long for the server to close
        # TCP (a stalled server never does); the official client also uses 1 s.
        ws = await open_ws(sim, ping_interval=0.5, ping_timeout=0.5, close_timeout=1)
        await send(ws, "auth", "k")
        await recv_frame(ws)
        await send(ws, "subscribe", "AM.*")
        started = time.monotonic()
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.sent is not None
        assert closed.value.sent.code == 1011 and "keepalive" in closed.value.sent.reason
        assert time.monotonic() - started >= 0.5
        assert sim.stats.stalls_injected == 1
        # The server notices the client left although it reads nothing any more.
        await wait_for(lambda: sim.stats.connections_open == 0, 5, "stalled connection cleanup")


# --- time, scale, replay --------------------------------------------------------------------


async def test_speed_is_simulated_minutes_per_wall_second() -> None:
    for speed, wall_s, low, high in ((1.0, 3.3, 2, 4), (60.0, 1.0, 30, 75)):
        async with simulator(speed=speed) as sim:
            began = time.monotonic()
            await asyncio.sleep(wall_s)
            elapsed = time.monotonic() - began
            sent = sim.minutes_sent
            assert low <= sent <= high, (speed, sent)
            simulated = sim.clock.now_ms() - START
            assert 0.8 * elapsed <= simulated / (speed * MINUTE) <= 1.2 * elapsed + 0.2
            minutes = sorted({t for _, t in sim.served()})
            assert minutes[:sent] == [START + i * MINUTE for i in range(sent)]
    async with simulator(speed=0, start_ms=None) as real_time:
        assert abs(real_time.clock.now_ms() - time.time() * 1000) < 1000
        await asyncio.sleep(0.2)
        assert real_time.minutes_sent <= 1  # unless a wall-clock minute just ended


@pytest.mark.timeout(60)
async def test_full_market_burst_reaches_a_wildcard_subscriber() -> None:
    async with simulator(symbols=12_000, speed=0.5) as sim:
        ws = await subscribed(sim)
        assert sim.stats.bars_emitted == 0, "subscribed too late"
        stamps: list[float] = []
        counted = 0
        collector_done = asyncio.Event()

        async def count() -> None:
            nonlocal counted
            with contextlib.suppress(ConnectionClosed):
                async for text in ws:
                    for event in orjson.loads(text):
                        if event["s"] == START:
                            counted += 1
                            stamps.append(time.perf_counter())
            collector_done.set()

        reader = asyncio.create_task(count())
        await sim.wait_minutes(1, timeout=20)
        stats = sim.stats
        build_s, send_s = stats.last_burst_build_s, stats.last_burst_send_s
        write_s = stats.last_burst_write_s
        await sim.stop()
        await asyncio.wait_for(reader, 20)
        expected = sum(1 for _, t in sim.served() if t == START)
        assert expected > 6_000
        assert counted == expected
        print(
            f"\n12,000 symbols: {expected} bars in one burst; generate+encode+plan "
            f"{build_s * 1000:.0f} ms, write {write_s * 1000:.0f} ms, send incl. spread "
            f"{send_s * 1000:.0f} ms; first to last event at the client "
            f"{(stamps[-1] - stamps[0]) * 1000:.0f} ms"
        )


async def test_replay_sends_the_files_bars_by_minute(tmp_path: Path) -> None:
    rows = [
        ("MSFT", 1, 370.0), ("AAPL", 0, 185.0), ("MSFT", 0, 369.0),  # minute 1 listed first
        ("AAPL", 1, 185.5), ("AAPL", 3, 186.0), ("MSFT", 3, 371.0),  # nothing in minute 2
        ("AAPL", 1, 185.7),  # a file-level correction of AAPL minute 1: sent last, wins
    ]  # fmt: skip
    path = tmp_path / "bars.csv"
    lines = ["symbol,t,o,h,l,c,v,vw,n"]
    for symbol, minute, price in rows:
        lines.append(f"{symbol},{START + minute * MINUTE},{price},{price + 1},{price - 1},"
                     f"{price + 0.5},{1000 + minute},{price + 0.2},{10 + minute}")  # fmt: skip
    path.write_text("\n".join(lines) + "\nBAD,row\n")
    async with simulator(replay=[str(path)], start_ms=None, speed=2, symbols=1) as sim:
        ws = await subscribed(sim)
        assert sim.stats.bars_emitted == 0, "subscribed too late"
        collector = Collector(ws)
        await sim.wait_minutes(10, timeout=10)
        assert sim.finished and sim.minutes_sent == 4
        assert (sim.stats.replay_bars, sim.stats.replay_rejected) == (8, 1)
        await sim.stop()
        await collector.finish()
        file_bars = [
            Bar(s, START + m * MINUTE, p, p + 1, p - 1, p + 0.5, 1000.0 + m, p + 0.2)
            for s, m, p in rows
        ]
        in_minute_order = sorted(file_bars, key=lambda bar: bar.t)  # stable: file order kept
        assert bars_of(collector.events()) == in_minute_order
        assert sim.served() == last_write_wins(in_minute_order)
        assert sim.served()[("AAPL", START + MINUTE)].o == 185.7


# --- pure parts -----------------------------------------------------------------------------


def test_bar_store_replaces_inserts_and_prunes() -> None:
    store = BarStore()
    bars = [Bar("A", START + i * MINUTE, 1, 2, 0.5, 1.5, 10, 1.2, 3) for i in (0, 2, 3)]
    store.extend(bars)
    store.put(Bar("A", START + MINUTE, 1, 2, 0.5, 1.5, 11))  # late: inserted in order
    newer = Bar("A", START + 2 * MINUTE, 1, 3, 0.5, 1.5, 99, None, 7)
    store.put(newer)
    got = store.range("A", START, START + 4 * MINUTE)
    assert [bar.t for bar in got] == [START + i * MINUTE for i in range(4)]
    assert got[1].vw is None and got[1].n is None and got[2] == newer
    assert store.get("A", START + 2 * MINUTE) == newer and store.get("B", START) is None
    store.prune(START + 2 * MINUTE)
    assert [bar.t for bar in store.bars_since(0)] == [START + 2 * MINUTE, START + 3 * MINUTE]
    store.prune(START + 200 * MINUTE)
    assert len(store) == 0


def test_corrections_are_valid_bars_with_more_volume() -> None:
    rng = random.Random(1)
    bars = RandomWalk(symbol_names(50), seed=3).minute(START)
    for bar in bars:
        new = corrected(bar, rng)
        assert new.v > bar.v and new.h >= bar.h and new.l <= bar.l
        assert new.l <= min(new.o, new.c) and new.h >= max(new.o, new.c)
        assert new.vw is not None and new.l <= new.vw <= new.h
    encoder = EventEncoder(MARKETS["stocks"])
    first = encoder.event(bars[0])
    again = encoder.event(corrected(bars[0], rng), bars[0])
    assert isinstance(again["av"], int) and isinstance(first["av"], int)
    assert again["av"] > first["av"] and again["op"] == first["op"]


@pytest.mark.parametrize(
    "change",
    [
        {"market": "options"},
        {"speed": -1.0},
        {"faults": FaultConfig(duplicate_rate=1.5)},
        {"faults": FaultConfig(disconnect_code=1005)},
        {"faults": FaultConfig(max_connections_policy="random")},
        {"faults": FaultConfig(stall_after_s=0)},
    ],
)
def test_invalid_config_is_rejected_up_front(change: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PolygonSimulator(SimulatorConfig(**change))
