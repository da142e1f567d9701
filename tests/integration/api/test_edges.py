"""Edges of the HTTP surface over real `speedlayer api` servers: what the logs may show at any
level, which browser origins may open a WebSocket, HEAD, CORS preflight errors, tickers with a
slash in the path, and the symbol index behind /symbols.

Data is prepared as in test_api_more.py: recent synthetic bars replayed with `speedlayer replay`
into a SQLite file that the servers of this module share.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import SPEEDLAYER, ApiServer, free_port, stop_process
from tests.integration.api.test_api_more import LoggedApiServer, replayed_walk

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
MINUTES = 90
SYMBOLS = ["AAPL", "MSFT", "BRK/B", "EUR/USD"]
KEY = "sekrit-gamma-51aa"
OTHER_KEY = "sekrit-delta-77f0"
WRONG_KEY = "wrong-key-c3d9"
ORIGIN = "https://dash.example"
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return replayed_walk(tmp_path_factory.mktemp("edges"), SYMBOLS, MINUTES, seed=5)


@pytest.fixture
def debug_server(db: Path, tmp_path: Path) -> Iterator[LoggedApiServer]:
    """`speedlayer api` at log level DEBUG with two keys, its whole output captured."""
    env = {"SPEEDLAYER_API_KEYS": f"{KEY},{OTHER_KEY}", "SPEEDLAYER_LOG_LEVEL": "DEBUG"}
    srv = LoggedApiServer(db, tmp_path / "server.log", env)
    srv.start()
    yield srv
    srv.stop()


# -- keys in logs --------------------------------------------------------------------------------


def _use_every_way_in(url: str) -> None:
    """REST, SSE and WebSocket requests carrying keys in the query string and in the header,
    right and wrong ones, accepted and refused."""
    ws_url = url.replace("http", "ws", 1) + "/ws"
    with httpx.Client(base_url=url, timeout=30) as http:
        ways: tuple[tuple[dict[str, str], dict[str, str]], ...] = (
            ({"api_key": KEY}, {}),
            ({}, {"X-API-Key": OTHER_KEY}),
            ({"api_key": WRONG_KEY}, {}),
            ({}, {"X-API-Key": WRONG_KEY}),
        )
        for params, headers in ways:
            query = {"interval": "5m", "limit": "2", **params}
            http.get("/candles/AAPL", params=query, headers=headers)
            http.get("/symbols", params=params, headers=headers)
            stream = {"symbols": "AAPL", "intervals": "1m", "snapshot": "1", **params}
            with http.stream("GET", "/stream/candles", params=stream, headers=headers) as resp:
                for line in resp.iter_lines():  # the snapshot arrives after the comment line
                    if line.startswith("event: snapshot"):
                        break
                    if resp.status_code != 200:
                        break
    for url_, headers_ in (
        (ws_url + f"?api_key={KEY}", None),
        (ws_url + f"?batch=0&api_key={OTHER_KEY}", None),
        (ws_url, {"X-API-Key": KEY}),
    ):
        with ws_connect(url_, additional_headers=headers_, open_timeout=10) as ws:
            ws.send(json.dumps({"action": "ping", "id": 1}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "pong", "id": 1}
    for url_, headers_ in (
        (ws_url + f"?api_key={WRONG_KEY}", None),
        (ws_url, {"X-API-Key": WRONG_KEY}),
    ):
        with pytest.raises(InvalidStatus):
            ws_connect(url_, additional_headers=headers_, open_timeout=10).close()


def test_no_key_in_the_log_at_debug_level(debug_server: LoggedApiServer) -> None:
    _use_every_way_in(debug_server.url)
    time.sleep(0.5)  # let the server flush its log lines
    log = debug_server.log_text()
    # DEBUG really is on: the WebSocket handshakes and the access log are there
    assert "GET /ws" in log and "x-api-key" in log.lower(), log[-3000:]
    assert '"GET /candles/AAPL?interval=5m&limit=2 HTTP/1.1" 200' in log, log[-3000:]
    for secret in (KEY, OTHER_KEY, WRONG_KEY):
        assert secret not in log, f"{secret!r} appears in the server log:\n{log[-5000:]}"


# -- WebSocket origins ---------------------------------------------------------------------------


def _ws_status(url: str, origin: str | None) -> int:
    """101 when the handshake succeeds (and the socket answers a ping), else the HTTP status."""
    headers = {"X-API-Key": KEY} if origin is None else {"X-API-Key": KEY, "Origin": origin}
    try:
        with ws_connect(url, additional_headers=headers, open_timeout=10) as ws:
            ws.send(json.dumps({"action": "ping", "id": 2}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "pong", "id": 2}
            return 101
    except InvalidStatus as exc:
        response = exc.response
        if response.status_code == 403:
            body = json.loads(response.body or b"{}")
            assert body.get("error") == "forbidden_origin", body
            assert origin is not None and origin in body["message"], body
        return response.status_code


def test_websocket_origins_follow_the_cors_allow_list(
    db: Path, api_server_factory: Callable[..., ApiServer]
) -> None:
    server = api_server_factory(db, {"SPEEDLAYER_API_KEYS": KEY, "SPEEDLAYER_CORS_ORIGINS": ORIGIN})
    ws_url = server.url.replace("http", "ws", 1) + "/ws"
    assert _ws_status(ws_url, EVIL) == 403  # a valid key does not let another site in
    assert _ws_status(ws_url, "null") == 403
    assert _ws_status(ws_url, ORIGIN) == 101
    assert _ws_status(ws_url, None) == 101  # not a browser: no Origin header
    assert _ws_status(ws_url, server.url) == 101  # the dashboard, served by the API itself


def test_websocket_origins_without_an_allow_list_and_with_a_wildcard(
    db: Path, api_server_factory: Callable[..., ApiServer]
) -> None:
    closed = api_server_factory(db, {"SPEEDLAYER_API_KEYS": KEY})
    ws_url = closed.url.replace("http", "ws", 1) + "/ws"
    assert _ws_status(ws_url, EVIL) == 403  # like CORS: no list, no other site
    assert _ws_status(ws_url, closed.url) == 101 and _ws_status(ws_url, None) == 101
    opened = api_server_factory(db, {"SPEEDLAYER_API_KEYS": KEY, "SPEEDLAYER_CORS_ORIGINS": "*"})
    assert _ws_status(opened.url.replace("http", "ws", 1) + "/ws", EVIL) == 101


# -- tickers with a slash ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(db: Path) -> Iterator[ApiServer]:
    """`speedlayer api`, auth off, CORS for ORIGIN."""
    srv = ApiServer(db, env={"SPEEDLAYER_CORS_ORIGINS": ORIGIN})
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("symbol", ["BRK/B", "EUR/USD"])
def test_tickers_with_a_slash_in_the_path(plain: ApiServer, symbol: str) -> None:
    with httpx.Client(base_url=plain.url, timeout=30) as http:
        listed = http.get("/symbols").json()["symbols"]
        assert symbol in listed
        many = http.get("/candles", params={"symbols": f"AAPL,{symbol}", "interval": "15m"})
        expected = many.json()["candles"][1]
        assert expected["symbol"] == symbol
        for path in ("/candles/" + symbol, "/candles/" + quote(symbol, safe="")):
            page = http.get(path, params={"interval": "15m", "order": "desc", "limit": 1})
            assert page.status_code == 200, (path, page.text)
            assert page.json()["symbol"] == symbol and page.json()["candles"] == [expected]
            latest = http.get(path + "/latest", params={"interval": "15m"})
            assert latest.status_code == 200, (path, latest.text)
            assert latest.json() == expected
        # the other routes under /candles are not shadowed
        assert http.get("/candles/AAPL/latest").json()["symbol"] == "AAPL"
        assert http.get("/candles/AAPL").json()["symbol"] == "AAPL"
        missing = http.get("/candles/NO/SUCH/latest")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        # a bad ticker is the route's 422, line breaks included (not the router's 404)
        for ticker in ("BRK B", "\x0e\n\x04q", "A\r\nB"):
            for suffix in ("", "/latest"):
                bad = http.get("/candles/" + quote(ticker, safe="") + suffix)
                assert bad.status_code == 422, (ticker, suffix, bad.text)
                assert bad.json()["error"] == "invalid_parameter"


def test_a_forex_feed_through_the_simulator_is_served_by_pair(tmp_path: Path) -> None:
    """`speedlayer simulate --market forex` (pairs such as EUR/USD on the WebSocket, C:EURUSD on
    REST) feeding `speedlayer up --source polygon`: the pairs' candles by their path."""
    sim_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "SPEEDLAYER_LOG_LEVEL": "info",
        "POLYGON_API_KEY": "sim-key",
        "SPEEDLAYER_POLYGON_WS_URL": f"ws://127.0.0.1:{sim_port}",
        "SPEEDLAYER_POLYGON_REST_URL": f"http://127.0.0.1:{sim_port}",
        "SPEEDLAYER_POLYGON_MARKET": "forex",
        "SPEEDLAYER_POLYGON_SYMBOLS": "EUR/USD,USD/JPY",
        "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "60",
    }
    log_path = tmp_path / "forex.log"
    url = f"http://127.0.0.1:{api_port}"
    with log_path.open("w") as log:
        sim = subprocess.Popen(
            [SPEEDLAYER, "simulate", "--market", "forex", "--symbols", "4", "--port",
             str(sim_port)], env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        up = None
        try:
            up = subprocess.Popen(
                [SPEEDLAYER, "up", "--source", "polygon", "--db", str(tmp_path / "fx.db"),
                 "--port", str(api_port)], env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            symbols: list[str] = []
            while set(symbols) != {"EUR/USD", "USD/JPY"}:
                assert up.poll() is None and sim.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "no forex candles\n" + log_path.read_text()
                time.sleep(0.3)
                with contextlib.suppress(httpx.TransportError):
                    resp = httpx.get(url + "/symbols", timeout=2)
                    symbols = resp.json()["symbols"] if resp.status_code == 200 else []
            with httpx.Client(base_url=url, timeout=10) as http:
                for pair in ("EUR/USD", "USD/JPY"):
                    for path in ("/candles/" + pair, "/candles/" + quote(pair, safe="")):
                        page = http.get(path, params={"interval": "5m"})
                        assert page.status_code == 200, page.text
                        candles = page.json()["candles"]
                        assert candles and all(c["symbol"] == pair for c in candles)
                        latest = http.get(path + "/latest", params={"interval": "5m"})
                        assert latest.status_code == 200, latest.text
                        assert latest.json()["timestamp"] >= candles[-1]["timestamp"]
        finally:
            for proc in (up, sim):
                if proc is not None:
                    stop_process(proc)


# -- HEAD and CORS preflight errors --------------------------------------------------------------

GET_ROUTES = [
    "/healthz", "/readyz", "/symbols", "/intervals", "/candles/AAPL?interval=5m",
    "/candles/AAPL/latest", "/candles/BRK%2FB/latest", "/candles?symbols=AAPL,MSFT",
    "/openapi.json", "/docs", "/asyncapi.json", "/", "/nope", "/candles/AAPL/latest?interval=7x",
]  # fmt: skip


@pytest.mark.parametrize("path", GET_ROUTES)
def test_head_answers_like_get_without_a_body(plain: ApiServer, path: str) -> None:
    with httpx.Client(base_url=plain.url, timeout=10) as http:
        got = http.get(path)
        head = http.head(path)
    assert head.status_code == got.status_code, head.headers
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path not in ("/asyncapi.json",):  # (its host line is the same either way)
        assert head.headers.get("content-length") == got.headers.get("content-length")


def test_head_on_streams_and_metrics_ends_at_once(plain: ApiServer) -> None:
    with httpx.Client(base_url=plain.url, timeout=10) as http:
        stream = http.head("/stream/candles", params={"symbols": "AAPL", "snapshot": "1"})
        assert stream.status_code == 200 and stream.content == b""
        assert stream.headers["content-type"].startswith("text/event-stream")
        not_allowed = http.post("/symbols")
        assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "GET, HEAD"
        metrics = http.head("/metrics")
        assert metrics.status_code == 200 and metrics.content == b""
        assert metrics.headers["content-type"].startswith("text/plain")
        # the stream's live client was released
        deadline = time.monotonic() + 5
        while "speedlayer_live_subscribers 0.0" not in http.get("/metrics").text:
            assert time.monotonic() < deadline, "the HEAD stream still holds a live client"
            time.sleep(0.1)
        # the preflight advertises HEAD, and a HEAD request with an allowed Origin gets CORS
        preflight = http.options(
            "/symbols", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "HEAD"}
        )
        assert (
            preflight.status_code == 200
            and "HEAD" in preflight.headers["access-control-allow-methods"]
        )
        head = http.head("/symbols", headers={"Origin": ORIGIN})
        assert head.status_code == 200 and head.headers["access-control-allow-origin"] == ORIGIN


def test_a_refused_cors_preflight_is_a_json_error(plain: ApiServer) -> None:
    asks = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "X-API-Key"}
    with httpx.Client(base_url=plain.url, timeout=10) as http:
        for headers, needle in (
            ({**asks, "Origin": EVIL}, "origin"),
            ({**asks, "Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"}, "method"),
            ({**asks, "Origin": ORIGIN, "Access-Control-Request-Headers": "X-Other"}, "headers"),
        ):
            resp = http.options("/candles/AAPL/latest", headers=headers)
            assert resp.status_code == 400, resp.text
            assert resp.headers["content-type"] == "application/json"
            body = resp.json()
            assert set(body) == {"error", "message"} and body["error"] == "cors_rejected", body
            assert needle in body["message"], body
            assert int(resp.headers["content-length"]) == len(resp.content)
