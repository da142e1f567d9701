"""Server-sent events: ``GET /stream/candles?symbols=AAPL,MSFT&intervals=5m``.

Events: ``snapshot`` (one per pair, ``id`` = the hub's sequence when the stream subscribed),
``candle`` (one update, ``id`` = its event sequence), ``error`` (the stream ends after it: a slow
consumer, the server shutting down, or ``live feed interrupted`` when the server's candle bus
subscription failed and updates may have been missed: reconnect for a fresh snapshot). A client
that reads nothing at all gets no ``error``: once the server's writes have been blocked for
``sse_send_timeout_s`` the stream is closed (counted as a dropped slow consumer), since nothing
more, an error event included, can be written to it. Comment
lines (``: ping ...``) every ``sse_heartbeat_s`` keep idle proxies from closing the stream.

Resume: a reconnect with ``Last-Event-ID`` (what ``EventSource`` sends by itself; or
``?last_event_id=`` for clients that cannot set headers) gets exactly the candle events after
that id that match its subscription, in order, if they are all still in the hub's replay ring
(``sse_replay_events``); otherwise a fresh snapshot. Updates in the ring that a snapshot already
covered may be replayed once more after a resume from a snapshot's id; de-duplicate by
(timestamp, revision) if that matters.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from api.deps import ResourcesDep
from api.errors import error_response
from api.live.client import LiveClient
from api.live.hub import CandleHub
from api.live.messages import (
    NO_LIVE_MESSAGE,
    CandleEvent,
    Message,
    Pair,
    parse_selection,
    split_selection,
)
from api.wire import ErrorBody
from speedlayer.errors import RequestError

log = logging.getLogger(__name__)
router = APIRouter()

REPLAY_CHUNK = 1000  # replayed events per write
DEFAULT_SNAPSHOT = 100

_DESCRIPTION = """\
A `text/event-stream` of candle updates for `symbols` x `intervals`.

* `event: snapshot`: `{"type":"snapshot","symbol","interval","candles":[...]}` per pair, oldest
  first (the last `snapshot` stored candles, the forming one included); then
* `event: candle`: `{"type":"candle","seq",<candle fields>}` for every update (forming and final,
  with `revision`); `id:` is `seq`, the server's global event sequence;
* `event: error`: `{"type":"error","message"}`, after which the stream ends (e.g. `slow consumer`:
  the client did not read fast enough and its bounded queue overflowed; `live feed interrupted`:
  updates may have been missed, reconnect for a fresh snapshot); a client that reads nothing at
  all for `SPEEDLAYER_SSE_SEND_TIMEOUT_S` seconds gets no error event: its stream is closed, since
  nothing more can be written to it;
* comment lines (`: ping ...`) every `SPEEDLAYER_SSE_HEARTBEAT_S` seconds.

Reconnect with `Last-Event-ID` (browsers' `EventSource` does it by itself) to receive exactly the
missed updates while they are within the replay window, else a fresh snapshot. `symbols=*` (all
symbols of the intervals, for monitors) is limited per server and gets no snapshot. Without a
candle bus (`speedlayer api`) the stream carries snapshots only.
"""


@router.get(
    "/stream/candles",
    summary="Live candles as server-sent events",
    description=_DESCRIPTION,
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        422: {"model": ErrorBody, "description": "a parameter is invalid; the message says which"},
        503: {"model": ErrorBody, "description": "too many connections or wildcard streams"},
    },
)
async def stream_candles(
    request: Request,
    resources: ResourcesDep,
    symbols: Annotated[
        str, Query(description="comma-separated tickers, or * for all", examples=["AAPL,MSFT"])
    ],
    intervals: Annotated[str, Query(description="comma-separated, e.g. 1m,15m")] = "1m",
    snapshot: Annotated[
        int, Query(ge=0, description="stored candles per pair sent first (0: none)")
    ] = DEFAULT_SNAPSHOT,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", include_in_schema=False)
    ] = None,
    last_event_id: Annotated[
        str | None, Query(description="resume after this event id (like Last-Event-ID)")
    ] = None,
) -> Response:
    hub = resources.hub
    settings = resources.settings
    try:
        symbol_list, interval_list = parse_selection(settings, _split(symbols), _split(intervals))
    except RequestError as exc:
        return error_response(exc.status, exc.code, exc.message)
    limit = min(snapshot, settings.live_max_snapshot)
    pairs, wild = split_selection(symbol_list, interval_list)
    client = hub.connect("sse")
    if client is None:
        return error_response(
            503,
            "too_many_connections",
            f"too many connections (limit {settings.live_max_connections}); try again later",
        )
    try:
        replay = None
        resume_from = _event_id(last_event_id_header or last_event_id)
        if resume_from is not None:
            replay = hub.resume(client, pairs, wild, resume_from)
        snapshot_id = hub.seq
        if replay is None:
            hub.subscribe(client, pairs, wild, mode="pending" if limit > 0 else "live")
    except RequestError as exc:
        hub.disconnect(client)
        return error_response(exc.status, exc.code, exc.message)
    events = _events(hub, client, replay, pairs if limit > 0 else [], limit, snapshot_id)
    return _LiveEventSource(
        events,
        on_close=lambda: hub.disconnect(client),
        ping=settings.sse_heartbeat_s,
        sep="\n",
        send_timeout=settings.sse_send_timeout_s,
        on_stalled=lambda: hub.count_stalled(client),
    )


class _LiveEventSource(EventSourceResponse):
    """Releases the hub client however the response ends (even if the stream never started)."""

    def __init__(
        self,
        content: Any,
        *,
        on_close: Callable[[], None],
        on_stalled: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close
        self._on_stalled = on_stalled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            # Nothing more can be written to this client, not even an error event.
            log.info("closing an SSE stream whose client stopped reading")
            self._on_stalled()
        finally:
            self._on_close()


async def _events(
    hub: CandleHub,
    client: LiveClient,
    replay: list[CandleEvent] | None,
    pairs: list[Pair],
    limit: int,
    snapshot_id: int,
) -> AsyncIterator[bytes]:
    # The hub client is released by _LiveEventSource once the response has ended, after a
    # stalled stream has been counted, so a stream is never seen gone but not yet counted.
    if not hub.live:
        yield f": {NO_LIVE_MESSAGE}\n\n".encode()
    if replay:
        for start in range(0, len(replay), REPLAY_CHUNK):
            chunk = replay[start : start + REPLAY_CHUNK]
            yield b"".join(event.sse for event in chunk)
            hub.delivered += len(chunk)
            client.sent += len(chunk)
    elif replay is None and pairs:
        items = await hub.snapshot_items(client, pairs, limit, snapshot_id)
        for start in range(0, len(items), REPLAY_CHUNK):
            part = items[start : start + REPLAY_CHUNK]
            yield b"".join(item.sse for item in part)
            hub.delivered += len(part)
            client.sent += len(part)
    while True:
        items = await client.take()
        if not items:
            reason = client.closed_reason or "closed"
            yield Message("error", {"message": reason}).sse
            return
        yield b"".join(item.sse for item in items)
        hub.delivered += len(items)
        client.sent += len(items)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _event_id(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and len(value) < 20 else None
