"""The REST surface over real servers: latest candles, readiness, metrics, API keys, CORS,
the OpenAPI and AsyncAPI documents.

Most tests use `speedlayer api` processes (conftest.ApiServer) on a SQLite file filled with
`speedlayer replay` from recent synthetic bars, like tests/integration/api/test_api.py. Tests
that need what only `speedlayer up` has in-process (a candle bus, the pipeline runner, a live
hub) or a failing store run the same app (`create_app`) in a real uvicorn server on a thread
(`ThreadServer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import jsonschema_rs
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from api.app import create_app
from ingest.synthetic import RandomWalk, write_csv
from speedlayer.bus.base import RAW_TOPIC
from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.errors import ConfigurationError
from speedlayer.models import Bar
from speedlayer.store.sqlite import SQLiteStore
from tests.conftest import SPEEDLAYER, ApiServer, free_port, run_cli

T = TypeVar("T")
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
MINUTES = 3 * 60
SYMBOLS = ["AAPL", "MSFT", "BRK.B", "BTC-USD"]
INTERVALS = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
TABLES = {
    "1m": "speed_layer_ohlcv_1min", "5m": "speed_layer_ohlcv_5min",
    "15m": "speed_layer_ohlcv_15min", "30m": "speed_layer_ohlcv_30min",
    "1h": "speed_layer_ohlcv_1h", "2h": "speed_layer_ohlcv_2h", "4h": "speed_layer_ohlcv_4h",
}  # fmt: skip
CANDLE_KEYS = {
    "symbol", "interval", "timestamp", "open", "high", "low", "close", "volume", "vwap",
    "trades", "bars", "final", "revision", "ttl",
}  # fmt: skip
ORIGIN = "https://dash.example"
OTHER_ORIGIN = "https://evil.example"
KEYS = ("sekrit-alpha-7c1f", "sekrit-beta-93d2")
WRONG_KEY = "wrong-key-0b5e"

Candle = dict[str, Any]


# -- fixtures ------------------------------------------------------------------------------------


def replayed_walk(tmp: Path, symbols: list[str], minutes: int, seed: int) -> Path:
    """A database made by `speedlayer replay` of a random walk of ``symbols`` over the
    ``minutes`` before the current hour."""
    now_ms = int(time.time() * 1000)
    end_ms = now_ms - now_ms % HOUR_MS
    csv_path = tmp / "bars.csv"
    write_csv(
        RandomWalk(symbols, seed=seed).bars(end_ms - minutes * MINUTE_MS, minutes), str(csv_path)
    )
    path = tmp / "api.db"
    run_cli("replay", str(csv_path), "--db", str(path))
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return replayed_walk(tmp_path_factory.mktemp("api_more"), SYMBOLS, MINUTES, seed=23)


@pytest.fixture(scope="module")
def server(db: Path) -> Iterator[ApiServer]:
    """`speedlayer api`, auth off, CORS for ORIGIN."""
    srv = ApiServer(db, env={"SPEEDLAYER_CORS_ORIGINS": ORIGIN})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


class LoggedApiServer(ApiServer):
    """`speedlayer api` with stdout and stderr (uvicorn's access log included) in a file."""

    def __init__(self, db: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(db, env)
        self.log_path = log_path

    def start(self, timeout: float = 30) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [SPEEDLAYER, "api", "--db", str(self.db), "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"speedlayer api exited: {self.log_path.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("speedlayer api did not become healthy in time")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def secured(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedApiServer]:
    """`speedlayer api` with two API keys, no CORS, log level info (access log on)."""
    log_path = tmp_path_factory.mktemp("secured") / "server.log"
    env = {"SPEEDLAYER_API_KEYS": ",".join(KEYS), "SPEEDLAYER_LOG_LEVEL": "info"}
    srv = LoggedApiServer(db, log_path, env)
    srv.start()
    yield srv
    srv.stop()


class ThreadServer:
    """The app in a real uvicorn server on a thread with its own event loop. ``build`` runs on
    that loop and returns the app; resources it opens on ``stack`` close when the server stops."""

    def __init__(self, build: Callable[[contextlib.AsyncExitStack], Awaitable[FastAPI]]) -> None:
        self.build = build
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: uvicorn.Server | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self.error = exc

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            app = await self.build(stack)
            config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
            self.server = uvicorn.Server(config)
            await self.server.serve()

    def start(self, timeout: float = 30) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"server thread ended: {self.error!r}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError("server did not become healthy in time")

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the server's loop (to reach the bus, the hub, ...)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class LiveStack:
    server: ThreadServer
    bus: MemoryBus
    app: FastAPI

    @property
    def resources(self) -> Any:
        return self.app.state.resources

    def publish(self, bars: list[Bar]) -> None:
        """Publish raw bars and wait until the pipeline processed them."""
        runner = self.resources.pipeline
        before = runner.bars_in
        self.server.call(self.bus.publish(RAW_TOPIC, bars))
        deadline = time.monotonic() + 30
        while runner.bars_in < before + len(bars):
            assert time.monotonic() < deadline, "the pipeline did not process the bars"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """What `speedlayer up` builds, minus the feed: bus -> pipeline runner -> store -> API + hub."""
    from processors.pipeline import CandlePipeline
    from processors.resampler import Resampler
    from processors.runner import PipelineRunner

    settings = Settings(db=tmp_path_factory.mktemp("live") / "live.db")
    holder: dict[str, Any] = {}

    async def build(stack: contextlib.AsyncExitStack) -> FastAPI:
        clock = SystemClock()
        bus = await stack.enter_async_context(MemoryBus())
        store = await stack.enter_async_context(
            SQLiteStore(settings.db, settings.interval_set, clock)
        )
        resampler = Resampler(
            settings.interval_set,
            clock,
            grace_ms=settings.grace_ms,
            lateness_ms=settings.lateness_ms,
        )
        runner = PipelineRunner(
            CandlePipeline(resampler, store), bus, clock, tick_s=0.2, stats_every_s=3600
        )
        await runner.start()
        stack.push_async_callback(runner.stop)
        app = create_app(settings, store=store, clock=clock, bus=bus, pipeline=runner)
        holder.update(bus=bus, app=app)
        return app

    srv = ThreadServer(build).start()
    try:
        yield LiveStack(srv, holder["bus"], holder["app"])
    finally:
        srv.stop()


# -- helpers -------------------------------------------------------------------------------------


def latest_path(symbol: str) -> str:
    return "/candles/" + quote(symbol, safe="") + "/latest"


def stored_newest(db: Path, symbol: str, interval: str) -> Candle | None:
    """The store's newest candle, read from the SQLite file directly."""
    conn = sqlite3.connect(db)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            f"SELECT * FROM {TABLES[interval]} WHERE symbol = ? ORDER BY timestamp DESC LIMIT 1",
            (symbol,),
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    out = dict(row)
    out["final"] = bool(out["final"])
    return out


def assert_error(resp: httpx.Response, status: int, code: str, *needles: str) -> str:
    assert resp.status_code == status, f"{resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].split(";")[0].strip() == "application/json"
    body = resp.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    message: str = body["message"]
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    return message


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, parsed with prometheus_client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(text: str, name: str, **labels: str) -> float | None:
    return parse_metrics(text).get((name, frozenset(labels.items())))


# -- latest --------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", INTERVALS)
def test_latest_equals_the_stores_newest(client: httpx.Client, db: Path, interval: str) -> None:
    for symbol in SYMBOLS:
        resp = client.get(latest_path(symbol), params={"interval": interval})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == CANDLE_KEYS
        assert body == stored_newest(db, symbol, interval)


def test_latest_default_interval_and_alias(client: httpx.Client, db: Path) -> None:
    assert client.get(latest_path("AAPL")).json() == stored_newest(db, "AAPL", "1m")
    assert client.get(latest_path("AAPL"), params={"interval": "60min"}).json() == stored_newest(
        db, "AAPL", "1h"
    )


def test_latest_unknown_symbol_is_404(client: httpx.Client) -> None:
    resp = client.get(latest_path("ZZZZ"), params={"interval": "15m"})
    assert_error(resp, 404, "not_found", "ZZZZ", "15m")


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("/candles/AAPL/latest", {"interval": "7x"}, "interval"),
        ("/candles/AAPL/latest", {"interval": ""}, "interval"),
        ("/candles/%24BAD/latest", {}, "symbol"),
    ],
)
def test_latest_bad_input_is_422(
    client: httpx.Client, path: str, params: dict[str, str], needle: str
) -> None:
    assert_error(client.get(path, params=params), 422, "invalid_parameter", needle)


def test_multi_latest_equals_single_latest(client: httpx.Client, db: Path) -> None:
    # X:BTCUSD and btc-usd name BTC-USD, aapl names AAPL (docs/design.md#symbols)
    wanted = ["MSFT", "AAPL", "ZZZZ", "X:BTCUSD", "aapl", "BRK.B", "btc-usd"]
    resp = client.get("/candles", params={"symbols": ",".join(wanted), "interval": "15m"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"interval", "candles", "missing"}
    assert body["interval"] == "15m"
    # request order, duplicates once, unknown symbols in `missing`
    assert [c["symbol"] for c in body["candles"]] == ["MSFT", "AAPL", "BTC-USD", "BRK.B"]
    assert body["missing"] == ["ZZZZ"]
    for candle in body["candles"]:
        assert candle == stored_newest(db, candle["symbol"], "15m")
        single = client.get(latest_path(candle["symbol"]), params={"interval": "15m"}).json()
        assert candle == single


def test_multi_latest_limits_and_errors(client: httpx.Client) -> None:
    at_limit = ",".join(f"S{i}" for i in range(100))
    body = client.get("/candles", params={"symbols": at_limit}).json()
    assert body["candles"] == [] and len(body["missing"]) == 100
    over = ",".join(f"S{i}" for i in range(101))
    assert_error(client.get("/candles", params={"symbols": over}), 422, "invalid_parameter", "100")
    assert_error(client.get("/candles"), 422, "invalid_parameter", "symbols")
    for bad in ("", "AAPL,", "AAPL,,MSFT", "AAPL,$X", " AAPL"):
        resp = client.get("/candles", params={"symbols": bad})
        assert_error(resp, 422, "invalid_parameter", "symbols")
    resp = client.get("/candles", params={"symbols": "AAPL", "interval": "3x"})
    assert_error(resp, 422, "invalid_parameter", "interval")


def test_latest_prefers_the_hubs_forming_candle(live: LiveStack) -> None:
    """With the pipeline in process, /latest returns the forming candle the hub has cached,
    which is the store's newest too (the pipeline writes before it publishes)."""
    now_ms = int(time.time() * 1000)
    minute = now_ms - now_ms % MINUTE_MS
    bars = list(RandomWalk(["LIVEA", "LIVEB"], seed=3).bars(minute - 4 * MINUTE_MS, 5))
    live.publish(bars)
    hub = live.resources.hub
    with httpx.Client(base_url=live.server.url, timeout=30) as http:
        for interval in ("1m", "15m", "1h"):
            resp = http.get("/candles/LIVEA/latest", params={"interval": interval})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            cached = hub.latest("LIVEA", interval)
            assert cached is not None, "the hub did not cache the update"
            assert body["timestamp"] == cached.timestamp and body["revision"] == cached.revision
            assert body["close"] == bars[-2].c  # the last LIVEA bar (bars alternate A, B)
            assert body["final"] is False, "the current bucket must still be forming"
        many = http.get("/candles", params={"symbols": "LIVEA,LIVEB,NONE", "interval": "1m"})
        assert [c["symbol"] for c in many.json()["candles"]] == ["LIVEA", "LIVEB"]
        assert many.json()["missing"] == ["NONE"]


# -- readiness -----------------------------------------------------------------------------------


def test_healthz_and_readyz(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


class _DownBus(MemoryBus):
    async def ping(self) -> None:
        raise ConnectionError("connection refused")


def test_readyz_reports_an_unreachable_store_and_bus(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "down.db")

    async def build(stack: contextlib.AsyncExitStack) -> FastAPI:
        clock = SystemClock()
        store = SQLiteStore(settings.db, settings.interval_set, clock)
        await store.start()
        await store.stop()  # the store is gone: every query raises StoreError
        bus = await stack.enter_async_context(_DownBus())
        return create_app(settings, store=store, clock=clock, bus=bus)

    srv = ThreadServer(build).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            assert http.get("/healthz").json() == {"status": "ok"}  # process up: still 200
            message = assert_error(http.get("/readyz"), 503, "not_ready", "store", "bus")
            assert "connection refused" in message
            resp = http.get("/candles/AAPL/latest")
            assert_error(resp, 503, "store_unavailable")
            text = http.get("/metrics").text
            assert (metric(text, "speedlayer_store_errors_total") or 0) >= 2
            assert (
                metric(
                    text,
                    "speedlayer_http_requests_total",
                    method="GET",
                    route="/readyz",
                    status="503",
                )
                == 1
            )
    finally:
        srv.stop()


class _RefusedStore(SQLiteStore):
    """A store whose backend refuses the configured credentials."""

    async def query(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigurationError("DynamoDB refused the credentials (set AWS_PROFILE)")


def test_a_backend_configuration_error_is_a_503_not_a_500(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "refused.db")

    async def build(stack: contextlib.AsyncExitStack) -> FastAPI:
        clock = SystemClock()
        store = await stack.enter_async_context(
            _RefusedStore(settings.db, settings.interval_set, clock)
        )
        return create_app(settings, store=store, clock=clock)

    srv = ThreadServer(build).start()
    try:
        resp = httpx.get(srv.url + "/candles/AAPL?interval=1m", timeout=30)
        message = assert_error(resp, 503, "store_unavailable")
        assert "AWS_PROFILE" not in message  # the operator's detail stays in the log
    finally:
        srv.stop()


def test_readyz_reports_only_the_bus(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "ok.db")

    async def build(stack: contextlib.AsyncExitStack) -> FastAPI:
        clock = SystemClock()
        store = await stack.enter_async_context(
            SQLiteStore(settings.db, settings.interval_set, clock)
        )
        bus = await stack.enter_async_context(_DownBus())
        return create_app(settings, store=store, clock=clock, bus=bus)

    srv = ThreadServer(build).start()
    try:
        message = assert_error(httpx.get(srv.url + "/readyz"), 503, "not_ready", "bus")
        assert "store" not in message
    finally:
        srv.stop()


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template(client: httpx.Client) -> None:
    def count(route: str, status: str) -> float:
        text = client.get("/metrics").text
        return metric(text, "speedlayer_http_requests_total", method="GET", route=route,
                      status=status) or 0.0  # fmt: skip

    before_ok = count("/candles/{symbol}", "200")
    before_bad = count("/candles/{symbol}/latest", "422")
    before_404 = count("unmatched", "404")
    for symbol in ("AAPL", "MSFT", "BRK.B"):
        assert client.get(f"/candles/{symbol}", params={"limit": 1}).status_code == 200
    assert client.get("/candles/AAPL/latest", params={"interval": "9q"}).status_code == 422
    assert client.get("/no/such/path/QQQQ").status_code == 404
    assert count("/candles/{symbol}", "200") == before_ok + 3
    assert count("/candles/{symbol}/latest", "422") == before_bad + 1
    assert count("unmatched", "404") == before_404 + 1

    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    # label values are route templates, never raw paths
    routes = {dict(labels).get("route") for (_, labels) in parse_metrics(text)} - {None}
    assert "/candles/{symbol}" in routes and "/candles/{symbol}/latest" in routes
    assert not any(sym in text for sym in ("AAPL", "MSFT", "BRK.B", "QQQQ", "no/such"))
    # a latency histogram per route
    assert metric(
        text,
        "speedlayer_http_request_duration_seconds_bucket",
        route="/candles/{symbol}",
        le="+Inf",
    )
    assert metric(text, "speedlayer_http_request_duration_seconds_count", route="/candles/{symbol}")
    # live metrics exist without a bus (the hub has no clients); no pipeline runner here
    assert metric(text, "speedlayer_live_subscribers") == 0
    assert metric(text, "speedlayer_live_dropped_slow_consumers_total") == 0
    assert metric(text, "speedlayer_live_messages_delivered_total") is not None
    assert metric(text, "speedlayer_store_errors_total") == 0
    assert "speedlayer_pipeline_bars_in_total" not in text


def test_metrics_openmetrics_negotiation(client: httpx.Client) -> None:
    resp = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.rstrip().endswith("# EOF")


def test_metrics_read_the_pipeline_and_the_hub(live: LiveStack) -> None:
    now_ms = int(time.time() * 1000)
    minute = now_ms - now_ms % MINUTE_MS
    live.publish(list(RandomWalk(["METR"], seed=9).bars(minute - 2 * MINUTE_MS, 3)))
    runner, hub = live.resources.pipeline, live.resources.hub
    ws_url = live.server.url.replace("http", "ws", 1) + "/ws"
    with ws_connect(ws_url) as ws, httpx.Client(base_url=live.server.url, timeout=30) as http:
        ws.send(json.dumps({"action": "subscribe", "symbols": ["METR"], "intervals": ["1m"]}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        live.publish(list(RandomWalk(["METR"], seed=10).bars(minute, 1)))
        assert json.loads(ws.recv(timeout=10))["type"] == "candle"
        # the runner keeps finalizing candles: read its counters around the scrape
        bars_before, candles_before = runner.bars_in, runner.candles_out
        text = http.get("/metrics").text
        bars_after, candles_after = runner.bars_in, runner.candles_out
        bars_in = metric(text, "speedlayer_pipeline_bars_in_total")
        assert bars_in is not None and bars_before <= bars_in <= bars_after
        assert bars_in >= 4
        candles_out = metric(text, "speedlayer_pipeline_candles_out_total")
        assert candles_out is not None and candles_before <= candles_out <= candles_after
        assert candles_out > 0
        lag = metric(text, "speedlayer_feed_lag_seconds")
        assert lag is not None and -120 < lag < 120
        assert metric(text, "speedlayer_live_subscribers") == hub.clients == 1
        assert (metric(text, "speedlayer_live_messages_delivered_total") or 0) >= 2
        assert (metric(text, "speedlayer_live_events_total") or 0) > 0


# -- API keys ------------------------------------------------------------------------------------


def test_auth_off_needs_no_key(client: httpx.Client) -> None:
    assert client.get("/symbols").status_code == 200
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "path", ["/symbols", "/candles/AAPL", "/candles/AAPL/latest", "/candles?symbols=AAPL",
             "/intervals", "/metrics", "/openapi.json", "/docs", "/asyncapi.json",
             "/stream/candles?symbols=AAPL", "/nope"],
)  # fmt: skip
def test_auth_missing_key_401_wrong_key_403(secured: LoggedApiServer, path: str) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as http:
        resp = http.get(path)
        assert_error(resp, 401, "unauthorized", "X-API-Key")
        assert resp.headers["www-authenticate"].startswith("ApiKey")
        assert_error(http.get(path, headers={"X-API-Key": WRONG_KEY}), 403, "forbidden")
        sep = "&" if "?" in path else "?"
        assert_error(http.get(f"{path}{sep}api_key={WRONG_KEY}"), 403, "forbidden")
        assert_error(http.get(path, headers={"X-API-Key": ""}), 401, "unauthorized")


def test_auth_accepts_each_key_by_header_or_query(secured: LoggedApiServer) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as http:
        for key in KEYS:
            assert http.get("/symbols", headers={"X-API-Key": key}).json() == {
                "symbols": sorted(SYMBOLS)
            }
            resp = http.get("/candles/AAPL", params={"interval": "15m", "api_key": key})
            assert resp.status_code == 200 and resp.json()["interval"] == "15m"
        # the key in the query does not reach the routes: the other parameters still work
        resp = http.get("/candles", params={"api_key": KEYS[0], "symbols": "AAPL,MSFT"})
        assert [c["symbol"] for c in resp.json()["candles"]] == ["AAPL", "MSFT"]
        docs = http.get("/docs", headers={"X-API-Key": KEYS[1]})
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_auth_exempts_health_probes(secured: LoggedApiServer) -> None:
    assert httpx.get(secured.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(secured.url + "/readyz").json() == {"status": "ready"}
    assert httpx.get(secured.url + f"/healthz?api_key={WRONG_KEY}").status_code == 200


def test_auth_websocket_handshake(secured: LoggedApiServer) -> None:
    ws_url = secured.url.replace("http", "ws", 1) + "/ws"
    for url, headers in (
        (ws_url, None),
        (ws_url + f"?api_key={WRONG_KEY}", None),
        (ws_url, {"X-API-Key": WRONG_KEY}),
    ):
        with pytest.raises(InvalidStatus) as info:
            ws_connect(url, additional_headers=headers, open_timeout=10).close()
        assert info.value.response.status_code == 403
    for url, headers in ((ws_url + f"?api_key={KEYS[0]}", None), (ws_url, {"X-API-Key": KEYS[1]})):
        with ws_connect(url, additional_headers=headers, open_timeout=10) as ws:
            ws.send(json.dumps({"action": "ping", "id": 7}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "pong", "id": 7}


def test_auth_sse_accepts_the_query_key(secured: LoggedApiServer) -> None:
    params = {"symbols": "AAPL", "intervals": "15m", "snapshot": "2", "api_key": KEYS[0]}
    with httpx.stream("GET", secured.url + "/stream/candles", params=params, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")


def test_keys_never_reach_the_log(secured: LoggedApiServer) -> None:
    with httpx.Client(base_url=secured.url, timeout=30) as http:
        http.get("/candles/AAPL", params={"interval": "5m", "api_key": KEYS[0], "limit": 2})
        http.get("/symbols", params={"api_key": WRONG_KEY})
        http.get("/symbols", headers={"X-API-Key": KEYS[1]})
    with contextlib.suppress(InvalidStatus):
        ws_connect(secured.url.replace("http", "ws", 1) + f"/ws?api_key={WRONG_KEY}").close()
    with ws_connect(secured.url.replace("http", "ws", 1) + f"/ws?api_key={KEYS[1]}"):
        pass
    time.sleep(0.3)  # let the server flush its log lines
    log = secured.log_text()
    # the access log is on, and shows the requests without the key
    assert '"GET /candles/AAPL?interval=5m&limit=2 HTTP/1.1" 200' in log, log[-3000:]
    assert '"GET /symbols HTTP/1.1" 403' in log
    for secret in (*KEYS, WRONG_KEY, "api_key"):
        assert secret not in log, f"{secret!r} appears in the server log"


def test_openapi_documents_security_when_auth_is_on(secured: LoggedApiServer) -> None:
    spec = httpx.get(secured.url + "/openapi.json", headers={"X-API-Key": KEYS[0]}).json()
    schemes = spec["components"]["securitySchemes"]
    assert {(s["in"], s["name"]) for s in schemes.values()} == {
        ("header", "X-API-Key"),
        ("query", "api_key"),
    }
    assert spec["security"] == [{name: []} for name in schemes]
    for path in ("/healthz", "/readyz"):
        assert spec["paths"][path]["get"]["security"] == []
    for path in ("/candles/{symbol}", "/candles/{symbol}/latest", "/candles", "/metrics"):
        responses = spec["paths"][path]["get"]["responses"]
        assert {"401", "403"} <= set(responses), path


# -- CORS ----------------------------------------------------------------------------------------


def test_cors_allow_list(client: httpx.Client) -> None:
    allowed = client.get("/symbols", headers={"Origin": ORIGIN})
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN
    other = client.get("/symbols", headers={"Origin": OTHER_ORIGIN})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


def test_cors_preflight(client: httpx.Client) -> None:
    request_headers = {"Access-Control-Request-Method": "GET",
                       "Access-Control-Request-Headers": "X-API-Key"}  # fmt: skip
    ok = client.options("/candles/AAPL/latest", headers={"Origin": ORIGIN, **request_headers})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "GET" in ok.headers["access-control-allow-methods"]
    assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
    bad = client.options(
        "/candles/AAPL/latest", headers={"Origin": OTHER_ORIGIN, **request_headers}
    )
    assert bad.status_code == 400
    assert "access-control-allow-origin" not in bad.headers


def test_no_cors_headers_without_origins(secured: LoggedApiServer) -> None:
    resp = httpx.get(secured.url + "/healthz", headers={"Origin": ORIGIN})
    assert not any(h.startswith("access-control-") for h in resp.headers)
    preflight = httpx.options(
        secured.url + "/healthz",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


# -- consistent errors ---------------------------------------------------------------------------


def test_405_is_json_and_says_allow(client: httpx.Client) -> None:
    resp = client.post("/candles/AAPL/latest")
    assert_error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["allow"]


# -- OpenAPI and AsyncAPI ------------------------------------------------------------------------


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def test_openapi_documents_the_new_routes(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})  # auth is off here
    assert "/asyncapi.json" in spec["info"]["description"]
    error_codes = {"/candles/{symbol}/latest": {"404", "422", "503"}, "/candles": {"422", "503"}}
    for path, codes in error_codes.items():
        op = spec["paths"][path]["get"]
        assert codes <= set(op["responses"]), path
        for code in codes:
            body = _resolve(spec, op["responses"][code]["content"]["application/json"]["schema"])
            assert set(body["required"]) == {"error", "message"}
    latest = spec["paths"]["/candles/{symbol}/latest"]["get"]
    candle = _resolve(spec, latest["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(candle["properties"]) == CANDLE_KEYS
    assert candle["examples"][0]["symbol"] == "AAPL"
    params = {p["name"]: p for p in latest["parameters"]}
    assert params["interval"]["schema"]["enum"] == INTERVALS
    many = spec["paths"]["/candles"]["get"]
    assert {p["name"]: p["required"] for p in many["parameters"]} == {
        "symbols": True,
        "interval": False,
    }
    ready = spec["paths"]["/readyz"]["get"]["responses"]
    assert {"200", "503"} <= set(ready)
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in metrics and "application/json" not in metrics


def _asyncapi_payloads(doc: dict[str, Any], channel: str) -> dict[str, jsonschema_rs.Validator]:
    return {
        message["name"]: jsonschema_rs.validator_for(message["payload"])
        for message in doc["channels"][channel]["messages"].values()
    }


def test_asyncapi_document(client: httpx.Client, server: ApiServer) -> None:
    doc = client.get("/asyncapi.json").json()
    assert doc["asyncapi"].startswith("3.")
    assert doc["servers"]["websocket"]["host"] == f"127.0.0.1:{server.port}"
    assert doc["channels"]["ws"]["address"] == "/ws"
    assert doc["channels"]["sseCandles"]["address"] == "/stream/candles"
    ws_names = {m["name"] for m in doc["channels"]["ws"]["messages"].values()}
    assert ws_names == {"subscribe", "unsubscribe", "ping", "subscribed", "unsubscribed",
                        "snapshot", "candle", "error", "pong"}  # fmt: skip
    sse_names = {m["name"] for m in doc["channels"]["sseCandles"]["messages"].values()}
    assert sse_names == {"snapshot", "candle", "error"}
    assert "Last-Event-ID" in doc["channels"]["sseCandles"]["description"]
    polygon = doc["channels"]["polygon"]
    assert polygon["address"] == "/polygon/{market}"
    assert polygon["parameters"]["market"]["enum"] == ["stocks", "options", "indices", "crypto",
                                                        "forex"]  # fmt: skip
    assert {m["name"] for m in polygon["messages"].values()} == {
        "auth", "subscribe", "unsubscribe", "events"
    }  # fmt: skip
    for operation in doc["operations"].values():  # every reference resolves
        for ref in [operation["channel"], *operation["messages"]]:
            node: Any = doc
            for part in ref["$ref"].removeprefix("#/").split("/"):
                node = node[part]
    ws = _asyncapi_payloads(doc, "ws")
    for example in (
        {"action": "subscribe", "symbols": ["AAPL"], "intervals": ["1m", "15m"], "snapshot": 100},
        {"action": "unsubscribe", "symbols": ["AAPL"], "intervals": ["1m", "15m"]},
        {"action": "ping"},
    ):
        ws[str(example["action"])].validate(example)
    with pytest.raises(jsonschema_rs.ValidationError):
        ws["subscribe"].validate({"action": "subscribe", "symbols": []})


def test_websocket_and_sse_messages_match_the_asyncapi_document(live: LiveStack) -> None:
    """What /ws and /stream/candles send validates against the served AsyncAPI schemas."""
    with httpx.Client(base_url=live.server.url, timeout=30) as http:
        doc = http.get("/asyncapi.json").json()
    ws_schemas = _asyncapi_payloads(doc, "ws")
    sse_schemas = _asyncapi_payloads(doc, "sseCandles")
    now_ms = int(time.time() * 1000)
    minute = now_ms - now_ms % MINUTE_MS
    live.publish(list(RandomWalk(["DOCS"], seed=4).bars(minute - 3 * MINUTE_MS, 3)))
    seen: dict[str, dict[str, Any]] = {}
    ws_url = live.server.url.replace("http", "ws", 1) + "/ws"
    with ws_connect(ws_url) as ws:
        requests: list[dict[str, Any]] = [
            {"action": "subscribe", "symbols": ["DOCS"], "intervals": ["1m", "5min"],
             "snapshot": 5, "id": "s1"},
            {"action": "ping", "id": 2},
            {"action": "jump"},
            {"action": "unsubscribe", "symbols": ["DOCS"], "intervals": ["5m"]},
        ]  # fmt: skip
        for request in requests:
            ws.send(json.dumps(request))
        live.publish(list(RandomWalk(["DOCS"], seed=5).bars(minute, 1)))
        deadline = time.monotonic() + 15
        while set(seen) != {"subscribed", "snapshot", "pong", "error", "unsubscribed", "candle"}:
            assert time.monotonic() < deadline, f"only saw {sorted(seen)}"
            message = json.loads(ws.recv(timeout=15))
            ws_schemas[message["type"]].validate(message)
            seen.setdefault(message["type"], message)
    assert seen["subscribed"]["id"] == "s1" and seen["subscribed"]["intervals"] == ["1m", "5m"]
    assert seen["candle"]["symbol"] == "DOCS"
    params = {"symbols": "DOCS", "intervals": "1m", "snapshot": "3"}
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "GET", live.server.url + "/stream/candles", params=params, timeout=30
    ) as resp:
        assert resp.status_code == 200
        event = ""
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = json.loads(line.split(":", 1)[1])
                sse_schemas[event].validate(payload)
                events.append((event, payload))
                if event == "snapshot":
                    break
    assert events and events[0][0] == "snapshot" and len(events[0][1]["candles"]) == 3
