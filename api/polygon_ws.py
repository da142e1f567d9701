"""A Polygon-protocol WebSocket of live candles, for every configured interval.

``/polygon/{market}`` (market ``stocks``, ``options``, ``indices``, ``crypto`` or ``forex``)
speaks Polygon's (Massive's) WebSocket protocol (``speedlayer.polygon_ws``), so the official
client consumes live candles of any interval unchanged::

    WebSocketClient(api_key=KEY, feed="127.0.0.1:8000/polygon", market="stocks", secure=False,
                    subscriptions=["AM5m.AAPL", "AM.MSFT", "AM1h.*"])

(the client connects to ``{ws|wss}://{feed}/{market}``, so a ``feed`` with a path selects this
endpoint; ``secure=True`` behind a TLS proxy). The market names the client's event models
only: every symbol is served on every market path.

Channels: ``AM`` is the 1-minute candle (Polygon's own ``AM``), ``AM<interval>`` another
configured interval, by any spelling ``/intervals`` accepts (``AM5m``, ``AM15m``, ``AM1h``,
``AM60m``); the ticker is a symbol in any form the REST routes take (``X:BTCUSD`` is
``BTC-USD``: ``speedlayer.symbols``) or ``*`` for all (limited like ``/ws`` wildcards). The
success status names the channel as asked.

Events are Polygon ``AM`` aggregates, one per candle update, in frames of up to
``FRAME_EVENTS``: ``ev`` ``"AM"``, ``sym``, ``v`` (volume), ``vw`` (the candle's VWAP, absent
when no bar had one), ``o``, ``h``, ``l``, ``c``, ``z`` (average trade size, when trades are
known), ``s`` and ``e`` (bucket start and end, epoch ms), plus fields the official model ignores:
``interval`` (canonical name), ``n`` (trades, when known), ``final`` and ``revision``. The
official client decodes ``AM`` into its ``EquityAgg`` on every market and drops events of any
other ``ev`` (it logs "Unknown event type"), so the interval cannot be a new event type: the
parsed ``EquityAgg`` tells it by ``end_timestamp - start_timestamp``, and ``raw=True`` gives the
events with ``interval`` as sent. Polygon's day fields (``av``, ``op``, ``a``) are absent.

Updates come from the live hub (api/live/hub.py) like ``/ws`` without a snapshot: a forming
candle is sent again at each revision (the last one of a bucket has ``final: true``), revisions
of a candle only increase, a slow client is dropped (status ``slow_consumer``), and a failed bus
subscription closes the connection (status ``live_feed_interrupted``, close code 1011; the
official client reconnects and subscribes again).

Auth: the key is the ``auth`` message's ``params``. With ``SPEEDLAYER_API_KEYS`` set it must be
one of them (else ``auth_failed``); otherwise any key is accepted. Nothing but statuses is sent
before ``auth_success``; ``subscribe`` before it gets an ``error`` status.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from fastapi import APIRouter, WebSocket

from api.deps import Resources
from api.live.client import LIVE_FEED_INTERRUPTED, SLOW_CONSUMER, LiveClient
from api.live.hub import CandleHub
from api.live.messages import WILDCARD, CandleEvent, Item, Pair
from api.security import ApiKeys, KeyCheck
from api.ws import NOT_UTF8, receive_text, run_connection
from speedlayer.errors import ConfigError, RequestError
from speedlayer.intervals import Interval
from speedlayer.models import SYMBOL_RE
from speedlayer.polygon_ws import (
    AUTH_FAILED,
    AUTH_SUCCESS,
    CONNECTED,
    channels,
    status_frame,
    subscribed,
)
from speedlayer.symbols import canonical_symbol

router = APIRouter()

PREFIX = "/polygon/"
MARKETS = ("stocks", "options", "indices", "crypto", "forex")
PATHS: frozenset[str] = frozenset(PREFIX + market for market in MARKETS)
CHANNEL = "AM"
FRAME_EVENTS = 1000  # events per frame at most
CLOSE_TIMEOUT_S = 10.0
CLOSE_CODES = {SLOW_CONSUMER: 1008, LIVE_FEED_INTERRUPTED: 1011}  # any other reason: 1001
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def am_event(event: CandleEvent, interval: Interval) -> str:
    """The ``AM`` event of a candle update (JSON), encoded once per update."""
    text = event.polygon
    if text is None:
        c = event.candle
        body: dict[str, Any] = {"ev": CHANNEL, "sym": c.symbol, "v": c.volume}
        if c.vwap is not None:
            body["vw"] = c.vwap
        body.update(o=c.open, h=c.high, l=c.low, c=c.close)
        if c.trades:
            body["z"] = c.volume / c.trades
        body.update(s=c.timestamp, e=interval.bucket_end(c.timestamp), interval=c.interval)
        if c.trades is not None:
            body["n"] = c.trades
        body.update(final=c.final, revision=c.revision)
        text = event.polygon = _encode(body).decode()
    return text


@router.websocket("/polygon/{market}", name="Polygon-protocol live candles (WebSocket)")
async def polygon_socket(websocket: WebSocket, market: str) -> None:
    resources: Resources = websocket.app.state.resources
    hub = resources.hub
    await websocket.accept()
    if market not in MARKETS:
        reason = f"unknown market {market[:40]!r}: expected one of {', '.join(MARKETS)}"
        await websocket.send_text(status_frame("error", reason).decode())
        await websocket.close(1008, reason[:120])
        return
    client = hub.connect("ws")
    if client is None:
        limit = hub.settings.live_max_connections
        await websocket.send_text(
            status_frame("max_connections", f"too many connections (limit {limit})").decode()
        )
        await websocket.close(1013, "too many connections; try again later")
        return
    try:
        await _Session(websocket, hub, client).run()
    finally:
        hub.disconnect(client)


class _Session:
    def __init__(self, websocket: WebSocket, hub: CandleHub, client: LiveClient) -> None:
        self.websocket = websocket
        self.hub = hub
        self.client = client
        self.settings = hub.settings
        self.keys = ApiKeys.from_settings(hub.settings)
        self.intervals = {iv.name: iv for iv in hub.settings.interval_set}
        self.authed = False
        self.disconnected = False
        self.lock = asyncio.Lock()  # one sender at a time: statuses and event frames

    async def send(self, frame: str | bytes) -> None:
        async with self.lock:
            await self.websocket.send_text(frame if isinstance(frame, str) else frame.decode())

    async def run(self) -> None:
        await self.send(CONNECTED)
        client = self.client
        await run_connection(client, self._read(), self._write(), "polygon")
        reason = client.closed_reason
        if reason is not None and reason != "disconnected" and not self.disconnected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.send(status_frame(reason.replace(" ", "_"), reason))
                    await self.websocket.close(CLOSE_CODES.get(reason, 1001), reason)

    async def _write(self) -> None:
        hub, intervals = self.hub, self.intervals
        while True:
            items = await self.client.take()
            if not items:
                return
            texts = [am_event(item, intervals[item.candle.interval]) for item in _events(items)]
            for i in range(0, len(texts), FRAME_EVENTS):
                chunk = texts[i : i + FRAME_EVENTS]
                await self.send("[" + ",".join(chunk) + "]")
                hub.delivered += len(chunk)
            self.client.sent += len(items)

    async def _read(self) -> None:
        while True:
            try:
                text = await receive_text(self.websocket)
            except UnicodeDecodeError:
                await self._error(NOT_UTF8)
                continue
            if text is None:
                self.disconnected = True
                return
            await self._handle(text)

    async def _error(self, message: str) -> None:
        await self.send(status_frame("error", message))

    async def _handle(self, text: str) -> None:
        limit = self.settings.live_max_message_bytes
        if len(text) > limit or len(text.encode()) > limit:
            await self._error(f"message too large (the limit is {limit} bytes)")
            return
        try:
            request = _decode(text)
        except msgspec.DecodeError:
            await self._error('invalid JSON: expected {"action": ..., "params": ...}')
            return
        if not isinstance(request, dict):
            await self._error("invalid message: expected a JSON object with action, params")
            return
        action, params = request.get("action"), request.get("params")
        if action == "auth":
            await self._auth(params)
        elif action in ("subscribe", "unsubscribe"):
            if not self.authed:
                await self._error(f"not authorized: {action} needs a successful auth first")
            elif not isinstance(params, str):
                await self._error(f"invalid {action}: params must be a string")
            else:
                await self._subscription(action == "subscribe", params)
        else:
            shown = action if isinstance(action, str) else _encode(action).decode()
            await self._error(f"unknown action: {shown[:100]}")

    async def _auth(self, key: object) -> None:
        ok = isinstance(key, str) and (not self.keys.enabled or self.keys.check(key) is KeyCheck.OK)
        if ok:
            self.authed = True
        await self.send(AUTH_SUCCESS if ok else AUTH_FAILED)

    def _channel(self, prefix: str, ticker: str) -> tuple[list[Pair], list[str]]:
        """(pairs, wildcard intervals) of one channel; RequestError if it is not one."""
        if not prefix.startswith(CHANNEL):
            raise RequestError(f"unknown channel {prefix[:20]}: expected AM or AM<interval>")
        try:
            interval = self.settings.interval_set.get(prefix[len(CHANNEL) :] or "1m").name
        except ConfigError as exc:
            raise RequestError(f"unknown channel {prefix[:20]}: {exc}") from None
        if ticker == WILDCARD:
            return [], [interval]
        if SYMBOL_RE.match(ticker) is None:
            raise RequestError(f"invalid ticker {ticker[:40]!r}")
        return [(canonical_symbol(ticker), interval)], []

    async def _subscription(self, subscribe: bool, params: str) -> None:
        hub, client = self.hub, self.client
        for item in channels(params):
            if isinstance(item, str):
                await self._error(item)
                continue
            token, prefix, ticker = item
            async with self.lock:  # the status goes out before any event of the channel
                try:
                    pairs, wild = self._channel(prefix, ticker)
                    if subscribe:
                        hub.subscribe(client, pairs, wild, mode="live")
                    else:
                        hub.unsubscribe(client, pairs, wild)
                    frame = subscribed(subscribe, token)
                except RequestError as exc:
                    frame = status_frame("error", f"{exc.message} ({token[:100]})")
                await self.websocket.send_text(frame.decode())


def _events(items: list[Item]) -> list[CandleEvent]:
    # the hub queues only candle updates here: no snapshot is ever asked for
    return [item for item in items if isinstance(item, CandleEvent)]
