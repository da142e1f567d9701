"""WebSocket ``/ws``: subscribe to symbols x intervals, get a snapshot, then every update.

Client messages (JSON objects; an optional ``"id"`` is echoed in the reply)::

    {"action": "subscribe", "symbols": ["AAPL","MSFT"], "intervals": ["1m","15m"], "snapshot": 100}
    {"action": "unsubscribe", "symbols": ["MSFT"], "intervals": ["15m"]}
    {"action": "ping"}

Server messages (JSON objects with a ``type``): ``subscribed`` / ``unsubscribed`` (acks echoing
the request with canonical interval names), ``snapshot`` (``symbol``, ``interval``, ``candles``
oldest first: the last N stored, the forming one included), ``candle`` (one update, the candle's
fields at the top level plus ``seq``), ``error`` (``message``, and ``request`` when the message
parsed), ``pong``. See api/live/hub.py for the snapshot-then-live guarantee.

Batching: ``/ws?batch=1`` sends every frame as a JSON array of the messages above, in order (up to
``BATCH_MESSAGES`` per frame): one frame per burst instead of one per candle, for monitors that
follow many symbols (a full-market burst is ~80,000 candle updates).

Closes: 1013 when ``live_max_connections`` are connected; 1008 ``slow consumer`` when the client's
queue overflowed, 1011 ``live feed interrupted`` when the server's candle bus subscription failed
(updates may have been missed: reconnect for a fresh snapshot) and 1001 when the server shuts
down, each after an ``error`` message with the same reason (queued behind what the client has not
read yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import msgspec
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from api.deps import Resources
from api.live.client import LIVE_FEED_INTERRUPTED, SLOW_CONSUMER, LiveClient
from api.live.hub import CandleHub
from api.live.messages import NO_LIVE_MESSAGE, Message, parse_selection, split_selection
from speedlayer.errors import RequestError

log = logging.getLogger(__name__)
router = APIRouter()

CLOSE_TIMEOUT_S = 10.0  # how long a close frame may wait behind a client's unread data
BATCH_MESSAGES = 1000  # messages per frame at most with ?batch=1
CLOSE_CODES = {SLOW_CONSUMER: 1008, LIVE_FEED_INTERRUPTED: 1011}  # any other reason: 1001
_BATCH_VALUES = {"0": False, "false": False, "1": True, "true": True}
_decode = msgspec.json.Decoder().decode


@router.websocket("/ws", name="live candles (WebSocket)")
async def candle_socket(websocket: WebSocket) -> None:
    resources: Resources = websocket.app.state.resources
    hub = resources.hub
    await websocket.accept()
    batch = _BATCH_VALUES.get(websocket.query_params.get("batch", "0").lower())
    if batch is None:
        await websocket.send_text(Message("error", {"message": "batch must be 0 or 1"}).text)
        await websocket.close(1008, "batch must be 0 or 1")
        return
    client = hub.connect("ws")
    if client is None:
        limit = hub.settings.live_max_connections
        await websocket.close(1013, f"too many connections (limit {limit}); try again later")
        return
    try:
        await _Session(websocket, hub, client, batch).run()
    finally:
        hub.disconnect(client)


class _Session:
    def __init__(
        self, websocket: WebSocket, hub: CandleHub, client: LiveClient, batch: bool = False
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.client = client
        self.batch = batch
        self.settings = hub.settings
        self.disconnected = False

    async def run(self) -> None:
        client = self.client
        await run_connection(client, self._read(), self._write(), "ws")
        reason = client.closed_reason
        if reason is not None and reason != "disconnected" and not self.disconnected:
            code = CLOSE_CODES.get(reason, 1001)
            # A slow client's unread data is ahead of these: wait a little for it to read.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    text = Message("error", {"message": reason}).text
                    await self.websocket.send_text(f"[{text}]" if self.batch else text)
                    await self.websocket.close(code, reason)

    async def _write(self) -> None:
        send = self.websocket.send_text
        hub = self.hub
        while True:
            items = await self.client.take()
            if not items:
                return
            if self.batch:
                for i in range(0, len(items), BATCH_MESSAGES):
                    chunk = items[i : i + BATCH_MESSAGES]
                    await send("[" + ",".join([item.text for item in chunk]) + "]")
                    hub.delivered += len(chunk)
            else:
                for item in items:
                    await send(item.text)
                    hub.delivered += 1
            self.client.sent += len(items)

    async def _read(self) -> None:
        while True:
            try:
                text = await receive_text(self.websocket)
            except UnicodeDecodeError:
                self._error(NOT_UTF8)
                continue
            if text is None:
                self.disconnected = True
                return
            await self._handle(text)

    # --- requests ------------------------------------------------------------------------------

    def _send(self, kind: str, payload: dict[str, Any]) -> None:
        self.hub.send(self.client, Message(kind, payload))

    def _error(self, text: str, request: object = None) -> None:
        payload: dict[str, Any] = {"message": text}
        if request is not None:
            payload["request"] = request
        self._send("error", payload)

    async def _handle(self, text: str) -> None:
        limit = self.settings.live_max_message_bytes
        size = len(text.encode()) if len(text) * 4 > limit else len(text)
        if size > limit:
            self._error(f"message too large: {size} bytes (the limit is {limit})")
            return
        try:
            request = _decode(text)
        except msgspec.DecodeError as exc:
            self._error(f"invalid JSON: {exc}")
            return
        if not isinstance(request, dict):
            self._error('a message must be a JSON object with an "action"', request)
            return
        action = request.get("action")
        echo = {"id": request["id"]} if "id" in request else {}
        if action == "ping":
            self._send("pong", echo)
        elif action in ("subscribe", "unsubscribe"):
            try:
                await self._subscription(request, action == "subscribe", echo)
            except RequestError as exc:
                self._error(exc.message, request)
        else:
            self._error(
                f"unknown action {action!r}: expected subscribe, unsubscribe or ping", request
            )

    async def _subscription(
        self, request: dict[str, Any], subscribe: bool, echo: dict[str, Any]
    ) -> None:
        hub, client = self.hub, self.client
        symbols, intervals = parse_selection(
            self.settings, request.get("symbols"), request.get("intervals")
        )
        pairs, wild = split_selection(symbols, intervals)
        if not subscribe:
            hub.unsubscribe(client, pairs, wild)
            self._send(
                "unsubscribed",
                {
                    **echo,
                    "symbols": symbols,
                    "intervals": intervals,
                    "subscriptions": client.subscriptions,
                },
            )
            return
        snapshot = request.get("snapshot", 0)
        if isinstance(snapshot, bool) or not isinstance(snapshot, int) or snapshot < 0:
            raise RequestError('"snapshot" must be a whole number >= 0 (0 = no snapshot)')
        snapshot = min(snapshot, self.settings.live_max_snapshot)
        hub.subscribe(client, pairs, wild, mode="deferred" if snapshot > 0 else "live")
        ack: dict[str, Any] = {
            **echo,
            "symbols": symbols,
            "intervals": intervals,
            "snapshot": snapshot,
            "subscriptions": client.subscriptions,
            "live": hub.live,
        }
        if not hub.live:
            ack["message"] = NO_LIVE_MESSAGE
        self._send("subscribed", ack)
        if snapshot > 0 and pairs:
            await hub.send_snapshots(client, pairs, snapshot)


NOT_UTF8 = "binary messages must be UTF-8 JSON"


async def receive_text(websocket: WebSocket) -> str | None:
    """A client's next message as text (a binary one decoded as UTF-8, UnicodeDecodeError if it
    is not), or None once the client has disconnected."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    return text if text is not None else (message.get("bytes") or b"").decode()


async def run_connection(
    client: LiveClient,
    read: Coroutine[Any, Any, None],
    write: Coroutine[Any, Any, None],
    name: str,
) -> None:
    """A live connection's reader and writer, until either ends or the hub closes the client;
    then both are cancelled, and a failure that is not the peer going away is logged."""
    tasks = [
        asyncio.create_task(read, name=f"{name}-{client.id}-read"),
        asyncio.create_task(write, name=f"{name}-{client.id}-write"),
        asyncio.create_task(client.closed.wait(), name=f"{name}-{client.id}-closed"),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception) and not _is_disconnect(result):
                log.error("%s client %d failed", name, client.id, exc_info=result)


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, WebSocketDisconnect | ConnectionError | asyncio.CancelledError):
        return True
    # uvicorn's ClientDisconnected (a private type) and Starlette's "not connected" errors
    return type(exc).__name__ == "ClientDisconnected" or (
        isinstance(exc, RuntimeError) and "not connected" in str(exc).lower()
    )
