"""Every market end to end: `speedlayer up --market crypto|forex` (the simulator serving that
cluster over WebSocket and REST, the client subscribing to it, the store, the API), queried with
every form of a pair (docs/design.md#symbols): the WebSocket form (``BTC-USD``, ``EUR/USD``),
Polygon's REST ticker (``X:BTCUSD``, ``C:EURUSD``), the other separator, lower case, raw and
percent-encoded in the path; over REST, the Polygon and UDF compatibility routes, WebSocket and
SSE subscriptions, and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.conftest import SPEEDLAYER, free_port, run_cli, stop_process
from tests.integration.api.test_live_api import sse_events

SPEED = 4  # simulated minutes per wall second


@dataclass
class Market:
    name: str
    pair: str  # the stored key (the WebSocket form)
    forms: list[str]  # other ways of writing it
    others: list[str]  # the other pairs the simulator serves (4 symbols)
    rest_ticker: str  # Polygon's REST form
    miscased: str  # mixed case: kept as written, so it names nothing


MARKETS = {
    "crypto": Market(
        "crypto", "BTC-USD", ["X:BTCUSD", "x:btcusd", "btc-usd", "BTC/USD", "btc/usd"],
        ["ETH-USD", "SOL-USD", "XRP-USD"], "X:BTCUSD", "Btc-Usd",
    ),
    "forex": Market(
        "forex", "EUR/USD", ["C:EURUSD", "c:eurusd", "EUR-USD", "eur/usd", "eur-usd"],
        ["USD/JPY", "GBP/USD", "USD/CHF"], "C:EURUSD", "Eur/Usd",
    ),
}  # fmt: skip


@dataclass
class Stack:
    market: Market
    url: str
    db: Path
    log: Path

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=10)


@pytest.fixture(scope="module", params=sorted(MARKETS))
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    market = MARKETS[request.param]
    workdir = tmp_path_factory.mktemp(market.name)
    port = free_port()
    db, log_path = workdir / "up.db", workdir / "up.log"
    env = {**os.environ, "SPEEDLAYER_LOG_LEVEL": "info"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [SPEEDLAYER, "up", "--market", market.name, "--symbols", "4", "--speed", str(SPEED),
             "--history", "60", "--db", str(db), "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    up = Stack(market, f"http://127.0.0.1:{port}", db, log_path)
    try:
        deadline = time.monotonic() + 90
        wanted = {market.pair, *market.others}
        while True:
            assert proc.poll() is None, "speedlayer up exited\n" + log_path.read_text()
            assert time.monotonic() < deadline, "no candles\n" + log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                symbols = up.get("/symbols").json().get("symbols", [])
                if set(symbols) == wanted and len(final_page(up, market.pair, 40)) >= 10:
                    break
            time.sleep(0.3)
        yield up
    finally:
        stop_process(proc)


def final_page(up: Stack, path_symbol: str, limit: int) -> list[dict[str, Any]]:
    """The newest final 1m candles of the pair (read by the canonical key)."""
    resp = up.get(f"/candles/{path_symbol}", interval="1m", order="desc", limit=limit)
    return [c for c in resp.json().get("candles", []) if c["final"]] if resp.is_success else []


def settled(read: Any, tries: int = 20) -> Any:
    """``read()`` once two reads in a row agree (a late backfill may still revise a candle)."""
    previous = read()
    for _ in range(tries):
        time.sleep(0.2)
        current = read()
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"never settled: {previous}")


def paths(symbol: str) -> list[str]:
    """The symbol in a path as it is and percent-encoded (``EUR%2FUSD``)."""
    return sorted({symbol, quote(symbol, safe="")})


def test_the_feed_stores_the_pairs_under_their_websocket_form(stack: Stack) -> None:
    market = stack.market
    assert stack.get("/symbols").json() == {"symbols": sorted([market.pair, *market.others])}
    for form in [market.pair, *market.forms]:
        for path in paths(form):
            info = stack.get(f"/symbols/{path}").json()
            assert info["symbol"] == market.pair and info["stored"] is True, info
            assert info["market"] == market.name and info["given"] == form, info


def test_rest_candles_are_the_same_for_every_form(stack: Stack) -> None:
    market = stack.market
    end = final_page(stack, market.pair, 5)[0]["timestamp"]  # final: no longer changes

    def page(path: str) -> Any:
        return stack.get(f"/candles/{path}", interval="1m", end=str(end), limit=30).json()

    def all_forms() -> list[Any]:
        return [page(path) for form in [market.pair, *market.forms] for path in paths(form)]

    bodies = settled(all_forms)
    assert bodies[0]["symbol"] == market.pair and len(bodies[0]["candles"]) == 30
    assert all(body == bodies[0] for body in bodies), bodies
    assert {c["symbol"] for c in bodies[0]["candles"]} == {market.pair}


def test_latest_and_many_latest_by_every_form(stack: Stack) -> None:
    market = stack.market
    for form in [market.pair, *market.forms]:
        for path in paths(form):
            resp = stack.get(f"/candles/{path}/latest", interval="5m")
            assert resp.status_code == 200, (form, resp.text)
            assert resp.json()["symbol"] == market.pair
    resp = stack.get("/candles", symbols=",".join([*market.forms, market.others[0]]))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [c["symbol"] for c in body["candles"]] == [market.pair, market.others[0]]
    assert body["missing"] == []


def test_a_miscased_ticker_says_why_it_is_empty(stack: Stack) -> None:
    market = stack.market
    info = stack.get(f"/symbols/{quote(market.miscased, safe='')}").json()
    assert info["symbol"] == market.miscased and info["stored"] is False, info
    assert "case-sensitive" in info["message"] and market.pair in info["message"], info
    latest = stack.get(f"/candles/{market.miscased}/latest")
    assert latest.status_code == 404
    assert "case-sensitive" in latest.json()["message"], latest.text
    page = stack.get(f"/candles/{market.miscased}").json()
    assert page["symbol"] == market.miscased and page["candles"] == []


def test_polygon_compat_and_udf_take_every_form(stack: Stack) -> None:
    market = stack.market
    newest = final_page(stack, market.pair, 20)
    frm, to = newest[-1]["timestamp"], newest[0]["timestamp"]
    bodies = []
    for form in (market.rest_ticker, market.rest_ticker.lower(), market.pair):
        resp = stack.get(f"/v2/aggs/ticker/{form}/range/1/minute/{frm}/{to}")
        assert resp.status_code == 200, (form, resp.text)
        body = resp.json()
        assert body["ticker"] == form and body["resultsCount"] == len(newest), body
        bodies.append(body["results"])
    assert bodies[0] == bodies[1] == bodies[2]
    info = stack.get("/udf/symbols", symbol=market.rest_ticker).json()
    assert info["name"] == market.pair and info["type"] == market.name, info
    history = stack.get(
        "/udf/history", symbol=market.forms[1], resolution="1", **{"from": frm // 1000},
        to=to // 1000 + 60,
    ).json()  # fmt: skip
    assert history["s"] == "ok" and len(history["t"]) == len(newest), history


def test_websocket_and_sse_subscriptions_by_any_form(stack: Stack) -> None:
    market = stack.market
    asyncio.run(_websocket(stack, market))
    asyncio.run(_sse(stack, market))


async def _websocket(stack: Stack, market: Market) -> None:
    ws_url = stack.url.replace("http", "ws", 1) + "/ws"
    async with connect(ws_url, open_timeout=10) as ws:
        await ws.send(orjson.dumps({"action": "subscribe", "symbols": market.forms[:2],
                                    "intervals": ["1m"], "snapshot": 3}))  # fmt: skip
        seen: set[str] = set()
        async with asyncio.timeout(30):
            while "candle" not in seen:
                message = orjson.loads(await ws.recv())
                seen.add(message["type"])
                if message["type"] == "subscribed":
                    assert message["symbols"] == [market.pair], message
                elif message["type"] in ("snapshot", "candle"):
                    assert message["symbol"] == market.pair, message
                else:
                    raise AssertionError(message)
        assert seen == {"subscribed", "snapshot", "candle"}


async def _sse(stack: Stack, market: Market) -> None:
    params = {"symbols": f"{market.forms[2]},{market.pair}", "intervals": "1m", "snapshot": "3"}
    kinds: list[str] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        asyncio.timeout(30),
        client.stream("GET", stack.url + "/stream/candles", params=params) as resp,
    ):
        assert resp.status_code == 200
        async for event in sse_events(resp):
            if not event.data:
                continue
            assert event.json["symbol"] == market.pair, event.json
            kinds.append(event.event)
            if event.event == "candle":
                break
    assert kinds.count("snapshot") == 1 and kinds[-1] == "candle", kinds


def test_the_cli_reads_by_any_form(stack: Stack) -> None:
    market = stack.market
    end = final_page(stack, market.pair, 5)[0]["timestamp"]

    def cli(form: str) -> Any:
        args = ["--interval", "5m", "--end", str(end), "--db", str(stack.db), "--format", "json"]
        return orjson.loads(run_cli("candles", form, *args).stdout)

    def both() -> tuple[Any, ...]:
        api = stack.get(f"/candles/{market.pair}", interval="5m", end=str(end)).json()["candles"]
        return (api, *(cli(form) for form in market.forms[:3]))

    api, *by_cli = settled(both, tries=5)
    assert api and all(rows == api for rows in by_cli)
    bad = run_cli("candles", "BTC USD", "--db", str(stack.db), check=False)
    assert bad.returncode == 2 and "is not a valid ticker" in bad.stderr
