"""The Polygon WebSocket ingest client and its REST gap backfill, against a fake Polygon server.

``FakePolygon`` is a real ``websockets`` server on 127.0.0.1 speaking Polygon's protocol
(connected -> auth -> auth_success/auth_failed -> subscribe acks, one per channel), run per
connection by a script (send frames, close with a code, drop the TCP connection, stall). The same
port answers the REST aggregates endpoint through ``process_request``: bars filtered by the
requested range, paginated with ``next_url`` on another host (as Polygon's may be), optional
injected faults (429 with Retry-After, 5xx, 401, 403), and every request recorded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ingest.polygon import (
    AggsClient,
    Backfiller,
    FeedStats,
    PolygonConfig,
    PolygonFeed,
    rest_ticker,
    subscribe_params,
)
from ingest.polygon.rest import _retry_after_s
from speedlayer.bus.base import RAW_TOPIC, Subscription
from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import ManualClock
from speedlayer.errors import AuthError, ConfigError
from speedlayer.models import MINUTE_MS, Bar
from tests.conftest import free_port
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)

KEY = "pk_TEST_9f8e7d6c5b4a3210_SECRET"
T0 = 1_704_205_800_000  # 2024-01-02 14:30Z, a minute start
NOW = T0 + 20 * MINUTE_MS

SERVER_LOG = logging.getLogger("tests.fake_polygon")
SERVER_LOG.setLevel(logging.WARNING)

Script = Callable[[ServerConnection, "Conn"], Awaitable[None]]


# -- data helpers ---------------------------------------------------------------------------------


def price(symbol: str, t: int) -> float:
    return 100.0 + (sum(map(ord, symbol)) % 50) + ((t - T0) // MINUTE_MS) * 0.25


def am_event(symbol: str, t: int, ev: str = "AM", **changes: Any) -> dict[str, Any]:
    p = price(symbol, t)
    event: dict[str, Any] = {
        "ev": ev,
        "sym" if ev == "AM" else "pair": symbol,
        "v": 1200, "av": 88_000, "op": 99.5, "vw": p + 0.05, "o": p, "c": p + 0.1,
        "h": p + 0.2, "l": p - 0.1, "a": 100.1, "z": 12, "s": t, "e": t + MINUTE_MS,
    }  # fmt: skip
    event.update(changes)
    return event


def live_bar(symbol: str, t: int) -> Bar:
    p = price(symbol, t)
    return Bar(symbol, t, p, p + 0.2, p - 0.1, p + 0.1, 1200.0, p + 0.05, None)


def rest_result(symbol: str, t: int) -> dict[str, Any]:
    """REST values differ from live ones (a corrected minute), so their origin is visible."""
    p = price(symbol, t) + 0.01
    return {"v": 1500, "vw": p + 0.05, "o": p, "c": p + 0.1, "h": p + 0.2, "l": p - 0.1, "t": t,
            "n": 7}  # fmt: skip


def rest_bar(symbol: str, t: int) -> Bar:
    p = price(symbol, t) + 0.01
    return Bar(symbol, t, p, p + 0.2, p - 0.1, p + 0.1, 1500.0, p + 0.05, 7)


def frame(*events: object) -> str:
    return orjson.dumps(list(events)).decode()


def minute(i: int) -> int:
    return T0 + i * MINUTE_MS


# -- the fake Polygon server ---------------------------------------------------------------------


@dataclass
class Conn:
    path: str
    opened: float
    messages: list[Any] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class RestCall:
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    at: float


class FakePolygon:
    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.scripts: list[Script] = []
        self.connections: list[Conn] = []
        self.rest_bars: dict[str, list[dict[str, Any]]] = {}  # REST ticker -> results
        self.page_size = 3
        self.next_url_extra = ""  # appended to next_url's query (e.g. a leaked apiKey)
        self.rest_faults: list[tuple[int, dict[str, str], str]] = []
        self.rest_calls: list[RestCall] = []
        self.server: Server | None = None
        self.port = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            port,
            process_request=self._rest,
            ping_interval=None,
            logger=SERVER_LOG,  # quiet: it would log the client's key (auth frame, REST header)
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # WebSocket
    async def _handler(self, ws: ServerConnection) -> None:
        conn = Conn(ws.request.path if ws.request else "", time.monotonic())
        self.connections.append(conn)
        script = self.scripts.pop(0) if self.scripts else keep_open()
        try:
            await ws.send(frame(status("connected", "Connected Successfully")))
            auth = orjson.loads(await ws.recv())
            conn.messages.append(auth)
            if auth != {"action": "auth", "params": self.key}:
                await ws.send(frame(status("auth_failed", "authentication failed")))
                await read_all(ws, conn)
                return
            await ws.send(frame(status("auth_success", "authenticated")))
            subscribe = orjson.loads(await ws.recv())
            conn.messages.append(subscribe)
            for channel in subscribe["params"].split(","):
                await ws.send(frame(status("success", f"subscribed to: {channel}")))
            conn.subscribed.set()
            await script(ws, conn)
        except ConnectionClosed:
            pass
        finally:
            conn.close_code = ws.close_code
            conn.closed.set()

    # REST
    def _rest(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if not parts.path.startswith("/v2/"):
            return None
        query = parse_qs(parts.query)
        self.rest_calls.append(
            RestCall(parts.path, query, request.headers.get("Authorization"), time.monotonic())
        )
        if self.rest_faults:
            code, headers, body = self.rest_faults.pop(0)
            return respond(connection, code, body, headers)
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return respond(connection, 401, '{"status":"ERROR","error":"Unknown API Key"}')
        _, _, _, _, ticker, _, _, _, start, end = parts.path.split("/")
        rows = [r for r in self.rest_bars.get(ticker, []) if int(start) <= r["t"] <= int(end)]
        offset = int(query.get("cursor", ["0"])[0])
        page = rows[offset : offset + self.page_size]
        document: dict[str, Any] = {"ticker": ticker, "status": "OK", "resultsCount": len(page)}
        if page:
            document["results"] = page
        if offset + self.page_size < len(rows):
            document["next_url"] = (
                f"https://api.massive.com{parts.path}?cursor={offset + self.page_size}"
                + self.next_url_extra
            )
        return respond(connection, 200, orjson.dumps(document).decode())

    def rest_calls_for(self, ticker: str) -> list[RestCall]:
        return [call for call in self.rest_calls if f"/ticker/{ticker}/" in call.path]


def status(status: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": status, "message": message}


def respond(
    connection: ServerConnection, code: int, body: str, headers: dict[str, str] | None = None
) -> Response:
    response = connection.respond(code, body)
    new_headers = Headers(
        [(k, v) for k, v in response.headers.raw_items() if k.lower() != "content-type"]
    )
    new_headers["Content-Type"] = "application/json"
    for name, value in (headers or {}).items():
        new_headers[name] = value
    response.headers = new_headers
    return response


async def read_all(ws: ServerConnection, conn: Conn) -> None:
    async for message in ws:
        conn.messages.append(orjson.loads(message))


def keep_open(*frames: str | bytes) -> Script:
    async def script(ws: ServerConnection, conn: Conn) -> None:
        for item in frames:
            await ws.send(item)
        await read_all(ws, conn)

    return script


async def flush(ws: ServerConnection) -> None:
    """Wait until the client has received everything sent so far (its pong follows the data)."""
    pong = await ws.ping()
    await asyncio.wait_for(pong, 5)


def then_close(code: int, *frames: str, wait: asyncio.Event | None = None) -> Script:
    async def script(ws: ServerConnection, conn: Conn) -> None:
        for item in frames:
            await ws.send(item)
        await flush(ws)
        if wait is not None:
            await asyncio.wait_for(wait.wait(), 10)
        await ws.close(code, "test close")

    return script


def then_drop(*frames: str) -> Script:
    async def script(ws: ServerConnection, conn: Conn) -> None:
        for item in frames:
            await ws.send(item)
        await flush(ws)
        ws.transport.abort()  # no close frame: the client sees 1006

    return script


def after(seconds: float, inner: Script) -> Script:
    async def script(ws: ServerConnection, conn: Conn) -> None:
        await asyncio.sleep(seconds)
        await inner(ws, conn)

    return script


def stall(fake: FakePolygon) -> Script:
    async def script(ws: ServerConnection, conn: Conn) -> None:
        ws.transport.pause_reading()  # pings are never read, so never answered
        count = len(fake.connections)
        await until(lambda: len(fake.connections) > count, 25, "the client to reconnect")
        ws.transport.abort()

    return script


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakePolygon]:
    server = FakePolygon()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def feeds() -> AsyncIterator[list[PolygonFeed]]:
    created: list[PolygonFeed] = []
    yield created
    for feed in created:
        await asyncio.wait_for(feed.stop(), 15)


def config(fake: FakePolygon, **changes: Any) -> PolygonConfig:
    settings: dict[str, Any] = {
        "api_key": KEY,
        "ws_url": fake.ws_url,
        "rest_url": fake.rest_url,
        "symbols": ["AAPL", "MSFT"],
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.5,
        "backfill_lookback_min": 0,
        "ping_interval_s": 5.0,
        "ping_timeout_s": 5.0,
    }
    settings.update(changes)
    return PolygonConfig(**settings)


async def started(
    feeds: list[PolygonFeed], cfg: PolygonConfig, bus: MemoryBus, clock: ManualClock | None = None
) -> PolygonFeed:
    feed = PolygonFeed(cfg, bus, clock or ManualClock(NOW))
    feeds.append(feed)
    await feed.start()
    return feed


async def collect(sub: Subscription, count: int, within: float = 10.0) -> list[Bar]:
    bars: list[Bar] = []
    async with asyncio.timeout(within):
        while len(bars) < count:
            topic, batch = await sub.get()
            assert topic == RAW_TOPIC
            bars.extend(batch)
    return bars


async def collect_keys(
    sub: Subscription, wanted: set[tuple[str, int]], within: float = 10.0
) -> dict[tuple[str, int], list[Bar]]:
    """Every bar received until each wanted (symbol, t) has been seen, grouped by key."""
    seen: dict[tuple[str, int], list[Bar]] = {}
    async with asyncio.timeout(within):
        while not wanted <= seen.keys():
            _, batch = await sub.get()
            for bar in batch:
                seen.setdefault((bar.symbol, bar.t), []).append(bar)
    return seen


def keys(symbols: Iterable[str], minutes: Iterable[int]) -> set[tuple[str, int]]:
    return {(s, minute(i)) for s in symbols for i in minutes}


# -- unit tests: configuration and mapping ---------------------------------------------------------


@pytest.mark.parametrize(
    ("market", "symbol", "expected"),
    [
        ("stocks", "AAPL", "AAPL"),
        ("stocks", "BRK.A", "BRK.A"),
        ("options", "O:SPY251219C00650000", "O:SPY251219C00650000"),
        ("indices", "I:SPX", "I:SPX"),
        ("crypto", "BTC-USD", "X:BTCUSD"),
        ("crypto", "X:ETHUSD", "X:ETHUSD"),
        ("forex", "USD/CAD", "C:USDCAD"),
        ("forex", "EUR-USD", "C:EURUSD"),
    ],
)
def test_rest_ticker(market: str, symbol: str, expected: str) -> None:
    assert rest_ticker(market, symbol) == expected


@pytest.mark.parametrize(
    ("market", "symbols", "expected"),
    [
        ("stocks", ["AAPL", "MSFT"], "AM.AAPL,AM.MSFT"),
        ("stocks", [" AAPL", "AAPL", "MSFT "], "AM.AAPL,AM.MSFT"),
        ("stocks", ["*"], "AM.*"),
        ("stocks", ["AAPL", "*"], "AM.*"),
        ("options", ["O:SPY251219C00650000"], "AM.O:SPY251219C00650000"),
        ("indices", ["I:SPX"], "AM.I:SPX"),
        ("crypto", ["BTC-USD", "ETH-USD"], "XA.BTC-USD,XA.ETH-USD"),
        ("crypto", ["X:BTCUSD", "eth-usd", "BTC/USD"], "XA.BTC-USD,XA.ETH-USD"),
        ("forex", ["*"], "CA.*"),
        ("forex", ["C:EURUSD", "usd-cad", "EUR/USD"], "CA.EUR/USD,CA.USD/CAD"),
        ("stocks", ["aapl", "AMpB"], "AM.AAPL,AM.AMpB"),
    ],
)
def test_subscribe_params(market: str, symbols: list[str], expected: str) -> None:
    assert subscribe_params(market, symbols) == expected


def test_config_masks_key_and_validates() -> None:
    cfg = PolygonConfig(api_key=KEY)
    assert KEY not in repr(cfg) and KEY not in str(cfg) and "api_key='***'" not in repr(KEY)
    assert "api_key=***" in repr(cfg)
    assert cfg.url == "wss://socket.massive.com/stocks"
    with pytest.raises(ConfigError, match="market 'bonds'"):
        PolygonConfig(api_key=KEY, market="bonds")
    with pytest.raises(ConfigError, match="api_key is empty"):
        PolygonConfig(api_key=" ")
    with pytest.raises(ConfigError, match="ws_url"):
        PolygonConfig(api_key=KEY, ws_url="https://socket.massive.com")
    with pytest.raises(ConfigError, match="backoff"):
        PolygonConfig(api_key=KEY, backoff_initial_s=5, backoff_max_s=1)


def test_retry_after_parsing() -> None:
    clock = ManualClock(1_700_000_000_000)
    assert _retry_after_s("3", clock) == 3.0
    assert _retry_after_s(None, clock) is None
    assert _retry_after_s("soon", clock) is None
    # an HTTP date 7 s after the (injected) clock's now
    assert _retry_after_s("Tue, 14 Nov 2023 22:13:27 GMT", clock) == pytest.approx(7.0)


def test_stats_lag() -> None:
    stats = FeedStats()
    assert stats.lag_ms(NOW) is None
    stats.last_bar_end_ms = NOW - 1500
    assert stats.lag_ms(NOW) == 1500


# -- unit tests: REST backfill over an httpx MockTransport ----------------------------------------


def mock_http(
    handler: Callable[[httpx.Request], httpx.Response], calls: list[httpx.Request]
) -> httpx.AsyncClient:
    def record(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return handler(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(record))


def backfiller(
    http: httpx.AsyncClient, market: str, published: list[Bar], stats: FeedStats
) -> Backfiller:
    clock = ManualClock(NOW)
    client = AggsClient(
        http, "https://rest.example", KEY, clock, stats, backoff_initial_s=0.01, backoff_max_s=0.02
    )

    async def publish(bars: list[Bar]) -> None:
        published.extend(bars)

    return Backfiller(client, market, clock, stats, publish, batch_max=2)


@pytest.mark.parametrize(
    ("market", "symbol", "ticker"),
    [("crypto", "BTC-USD", "X:BTCUSD"), ("forex", "USD/CAD", "C:USDCAD"), ("stocks", "F", "F")],
)
async def test_backfill_maps_ticker_and_keeps_ws_symbol(
    market: str, symbol: str, ticker: str
) -> None:
    calls: list[httpx.Request] = []
    results = [rest_result(ticker, minute(i)) for i in range(5)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ticker": ticker, "status": "OK", "results": results})

    stats, published = FeedStats(), list[Bar]()
    async with mock_http(handler, calls) as http:
        count = await backfiller(http, market, published, stats).backfill(
            symbol, minute(0), minute(5)
        )
    assert count == 5 and stats.backfill_bars == 5 and stats.backfill_requests == 1
    assert [bar.symbol for bar in published] == [symbol] * 5
    assert [bar.t for bar in published] == [minute(i) for i in range(5)]
    (request,) = calls
    assert request.url.path == f"/v2/aggs/ticker/{ticker}/range/1/minute/{minute(0)}/{minute(5)}"
    assert dict(request.url.params) == {"adjusted": "true", "sort": "asc", "limit": "50000"}
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert "apiKey" not in str(request.url)


async def test_backfill_counts_bad_results_and_empty_pages() -> None:
    calls: list[httpx.Request] = []
    pages = [
        {"status": "OK", "results": [rest_result("F", minute(0)), {"t": minute(1)}, "x"],
         "next_url": "https://api.massive.com/v2/next?cursor=abc&apiKey=LEAK"},
        {"status": "OK", "resultsCount": 0},
    ]  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[len(calls) - 1])

    stats, published = FeedStats(), list[Bar]()
    async with mock_http(handler, calls) as http:
        await backfiller(http, "stocks", published, stats).backfill("F", minute(0), minute(3))
    assert published == [rest_bar("F", minute(0))]
    assert stats.rejected == {"missing_field": 1, "result_not_object": 1}
    assert [str(c.url) for c in calls][1] == "https://rest.example/v2/next?cursor=abc"


async def test_backfill_gives_up_after_bounded_5xx_and_skips_other_4xx(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if "BAD" in request.url.path:
            return httpx.Response(400, json={"status": "ERROR", "error": "bad ticker BAD"})
        return httpx.Response(503, text="upstream unavailable")

    stats, published = FeedStats(), list[Bar]()
    async with mock_http(handler, calls) as http:
        filler = backfiller(http, "stocks", published, stats)
        assert await filler.backfill("F", minute(0), minute(3)) == 0
        assert await filler.backfill("BAD", minute(0), minute(3)) == 0
    assert len(calls) == 5 + 1  # 5 attempts for the 503, none repeated for the 400
    assert stats.backfill_errors == {"http_503": 1, "http_400": 1}
    assert "bad ticker BAD" in caplog.text  # the 4xx body is logged
    assert published == []


async def test_backfill_retries_transport_errors() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"results": [rest_result("F", minute(1))]})

    stats, published = FeedStats(), list[Bar]()
    async with mock_http(handler, calls) as http:
        await backfiller(http, "stocks", published, stats).backfill("F", minute(0), minute(3))
    assert published == [rest_bar("F", minute(1))] and len(calls) == 3
    assert not stats.backfill_errors


async def test_backfiller_merges_requests_and_bounds_concurrency() -> None:
    calls: list[httpx.Request] = []
    active = peak = 0
    stats, published = FeedStats(), list[Bar]()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        calls.append(request)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return httpx.Response(200, json={"status": "OK"})

    clock = ManualClock(NOW)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = AggsClient(http, "https://rest.example", KEY, clock, stats)

        async def publish(bars: list[Bar]) -> None:
            published.extend(bars)

        filler = Backfiller(client, "stocks", clock, stats, publish, concurrency=3)
        filler.request("AAPL", minute(5) + 123)
        filler.request("AAPL", minute(2))  # merged: the earliest start wins
        filler.request("AAPL", minute(9))
        for i in range(10):
            filler.request(f"S{i}", minute(0))
        await filler.start()
        await asyncio.wait_for(filler.join(), 5)
        await filler.stop()
    aapl = [c for c in calls if "/AAPL/" in c.url.path]
    assert len(aapl) == 1 and f"/{minute(2)}/{NOW}" in aapl[0].url.path
    assert len(calls) == 11 and peak == 3


# -- WebSocket client against the fake server ------------------------------------------------------


@pytest.mark.parametrize(
    ("market", "symbols", "params"),
    [
        ("stocks", ["AAPL", "MSFT"], "AM.AAPL,AM.MSFT"),
        ("crypto", ["*"], "XA.*"),
        ("forex", ["USD/CAD", "EUR/USD"], "CA.USD/CAD,CA.EUR/USD"),
        ("indices", ["I:SPX"], "AM.I:SPX"),
    ],
)
async def test_handshake_auth_then_one_subscribe(
    fake: FakePolygon, feeds: list[PolygonFeed], market: str, symbols: list[str], params: str
) -> None:
    feed = await started(feeds, config(fake, market=market, symbols=symbols), MemoryBus())
    await feed.wait_connected(5)
    (conn,) = fake.connections
    assert conn.path == f"/{market}"
    await until(lambda: feed.stats.status_messages["success"] == len(params.split(",")))
    await asyncio.sleep(0.1)  # nothing else may follow
    assert conn.messages == [
        {"action": "auth", "params": KEY},
        {"action": "subscribe", "params": params},
    ]
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    assert feed.stats.status_messages["connected"] == 1
    assert feed.stats.status_messages["auth_success"] == 1
    assert feed.failed is None and feed.connected


async def test_bars_published_match_what_the_server_sent(
    fake: FakePolygon, feeds: list[PolygonFeed]
) -> None:
    frames = [
        frame(am_event("AAPL", minute(0)), am_event("MSFT", minute(0))),
        frame(am_event("AAPL", minute(1))),
        frame(
            am_event("MSFT", minute(1)), am_event("AAPL", minute(2)), am_event("MSFT", minute(2))
        ),
    ]
    fake.scripts.append(keep_open(*frames))
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    feed = await started(feeds, config(fake), bus)
    bars = await collect(sub, 6)
    assert bars == [
        live_bar("AAPL", minute(0)), live_bar("MSFT", minute(0)), live_bar("AAPL", minute(1)),
        live_bar("MSFT", minute(1)), live_bar("AAPL", minute(2)), live_bar("MSFT", minute(2)),
    ]  # fmt: skip
    stats = feed.stats
    assert stats.bars_published == 6 and not stats.rejected
    assert stats.frames == 3 + 4  # connected, auth_success, 2 subscribe acks, 3 data frames
    assert stats.last_bar_end_ms == minute(3)
    assert stats.lag_ms(minute(3) + 250) == 250


async def test_crypto_pairs_published_with_ws_symbol(
    fake: FakePolygon, feeds: list[PolygonFeed]
) -> None:
    fake.scripts.append(keep_open(frame(am_event("BTC-USD", minute(0), ev="XA"))))
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    await started(feeds, config(fake, market="crypto", symbols=["*"]), bus)
    assert await collect(sub, 1) == [live_bar("BTC-USD", minute(0))]


async def test_batches_are_capped_at_batch_max(fake: FakePolygon, feeds: list[PolygonFeed]) -> None:
    fake.scripts.append(keep_open(frame(*(am_event(f"S{i}", minute(0)) for i in range(7)))))
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    await started(feeds, config(fake, symbols=["*"], batch_max=3), bus)
    sizes: list[int] = []
    async with asyncio.timeout(5):
        while sum(sizes) < 7:
            sizes.append(len((await sub.get())[1]))
    assert sizes == [3, 3, 1]


async def test_malformed_frames_and_bad_events_are_counted(
    fake: FakePolygon, feeds: list[PolygonFeed], caplog: pytest.LogCaptureFixture
) -> None:
    good = [am_event("AAPL", minute(i)) for i in range(4)]
    frames = [
        "not json {",
        '"a bare string"',
        frame(
            1,
            good[0],
            am_event("AAPL", minute(9), h=90.0),  # high below low
            {"ev": "T", "sym": "AAPL", "p": 1.0},  # a trade, not a minute aggregate
            {k: v for k, v in am_event("MSFT", minute(1)).items() if k != "c"},
            am_event("MSFT", minute(1), s=minute(1) + 5, e=minute(2) + 5),  # unaligned
            status("error", "subscription refused"),
            good[1],
        ),
        frame(am_event("MSFT", minute(2), ev="A", e=minute(2) + 1000), good[2]),
        orjson.dumps(good[3]).decode(),  # a bare object instead of an array: tolerated
    ]
    fake.scripts.append(keep_open(*frames))
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    feed = await started(feeds, config(fake), bus)
    bars = await collect(sub, 4)
    assert bars == [live_bar("AAPL", minute(i)) for i in range(4)]
    assert feed.stats.rejected == {
        "malformed_json": 1,
        "frame_not_array": 1,
        "event_not_object": 1,
        "high_below_low": 1,
        "not_a_minute_aggregate": 2,
        "missing_field": 1,
        "time_not_minute_aligned": 1,
    }
    assert feed.stats.status_messages["error"] == 1
    assert "subscription refused" in caplog.text
    assert feed.connected  # bad input never costs the connection


async def test_auth_failed_is_fatal_and_clear(feeds: list[PolygonFeed]) -> None:
    server = FakePolygon(key="some-other-key")
    await server.start()
    try:
        feed = await started(feeds, config(server), MemoryBus())
        with pytest.raises(AuthError, match="authentication failed") as caught:
            await feed.wait_connected(5)
        assert "API key" in str(caught.value) and KEY not in str(caught.value)
        assert feed.failed is caught.value
        await asyncio.wait_for(server.connections[0].closed.wait(), 5)
        assert server.connections[0].close_code == 1000
        await asyncio.sleep(0.3)  # backoff is 0.02 s: a reconnect would have happened by now
        assert len(server.connections) == 1
        assert feed.stats.reconnects == 0 and feed.stats.connects == 0
        with pytest.raises(AuthError):
            await feed.wait_connected(1)
    finally:
        await server.stop()


async def test_reconnects_after_1011_and_tcp_drop_with_growing_backoff(
    fake: FakePolygon, feeds: list[PolygonFeed], caplog: pytest.LogCaptureFixture
) -> None:
    fake.scripts += [
        then_close(1011, frame(am_event("AAPL", minute(0)))),
        then_drop(frame(am_event("AAPL", minute(1)))),
        keep_open(frame(am_event("AAPL", minute(2)))),
    ]
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    feed = await started(feeds, config(fake, backoff_initial_s=0.05, backoff_max_s=5.0), bus)
    seen = await collect_keys(sub, keys(["AAPL"], range(3)))
    for i in range(3):  # one bar from each connection
        assert seen[("AAPL", minute(i))] == [live_bar("AAPL", minute(i))]
    await until(lambda: feed.stats.connects == 3)
    assert len(fake.connections) == 3
    for conn in fake.connections:  # re-auth and one identical subscribe on every connection
        assert conn.messages[:2] == [
            {"action": "auth", "params": KEY},
            {"action": "subscribe", "params": "AM.AAPL,AM.MSFT"},
        ]
    assert feed.stats.reconnects == 2
    ceilings = [ceiling for ceiling, _ in feed.stats.reconnect_delays]
    assert ceilings == [0.05, 0.1]  # exponential growth between short-lived connections
    assert all(0 <= delay <= ceiling for ceiling, delay in feed.stats.reconnect_delays)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("server closed with 1011" in m for m in warnings)
    assert any("without a close frame (1006)" in m for m in warnings)


async def test_backoff_resets_after_a_stable_connection(
    fake: FakePolygon, feeds: list[PolygonFeed]
) -> None:
    fake.scripts += [
        then_close(1011),
        then_close(1011),
        after(0.4, then_close(1011)),  # lives longer than backoff_max_s
        keep_open(),
    ]
    feed = await started(
        feeds, config(fake, backoff_initial_s=0.03, backoff_max_s=0.3), MemoryBus()
    )
    await until(lambda: feed.stats.connects == 4, what="4 connections")
    assert [c for c, _ in feed.stats.reconnect_delays] == [0.03, 0.06, 0.03]


async def test_backoff_grows_while_refused_then_connects(feeds: list[PolygonFeed]) -> None:
    port = free_port()
    server = FakePolygon()
    server.port = port  # nothing listens yet: connection refused
    feed = await started(
        feeds, config(server, backoff_initial_s=0.01, backoff_max_s=0.08), MemoryBus()
    )
    await until(lambda: feed.stats.reconnects >= 5, what="5 refused attempts")
    ceilings = [c for c, _ in feed.stats.reconnect_delays][:5]
    assert ceilings == [0.01, 0.02, 0.04, 0.08, 0.08]  # capped at backoff_max_s
    assert feed.stats.connects == 0 and not feed.connected
    with pytest.raises(TimeoutError):
        await feed.wait_connected(0.05)
    await server.start(port)
    try:
        await feed.wait_connected(5)
        assert feed.stats.connects == 1 and len(server.connections) == 1
    finally:
        await feed.stop()
        await server.stop()


async def test_stalled_server_ping_timeout_reconnects(
    fake: FakePolygon, feeds: list[PolygonFeed], caplog: pytest.LogCaptureFixture
) -> None:
    fake.scripts += [stall(fake), keep_open()]
    feed = await started(feeds, config(fake, ping_interval_s=0.1, ping_timeout_s=0.2), MemoryBus())
    started_at = time.monotonic()
    await until(lambda: feed.stats.connects == 2, within=15, what="reconnect after ping timeout")
    assert time.monotonic() - started_at < 3  # ping 0.1 s + timeout 0.2 s + close, not minutes
    assert feed.stats.reconnects == 1
    assert "closed by the client with 1011 (keepalive ping timeout)" in str(
        [r.getMessage() for r in caplog.records]
    )
    assert len(fake.connections) == 2 and fake.connections[0].subscribed.is_set()


async def test_max_connections_is_logged_and_backs_off(
    fake: FakePolygon, feeds: list[PolygonFeed], caplog: pytest.LogCaptureFixture
) -> None:
    message = "Maximum number of websocket connections exceeded."
    fake.scripts += [
        then_close(1011),
        after(0.4, then_close(1008, frame(status("max_connections", message)))),
        keep_open(),
    ]
    feed = await started(
        feeds, config(fake, backoff_initial_s=0.03, backoff_max_s=0.3), MemoryBus()
    )
    await until(lambda: feed.stats.connects == 3, what="3 connections")
    assert feed.stats.status_messages["max_connections"] == 1
    assert "another connection is using this API key" in caplog.text and message in caplog.text
    # the evicted connection lived longer than backoff_max_s, yet the backoff did not reset
    assert [c for c, _ in feed.stats.reconnect_delays] == [0.03, 0.06]
    assert "1008" in caplog.text


async def test_gap_backfill_after_reconnect_covers_every_minute(
    fake: FakePolygon, feeds: list[PolygonFeed]
) -> None:
    symbols = ["AAPL", "MSFT"]
    for s in symbols:  # the REST truth: every minute 0..19
        fake.rest_bars[s] = [rest_result(s, minute(i)) for i in range(20)]
    consumed = asyncio.Event()
    fake.scripts += [  # minutes 0-7 live, the connection dies, minutes 12-19 live: 8-11 missed
        then_close(1011, *(frame(*(am_event(s, minute(i)) for s in symbols)) for i in range(8)),
                   wait=consumed),
        keep_open(*(frame(*(am_event(s, minute(i)) for s in symbols)) for i in range(12, 20))),
    ]  # fmt: skip
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    clock = ManualClock(NOW)
    feed = await started(feeds, config(fake, symbols=symbols), bus, clock)
    first = await collect(sub, 16)
    assert {(b.symbol, b.t) for b in first} == keys(symbols, range(8))
    consumed.set()
    seen = await collect_keys(sub, keys(symbols, range(20)))
    await asyncio.wait_for(feed.backfill_idle(), 5)
    assert seen.keys() >= keys(symbols, range(20))  # the union covers every minute
    for s in symbols:
        for i in range(8, 12):  # the missed minutes came from REST
            assert seen[(s, minute(i))] == [rest_bar(s, minute(i))]
        calls = fake.rest_calls_for(s)
        start = minute(7) - 15 * MINUTE_MS  # last bar seen minus 15 minutes of late corrections
        assert calls[0].path == f"/v2/aggs/ticker/{s}/range/1/minute/{start}/{NOW}"
        assert calls[0].query == {"adjusted": ["true"], "sort": ["asc"], "limit": ["50000"]}
        assert len(calls) == math.ceil(20 / fake.page_size)  # every page followed
        assert [c.query.get("cursor") for c in calls[1:]] == [[str(n)] for n in range(3, 20, 3)]
        assert all(c.authorization == f"Bearer {KEY}" for c in calls)
    # REST bars for minutes that arrived live after the request was issued are dropped (a live
    # correction is newer than a REST answer in flight); the rest were published.
    assert feed.stats.backfill_bars + feed.live_register.superseded == 40
    assert feed.stats.backfill_bars >= 8 * len(symbols) // 2 and feed.stats.reconnects == 1
    assert not feed.stats.backfill_errors


async def test_startup_lookback_for_configured_symbols(
    fake: FakePolygon, feeds: list[PolygonFeed]
) -> None:
    fake.rest_bars["AAPL"] = [rest_result("AAPL", minute(i)) for i in range(-70, 20)]
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    feed = await started(
        feeds, config(fake, symbols=["AAPL"], backfill_lookback_min=60), bus, ManualClock(NOW)
    )
    seen = await collect_keys(sub, {("AAPL", NOW - i * MINUTE_MS) for i in range(1, 61)})
    await asyncio.wait_for(feed.backfill_idle(), 5)
    assert min(t for _, t in seen) == NOW - 60 * MINUTE_MS
    assert fake.rest_calls_for("AAPL")[0].path.endswith(f"/{NOW - 60 * MINUTE_MS}/{NOW}")


async def test_all_symbols_backfill_each_symbol_when_first_seen(
    fake: FakePolygon, feeds: list[PolygonFeed]
) -> None:
    fake.rest_bars["X:BTCUSD"] = [rest_result("BTC-USD", minute(i)) for i in range(15, 20)]
    fake.page_size = 100
    fake.scripts.append(
        keep_open(*(frame(am_event("BTC-USD", minute(i), ev="XA")) for i in range(18, 20)))
    )
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    cfg = config(fake, market="crypto", symbols=["*"], backfill_lookback_min=5)
    feed = await started(feeds, cfg, bus)
    seen = await collect_keys(sub, keys(["BTC-USD"], range(15, 20)))
    await asyncio.wait_for(feed.backfill_idle(), 5)
    assert seen[("BTC-USD", minute(16))] == [rest_bar("BTC-USD", minute(16))]
    (call,) = fake.rest_calls  # once per symbol, not once per bar
    assert call.path == f"/v2/aggs/ticker/X:BTCUSD/range/1/minute/{NOW - 5 * MINUTE_MS}/{NOW}"


async def test_rest_429_with_retry_after_is_retried(
    fake: FakePolygon, caplog: pytest.LogCaptureFixture
) -> None:
    fake.rest_bars["AAPL"] = [rest_result("AAPL", minute(i)) for i in range(5)]
    fake.rest_faults.append((429, {"Retry-After": "1"}, '{"status":"ERROR","error":"slow down"}'))
    stats, published = FeedStats(), list[Bar]()
    async with httpx.AsyncClient(timeout=5) as http:
        client = AggsClient(http, fake.rest_url, KEY, ManualClock(NOW), stats,
                            backoff_initial_s=0.01, backoff_max_s=0.02)  # fmt: skip

        async def publish(bars: list[Bar]) -> None:
            published.extend(bars)

        filler = Backfiller(client, "stocks", ManualClock(NOW), stats, publish)
        await filler.backfill("AAPL", minute(0), minute(5))
        assert stats.backfill_requests == 1 + 2  # 429, then 2 pages
        # the progress counters: one wait for the rate limit, of the Retry-After's second
        assert stats.backfill_rate_limited == 1 and stats.backfill_wait_s == pytest.approx(1.0)
        assert stats.backfill_symbols_requested == stats.backfill_symbols_done == 0
        filler.request("AAPL", minute(0))
        filler.request("AAPL", minute(1))  # merged into the pending fetch
        filler.request("MSFT", minute(0))
        await filler.start()
        await filler.join()
        await filler.stop()
        assert (stats.backfill_symbols_requested, stats.backfill_symbols_done) == (2, 2)
    first, retry = fake.rest_calls[:2]
    assert first.path == retry.path and retry.at - first.at >= 0.95  # Retry-After, not 0.01 s
    assert published[:5] == [rest_bar("AAPL", minute(i)) for i in range(5)]
    assert not stats.backfill_errors and stats.backfill_rate_limited == 1
    assert "Retry-After" in caplog.text and "429" in caplog.text


@pytest.mark.parametrize(
    ("code", "body", "hint"),
    [
        (401, '{"status":"ERROR","request_id":"r1","error":"Unknown API Key"}', "API key"),
        (403, '{"status":"NOT_AUTHORIZED","message":"You are not entitled to this data."}',
         "plan"),
    ],
)  # fmt: skip
async def test_rest_401_403_reported_clearly_and_feed_keeps_running(
    fake: FakePolygon,
    feeds: list[PolygonFeed],
    caplog: pytest.LogCaptureFixture,
    code: int,
    body: str,
    hint: str,
) -> None:
    fake.rest_faults.append((code, {}, body))
    fake.scripts.append(keep_open(frame(am_event("AAPL", minute(19)))))
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    feed = await started(feeds, config(fake, symbols=["AAPL"], backfill_lookback_min=30), bus)
    assert await collect(sub, 1) == [live_bar("AAPL", minute(19))]
    await asyncio.wait_for(feed.backfill_idle(), 5)
    assert feed.stats.backfill_errors == {f"http_{code}": 1}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(code) in errors[0] and hint in errors[0] and "AAPL" in errors[0]
    assert orjson.loads(body).get("error", orjson.loads(body).get("message")) in errors[0]
    assert len(fake.rest_calls) == 1  # not retried
    assert feed.connected and feed.failed is None


async def test_api_key_never_logged(
    fake: FakePolygon, feeds: list[PolygonFeed], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.rest_bars["AAPL"] = [rest_result("AAPL", minute(i)) for i in range(10, 20)]
    fake.next_url_extra = f"&apiKey={KEY}"  # a next_url that (wrongly) carries the key
    fake.rest_faults += [
        (429, {"Retry-After": "0"}, '{"status":"ERROR","error":"too many"}'),
        (500, {}, f'{{"error":"echoing your key {KEY}"}}'),
    ]
    fake.scripts += [
        then_close(1011, frame(status("error", f"bad key {KEY}"), am_event("AAPL", minute(0)))),
        keep_open(frame(am_event("AAPL", minute(1)))),
    ]
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], overflow="block")
    feed = await started(feeds, config(fake, symbols=["AAPL"], backfill_lookback_min=10), bus)
    await collect_keys(sub, keys(["AAPL"], [0, 1, *range(10, 20)]))
    await until(lambda: feed.stats.connects == 2)
    await asyncio.wait_for(feed.backfill_idle(), 5)
    assert all("apiKey" not in call.query for call in fake.rest_calls)
    assert any("cursor" in call.query for call in fake.rest_calls)  # next_url was followed
    assert feed.stats.backfill_requests >= 6
    # websockets' DEBUG frame dumps went through the redacting logger (and did show the auth)
    assert any('"action":"auth"' in r.getMessage() for r in caplog.records)
    assert any("/v2/aggs/ticker/AAPL" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert KEY not in record.getMessage(), record.name
    assert KEY not in caplog.text
    assert KEY not in repr(feed) and KEY not in repr(feed.config) and KEY not in repr(feed.stats)


async def test_full_queue_is_counted_then_waits_without_losing_frames(
    fake: FakePolygon, feeds: list[PolygonFeed], caplog: pytest.LogCaptureFixture
) -> None:
    fake.scripts.append(keep_open(*(frame(am_event("AAPL", minute(i))) for i in range(20))))
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], maxsize=1, overflow="block")
    feed = await started(feeds, config(fake, queue_frames=2), bus)
    await until(lambda: feed.stats.queue_full_events >= 1, what="a full frame queue")
    assert feed.stats.queue_high_water == 2
    bars = await collect(sub, 20)  # the subscriber catches up: nothing was dropped
    assert bars == [live_bar("AAPL", minute(i)) for i in range(20)]
    full = [r for r in caplog.records if "frame queue full" in r.getMessage()]
    assert full and full[0].levelno == logging.WARNING
    assert len(full) == 1  # rate-limited
    assert feed.connected


async def test_stop_closes_with_1000_and_leaves_no_tasks(fake: FakePolygon) -> None:
    before = asyncio.all_tasks()
    fake.rest_bars["AAPL"] = [rest_result("AAPL", minute(i)) for i in range(3)]
    feed = PolygonFeed(config(fake, symbols=["AAPL"], backfill_lookback_min=5), MemoryBus(),
                       ManualClock(NOW))  # fmt: skip
    await feed.start()
    await feed.wait_connected(5)
    assert {t.get_name() for t in asyncio.all_tasks() - before} >= {
        "polygon-ws",
        "polygon-parse",
        "polygon-backfill-0",
        "polygon-backfill-7",
    }
    await asyncio.wait_for(feed.stop(), 10)
    conn = fake.connections[0]
    await asyncio.wait_for(conn.closed.wait(), 5)
    assert conn.close_code == 1000
    await fake.stop()  # the server's own connection tasks end with it
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []
    assert not feed.connected
    await asyncio.sleep(0.1)
    assert len(fake.connections) == 1  # no reconnect after stop


async def test_stop_while_backing_off_is_prompt(feeds: list[PolygonFeed]) -> None:
    server = FakePolygon()
    server.port = free_port()  # refused forever
    feed = await started(
        feeds, config(server, backoff_initial_s=5.0, backoff_max_s=10.0), MemoryBus()
    )
    await until(lambda: feed.stats.reconnects >= 1)
    started_at = time.monotonic()
    await asyncio.wait_for(feed.stop(), 5)
    assert time.monotonic() - started_at < 1.0


async def test_stop_is_bounded_when_downstream_is_stuck(
    fake: FakePolygon, feeds: list[PolygonFeed]
) -> None:
    fake.scripts.append(keep_open(*(frame(am_event("AAPL", minute(i % 20))) for i in range(400))))
    bus = MemoryBus()
    bus.subscribe([RAW_TOPIC], maxsize=1, overflow="block")  # never read
    feed = await started(feeds, config(fake, queue_frames=2), bus)
    await until(lambda: feed.stats.queue_full_events >= 1, what="a full frame queue")
    started_at = time.monotonic()
    await asyncio.wait_for(feed.stop(), 10)
    assert time.monotonic() - started_at < 4.5  # close and drain are bounded (2 s each, parallel)
    await asyncio.wait_for(fake.connections[0].closed.wait(), 5)
    assert fake.connections[0].close_code == 1000
