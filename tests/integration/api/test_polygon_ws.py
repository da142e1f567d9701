"""The Polygon-protocol candle WebSocket (api/polygon_ws.py) against the official client.

The live stack of test_live_api.py (simulator -> feed -> bus -> resampler -> SQLite, the API on
uvicorn over a real socket) runs with an API key. ``massive.WebSocketClient`` connects with
``feed="127.0.0.1:PORT/polygon"``; the candles it receives are checked against the store and
against the bus's record of every update (the ``Tap``). Protocol details (statuses, errors,
unsubscribe) are checked with a plain ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema_rs
import orjson
import pytest
import pytest_asyncio
from massive import WebSocketClient  # type: ignore[import-untyped]
from massive.exceptions import AuthError  # type: ignore[import-untyped]
from massive.websocket.models import EquityAgg  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect

from speedlayer.models import Candle
from tests.integration.api.test_live_api import LiveStack
from tests.waiting import until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

KEY = "polygon-ws-key-1"
FIVE_MIN = 5 * 60_000


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("polygon-ws")
    async with LiveStack(tmp, api_keys=[KEY]) as live:
        yield live


def official(stack: LiveStack, subscriptions: list[str], **kwargs: Any) -> WebSocketClient:
    return WebSocketClient(
        api_key=kwargs.pop("api_key", KEY),
        feed=f"127.0.0.1:{stack.port}/polygon",
        market=kwargs.pop("market", "stocks"),
        secure=False,
        subscriptions=subscriptions,
        max_reconnects=0,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def running(
    client: WebSocketClient, received: list[Any]
) -> AsyncIterator[asyncio.Task[None]]:
    async def processor(messages: Any) -> None:
        received.extend(messages if isinstance(messages, list) else [messages])

    task = asyncio.create_task(client.connect(processor))
    try:
        yield task
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def values(candle: Candle) -> tuple[Any, ...]:
    return (candle.symbol, candle.timestamp, candle.open, candle.high, candle.low, candle.close,
            candle.volume, candle.vwap)  # fmt: skip


def agg_values(agg: EquityAgg) -> tuple[Any, ...]:
    return (agg.symbol, agg.start_timestamp, agg.open, agg.high, agg.low, agg.close, agg.volume,
            agg.vwap)  # fmt: skip


async def test_official_client_receives_the_stored_5m_candles(stack: LiveStack) -> None:
    symbol = stack.active_symbols(1)[0]
    received: list[Any] = []
    async with running(official(stack, [f"AM5m.{symbol}"]), received) as task:

        async def final_buckets_match() -> int:
            """5m buckets whose last received update equals the store's final candle."""
            assert not task.done(), task
            last: dict[int, EquityAgg] = {}
            for agg in received:
                last[agg.start_timestamp] = agg
            stored = await stack.stored(symbol, "5m")
            return sum(
                1
                for start, agg in last.items()
                if start in stored
                and stored[start].final
                and agg_values(agg) == values(stored[start])
            )

        for _ in range(600):  # up to a minute
            if await final_buckets_match() >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no two final 5m candles equal to the store's: {received}")
    assert received and all(isinstance(agg, EquityAgg) for agg in received)
    assert {agg.event_type for agg in received} == {"AM"}
    assert {agg.symbol for agg in received} == {symbol}
    assert all(agg.end_timestamp - agg.start_timestamp == FIVE_MIN for agg in received)
    published = {values(c) for c in stack.tap.candles if c.interval == "5m"}
    assert all(agg_values(agg) in published for agg in received)


async def test_raw_events_name_the_interval_and_follow_the_revisions(stack: LiveStack) -> None:
    symbols = stack.active_symbols(2)
    received: list[Any] = []
    channels = [f"AM15min.{symbols[0]}", f"AM.{symbols[1]}"]
    async with running(official(stack, channels, raw=True, market="crypto"), received):

        def events() -> list[dict[str, Any]]:
            return [e for frame in received for e in orjson.loads(frame)]

        await until(
            lambda: (
                {(e["sym"], e["interval"]) for e in events() if e.get("final")}
                == {(symbols[0], "15m"), (symbols[1], "1m")}
            ),
            60,
            "a final 15m and 1m candle of each symbol",
        )
    got = [e for e in events() if e["ev"] == "AM"]
    span = {"15m": 15 * 60_000, "1m": 60_000}
    by_key = {(c.symbol, c.interval, c.timestamp, c.revision): c for c in stack.tap.candles}
    revisions: dict[tuple[str, int], int] = {}
    for event in got:
        assert event["e"] - event["s"] == span[event["interval"]]
        candle = by_key[(event["sym"], event["interval"], event["s"], event["revision"])]
        assert (event["o"], event["h"], event["l"], event["c"], event["v"], event["final"]) == (
            candle.open, candle.high, candle.low, candle.close, candle.volume, candle.final
        )  # fmt: skip
        assert event.get("vw") == candle.vwap and event.get("n") == candle.trades
        key = (event["sym"], event["s"])
        assert event["revision"] > revisions.get(key, 0)  # revisions only increase
        revisions[key] = event["revision"]


async def test_official_client_with_a_wrong_key_gets_auth_error(stack: LiveStack) -> None:
    with pytest.raises(AuthError, match="authentication failed"):
        async with asyncio.timeout(10):
            await official(stack, ["AM.AAPL"], api_key="wrong").connect(_ignore)


async def _ignore(messages: Any) -> None:
    pass


# -- the protocol, with a plain client ---------------------------------------------------------


async def frames(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(out) < n:
            out += orjson.loads(await ws.recv())
    return out


async def statuses(ws: ClientConnection, n: int) -> list[tuple[str, str]]:
    """The next ``n`` status events (candle events in between are skipped)."""
    out: list[tuple[str, str]] = []
    async with asyncio.timeout(10):
        while len(out) < n:
            for event in orjson.loads(await ws.recv()):
                if event["ev"] == "status":
                    out.append((event["status"], event["message"]))
    return out


async def test_protocol_statuses_and_errors(stack: LiveStack, caplog: Any) -> None:
    url = f"ws://127.0.0.1:{stack.port}/polygon/stocks"
    async with connect(url, open_timeout=5) as ws:
        assert await statuses(ws, 1) == [("connected", "Connected Successfully")]
        await ws.send(orjson.dumps({"action": "subscribe", "params": "AM.AAPL"}).decode())
        assert (await statuses(ws, 1))[0][0] == "error"  # before auth
        await ws.send(orjson.dumps({"action": "auth", "params": KEY}).decode())
        assert await statuses(ws, 1) == [("auth_success", "authenticated")]
        for bad in ("{not json", "[1]", orjson.dumps({"action": "dance"}).decode()):
            await ws.send(bad)
            assert (await statuses(ws, 1))[0][0] == "error"
        params = "AM.AAPL, XA.AAPL, AM7m.AAPL, AM5m.bad ticker, AMfoo, AM60m.*"
        await ws.send(orjson.dumps({"action": "subscribe", "params": params}).decode())
        got = await statuses(ws, 6)
        assert got[0] == ("success", "subscribed to: AM.AAPL")
        assert [s for s, _ in got[1:5]] == ["error"] * 4
        assert "7m" in got[2][1] and "not configured" in got[2][1]
        assert got[5] == ("success", "subscribed to: AM60m.*")
        await ws.send(orjson.dumps({"action": "unsubscribe", "params": "AM60m.*"}).decode())
        assert await statuses(ws, 1) == [("success", "unsubscribed to: AM60m.*")]
    mars = f"ws://127.0.0.1:{stack.port}/polygon/mars"  # not public: the key in a header
    async with connect(mars, open_timeout=5, additional_headers={"X-API-Key": KEY}) as ws:
        event = (await frames(ws, 1))[0]
        assert event["status"] == "error" and "unknown market" in event["message"]
    # the key of the auth message never reaches a log line
    assert KEY not in caplog.text


async def test_wildcard_gets_every_symbol_of_the_interval(stack: LiveStack) -> None:
    url = f"ws://127.0.0.1:{stack.port}/polygon/stocks"
    async with connect(url, open_timeout=5) as ws:
        await ws.send(orjson.dumps({"action": "auth", "params": KEY}).decode())
        await ws.send(orjson.dumps({"action": "subscribe", "params": "AM.*"}).decode())
        seen: set[str] = set()
        async with asyncio.timeout(30):
            while len(seen) < 5:
                for event in orjson.loads(await ws.recv()):
                    if event["ev"] == "AM":
                        assert event["interval"] == "1m"
                        seen.add(event["sym"])
    assert stack.hub.wildcards == 0 or await _eventually_zero(stack)


async def _eventually_zero(stack: LiveStack) -> bool:
    await until(lambda: stack.hub.wildcards == 0, 5, "the wildcard released on disconnect")
    return True


async def test_frames_and_requests_match_the_asyncapi_document(stack: LiveStack) -> None:
    """What /polygon/{market} sends, statuses and AM events, validates against the channel's
    schemas in the served /asyncapi.json, and so do the requests it accepts."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.port}", timeout=10) as http:
        doc = (await http.get("/asyncapi.json", headers={"X-API-Key": KEY})).json()
    schemas = {
        m["name"]: jsonschema_rs.validator_for(m["payload"])
        for m in doc["channels"]["polygon"]["messages"].values()
    }
    requests = [
        {"action": "auth", "params": KEY},
        {"action": "subscribe", "params": "AM.*,AM15min.*,AM7m.AAPL"},  # one not configured
        {"action": "unsubscribe", "params": "AM15min.*"},
    ]
    for request in requests:
        schemas[str(request["action"])].validate(request)
    with pytest.raises(jsonschema_rs.ValidationError):
        schemas["subscribe"].validate({"action": "subscribe", "params": ["AM.AAPL"]})
    kinds: set[str] = set()
    url = f"ws://127.0.0.1:{stack.port}/polygon/crypto"
    async with connect(url, open_timeout=5) as ws:
        for request in requests:
            await ws.send(orjson.dumps(request).decode())
        async with asyncio.timeout(30):
            while not {"connected", "auth_success", "success", "error", "AM"} <= kinds:
                frame = orjson.loads(await ws.recv())
                schemas["events"].validate(frame)
                kinds |= {e["status"] if e["ev"] == "status" else e["ev"] for e in frame}
