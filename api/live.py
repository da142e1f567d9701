"""The live candle hub: one bus subscription fanned out to WebSocket and SSE clients.

The hub subscribes once to every configured interval's candle topic (``market-data-{interval}``,
overflow ``block`` with a large queue: it only enqueues, never does I/O per client). For each
candle update it

* assigns the next global event sequence number (``seq``; it starts at the hub's start time in
  microseconds, so ids from an earlier process are recognisably older than this one's window),
* remembers the latest candle per (symbol, interval) (:meth:`CandleHub.latest`),
* appends the event to a bounded ring (``settings.sse_replay_events``) for SSE ``Last-Event-ID``
  resume,
* and appends it to the bounded queue (``settings.live_queue_messages``) of every client
  subscribed to the pair (or to the interval with the ``*`` wildcard). The JSON message is encoded
  once per event (lazily, on first use) and the same ``str``/``bytes`` is shared by every client.

A client whose queue is full is dropped at once (reason ``slow consumer``, counted in
``dropped_slow``): the hub never waits for a client, so a slow one cannot slow the pipeline or the
others. Each connection's own writer task does the socket I/O.

**Snapshot then live, with no gap and no duplicate.** A pair subscribed with a snapshot is
registered *first*, in a pending state in which the hub buffers its updates (counted against the
same queue limit), and only then are its last N candles read from the store. The pipeline writes
the store before it publishes, so every update published before the registration is in the
snapshot, and every update published after it is in the buffer. When the snapshot arrives, the hub
queues it and then the buffered updates, skipping those whose (timestamp, revision) the snapshot
already covers (a revision at or below the snapshot's for the same candle); the same filter stays
on for ``COVER_S`` seconds for updates that were written before the read but published after it.
Per candle, updates reach the hub in revision order (the pipeline publishes serially; a redelivered
or older revision of a pair's newest candle, which an at-least-once bus can produce, is dropped
and counted in ``stale_skipped``), so a client sees revisions of a candle strictly increasing.

A WebSocket registers its pairs one at a time, each just before its own snapshot is read, so
nothing waits in a buffer longer than one read. An SSE stream registers all its pairs at once and
emits every snapshot, then the buffered updates in event order, so event ids only grow along the
stream and a ``Last-Event-ID`` resume cannot skip anything.

Wildcard subscriptions (``*`` for an interval, for monitors) get no snapshot and are limited per
process (``settings.live_max_wildcards``). Without a bus (``speedlayer api`` on its own) the hub
still serves snapshots, counts connections and enforces limits, but nothing is live.

Counters for /metrics are plain attributes: ``clients`` (connected, WebSocket + SSE; also
``ws_clients`` and ``sse_clients``), ``dropped_slow``, ``delivered`` (messages written to client
sockets), ``events`` (candle updates numbered and fanned out), ``stale_skipped``,
``connections_total``, ``rejected_connections`` (over ``live_max_connections``), ``wildcards``
(active wildcard subscriptions), ``last_event_at`` (wall time of the last update, 0 before any).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from speedlayer.bus.base import Bus, Subscription, candle_topic
from speedlayer.config import Settings
from speedlayer.errors import ConfigError, RequestError, StoreError, SubscriptionClosed
from speedlayer.models import SYMBOL_RE, Candle
from speedlayer.store.base import Store

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (symbol, canonical interval name)
ClientKind = Literal["ws", "sse"]
SubscribeMode = Literal["live", "pending", "deferred"]
WILDCARD = "*"
SLOW_CONSUMER = "slow consumer"
SHUTTING_DOWN = "server shutting down"
NO_LIVE_MESSAGE = (
    "no live updates: this server runs without a candle bus (snapshots only); "
    "run `speedlayer up` for live candles"
)
HUB_CONSUMER = "api-live-hub"  # the consumer name on buses with durable positions (Kinesis)
HUB_QUEUE_BATCHES = 8192  # bus batches the hub may lag behind before the pipeline waits
DISPATCH_CHUNK = 500  # events dispatched between yields: below the per-client queue limit
COVER_S = 60.0  # how long a snapshot's (timestamp, revision) filter stays on
SNAPSHOT_READERS = 4  # concurrent store reads for one SSE stream's snapshots

_encode = msgspec.json.Encoder().encode
_client_ids = itertools.count(1)


class CandleEvent:
    """One candle update as the hub numbered it; its messages are encoded once, on first use."""

    __slots__ = ("_sse", "_text", "at", "candle", "seq")

    def __init__(self, seq: int, candle: Candle, at: float) -> None:
        self.seq = seq
        self.candle = candle
        self.at = at  # wall time (time.time()) when the hub received it
        self._text: str | None = None
        self._sse: bytes | None = None

    @property
    def text(self) -> str:
        """The ``candle`` message: ``{"type":"candle","seq":N,<the candle's fields>}``."""
        text = self._text
        if text is None:
            body = _encode(self.candle)
            text = self._text = f'{{"type":"candle","seq":{self.seq},{body[1:].decode()}'
        return text

    @property
    def sse(self) -> bytes:
        frame = self._sse
        if frame is None:
            frame = self._sse = f"id: {self.seq}\nevent: candle\ndata: {self.text}\n\n".encode()
        return frame


class Message:
    """A message for one client (ack, snapshot, error, pong): JSON text plus SSE event/id."""

    __slots__ = ("event", "id", "text")

    def __init__(self, event: str, payload: dict[str, Any], id: int | None = None) -> None:
        self.event = event
        self.id = id
        self.text = _encode({"type": event, **payload}).decode()

    @property
    def sse(self) -> bytes:
        head = f"id: {self.id}\n" if self.id is not None else ""
        return f"{head}event: {self.event}\ndata: {self.text}\n\n".encode()


Item = CandleEvent | Message


class LiveClient:
    """One WebSocket or SSE connection: its subscriptions and its bounded outgoing queue."""

    def __init__(self, kind: ClientKind, maxsize: int) -> None:
        self.id = next(_client_ids)
        self.kind: ClientKind = kind
        self.maxsize = maxsize
        self.pairs: set[Pair] = set()
        self.wildcards: set[str] = set()  # intervals subscribed with the * wildcard
        self.queue: deque[Item] = deque()
        self.closed_reason: str | None = None
        self.closed = asyncio.Event()
        self.sent = 0
        self.skipped = 0  # updates not sent because the snapshot already had them
        self._deferred: set[Pair] = set()  # subscribed, registered when its snapshot is read
        self._pending: dict[Pair, list[CandleEvent]] = {}  # registered, waiting for the snapshot
        self._pending_count = 0
        self._covered: dict[Pair, tuple[float, dict[int, int]]] = {}  # deadline, ts -> revision
        self._waiter: asyncio.Future[None] | None = None

    @property
    def subscriptions(self) -> int:
        return len(self.pairs) + len(self.wildcards)

    def push(self, item: Item) -> bool:
        """Queue one item; False if the queue is full (the caller drops the client)."""
        queue = self.queue
        if len(queue) + self._pending_count >= self.maxsize:
            return False
        queue.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    def offer(self, pair: Pair, event: CandleEvent) -> bool:
        """An update of a subscribed pair: buffer it, skip it (covered by the snapshot) or
        queue it. False if the client cannot take it."""
        pending = self._pending.get(pair)
        if pending is not None:
            if len(self.queue) + self._pending_count >= self.maxsize:
                return False
            pending.append(event)
            self._pending_count += 1
            return True
        if self._covered and not self._is_new(pair, event.candle):
            return True
        return self.push(event)

    def _is_new(self, pair: Pair, candle: Candle) -> bool:
        entry = self._covered.get(pair)
        if entry is None:
            return True
        deadline, covered = entry
        if time.monotonic() > deadline:
            del self._covered[pair]
            return True
        revision = covered.get(candle.timestamp)
        if revision is None:
            return True
        if candle.revision <= revision:
            self.skipped += 1
            return False
        del covered[candle.timestamp]  # later updates of this candle have higher revisions
        return True

    async def take(self) -> list[Item]:
        """Everything queued, waiting until there is something; ``[]`` once closed."""
        while not self.queue:
            if self.closed_reason is not None:
                return []
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        if self.closed_reason is not None:
            return []
        items = list(self.queue)
        self.queue.clear()
        return items

    def _close(self, reason: str) -> None:
        self.closed_reason = reason
        self.queue.clear()
        self._deferred.clear()
        self._pending.clear()
        self._pending_count = 0
        self._covered.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.closed.set()


def parse_selection(
    settings: Settings, symbols: object, intervals: object
) -> tuple[list[str], list[str]]:
    """Validate symbols (tickers or ``*``) and intervals (aliases allowed); canonical names out,
    duplicates removed, order kept. Raises RequestError with a message for the client."""
    if not isinstance(symbols, list) or not symbols:
        raise RequestError("symbols: give a non-empty list of tickers, e.g. AAPL,MSFT (or *)")
    if not isinstance(intervals, list) or not intervals:
        raise RequestError("intervals: give a non-empty list, e.g. 1m,15m")
    out_symbols: list[str] = []
    for symbol in symbols:
        if not isinstance(symbol, str) or (symbol != WILDCARD and SYMBOL_RE.match(symbol) is None):
            raise RequestError(f"symbol {symbol!r} is not a valid ticker (or * for all)")
        if symbol not in out_symbols:
            out_symbols.append(symbol)
    out_intervals: list[str] = []
    for interval in intervals:
        if not isinstance(interval, str):
            raise RequestError(f"interval {interval!r} is not a string")
        try:
            name = settings.interval_set.get(interval).name
        except ConfigError as exc:
            raise RequestError(str(exc)) from None
        if name not in out_intervals:
            out_intervals.append(name)
    return out_symbols, out_intervals


def split_selection(symbols: list[str], intervals: list[str]) -> tuple[list[Pair], list[str]]:
    """(exact pairs, wildcard intervals) of a validated selection."""
    pairs = [(s, iv) for s in symbols if s != WILDCARD for iv in intervals]
    wild = list(intervals) if WILDCARD in symbols else []
    return pairs, wild


class CandleHub:
    """See the module docstring. Lifecycle: ``start()`` / ``stop()`` (the app's lifespan)."""

    def __init__(self, settings: Settings, store: Store, bus: Bus | None) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.live = bus is not None
        self.seq = time.time_ns() // 1000  # event ids: increasing across restarts too
        self.events = 0
        self.clients = 0
        self.ws_clients = 0
        self.sse_clients = 0
        self.connections_total = 0
        self.rejected_connections = 0
        self.dropped_slow = 0
        self.delivered = 0
        self.wildcards = 0
        self.last_event_at = 0.0
        self.stale_skipped = 0  # updates at or below the revision already seen for the candle
        self._ring: deque[CandleEvent] = deque(maxlen=settings.sse_replay_events)
        self._latest: dict[Pair, Candle] = {}
        self._subs: dict[Pair, set[LiveClient]] = {}
        self._wild: dict[str, set[LiveClient]] = {}
        self._clients: set[LiveClient] = set()
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.bus is None:
            log.warning("no candle bus: /ws and /stream/candles serve snapshots, no live updates")
            return
        topics = [candle_topic(iv.name) for iv in self.settings.interval_set]
        self._subscription = self.bus.subscribe(
            topics, maxsize=HUB_QUEUE_BATCHES, overflow="block", consumer=HUB_CONSUMER
        )
        self._tasks = [
            asyncio.create_task(self._run(self._subscription), name="candle-hub"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        if self._subscription is not None:
            self._subscription.close("hub stopped")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for client in list(self._clients):
            self.close_client(client, SHUTTING_DOWN)

    # --- queries -----------------------------------------------------------------------------

    def latest(self, symbol: str, interval: str) -> Candle | None:
        """The newest candle (by bucket, then revision) the hub has seen for the pair since it
        started; None if none (ask the store)."""
        return self._latest.get((symbol, interval))

    def ring_window(self) -> tuple[int, int]:
        """(first, last) event seq still replayable; first > last when the ring is empty."""
        first = self._ring[0].seq if self._ring else self.seq + 1
        return first, self.seq

    # --- clients -----------------------------------------------------------------------------

    def connect(self, kind: ClientKind) -> LiveClient | None:
        """A new client, or None when ``live_max_connections`` are already connected."""
        if self.clients >= self.settings.live_max_connections:
            self.rejected_connections += 1
            return None
        client = LiveClient(kind, self.settings.live_queue_messages)
        self._clients.add(client)
        self.clients += 1
        self.connections_total += 1
        if kind == "ws":
            self.ws_clients += 1
        else:
            self.sse_clients += 1
        return client

    def disconnect(self, client: LiveClient) -> None:
        """The connection ended (idempotent)."""
        if client not in self._clients:
            return
        self._clients.discard(client)
        self.clients -= 1
        if client.kind == "ws":
            self.ws_clients -= 1
        else:
            self.sse_clients -= 1
        self._unregister(client)
        if client.closed_reason is None:
            client._close("disconnected")

    def close_client(self, client: LiveClient, reason: str) -> None:
        """Stop feeding a client: its connection handler closes the socket with ``reason``."""
        if client.closed_reason is not None:
            return
        if reason == SLOW_CONSUMER:
            self.dropped_slow += 1
            log.info("dropping %s client %d: %s", client.kind, client.id, reason)
        self._unregister(client)
        client._close(reason)

    def send(self, client: LiveClient, message: Message) -> None:
        """Queue a message for one client; a full queue drops it as a slow consumer."""
        if client.closed_reason is None and not client.push(message):
            self.close_client(client, SLOW_CONSUMER)

    def subscribe(
        self,
        client: LiveClient,
        pairs: Sequence[Pair],
        wild: Sequence[str],
        *,
        mode: SubscribeMode = "live",
    ) -> None:
        """Subscribe a client to pairs and wildcard intervals; all or nothing: raises
        RequestError over a limit. ``mode`` says how the pairs start:

        * ``live``: updates flow at once (no snapshot, or an SSE resume);
        * ``pending``: registered now, updates buffered until :meth:`snapshot_items` (SSE);
        * ``deferred``: counted now, registered one by one by :meth:`send_snapshots`, each just
          before its own snapshot is read (WebSocket: nothing is buffered longer than needed).
        """
        settings = self.settings
        new_pairs = [p for p in dict.fromkeys(pairs) if p not in client.pairs]
        new_wild = [iv for iv in dict.fromkeys(wild) if iv not in client.wildcards]
        total = client.subscriptions + len(new_pairs) + len(new_wild)
        if total > settings.live_max_subscriptions:
            raise RequestError(
                f"too many subscriptions: this would make {total} symbol x interval pairs (a "
                f"wildcard counts as one); the limit is {settings.live_max_subscriptions} per "
                "connection"
            )
        if new_wild and self.wildcards + len(new_wild) > settings.live_max_wildcards:
            raise RequestError(
                f"wildcard subscriptions are limited to {settings.live_max_wildcards} per server "
                f"({self.wildcards} in use); subscribe to symbols by name instead",
                status=503,
                code="too_many_wildcards",
            )
        for pair in dict.fromkeys(pairs):
            client.pairs.add(pair)
            if mode == "deferred":
                self._unregister_pair(client, pair)
                client._deferred.add(pair)
            else:
                self._register_pair(client, pair, pending=mode == "pending")
        for interval in new_wild:
            client.wildcards.add(interval)
            self._wild.setdefault(interval, set()).add(client)
            self.wildcards += 1

    def unsubscribe(self, client: LiveClient, pairs: Sequence[Pair], wild: Sequence[str]) -> None:
        for pair in pairs:
            client.pairs.discard(pair)
            self._unregister_pair(client, pair)
        for interval in wild:
            if interval in client.wildcards:
                client.wildcards.discard(interval)
                self._discard(self._wild, interval, client)
                self.wildcards -= 1

    def _register_pair(self, client: LiveClient, pair: Pair, *, pending: bool) -> None:
        client._deferred.discard(pair)
        self._subs.setdefault(pair, set()).add(client)
        if pending:
            old = client._pending.pop(pair, None)
            if old:
                client._pending_count -= len(old)
            client._pending[pair] = []
            client._covered.pop(pair, None)

    def _unregister_pair(self, client: LiveClient, pair: Pair) -> None:
        client._deferred.discard(pair)
        self._discard(self._subs, pair, client)
        pending = client._pending.pop(pair, None)
        if pending:
            client._pending_count -= len(pending)
        client._covered.pop(pair, None)

    async def _read_snapshot(
        self, client: LiveClient, pair: Pair, limit: int
    ) -> list[Candle] | None:
        """The pair's last ``limit`` stored candles, oldest first; None (and an error message
        to the client) if the store fails."""
        symbol, interval = pair
        try:
            rows = await self.store.query(
                symbol, self.settings.interval_set.get(interval), limit=limit, order="desc"
            )
        except StoreError as exc:
            log.warning("snapshot of %s %s failed: %s", symbol, interval, exc)
            self.send(
                client,
                Message(
                    "error",
                    {"message": f"snapshot of {symbol} {interval} failed: store unavailable"},
                ),
            )
            return None
        rows.reverse()
        return rows

    async def send_snapshots(self, client: LiveClient, pairs: Sequence[Pair], limit: int) -> None:
        """WebSocket: for each deferred pair, register it (buffering), read its snapshot, then
        queue the snapshot and the buffered updates it does not cover; the pair is then live.
        Pairs left over (the client closed meanwhile) are registered live, without snapshot."""
        try:
            for pair in dict.fromkeys(pairs):
                if client.closed_reason is not None:
                    return
                if pair not in client._deferred:
                    continue  # unsubscribed meanwhile
                self._register_pair(client, pair, pending=True)
                rows = await self._read_snapshot(client, pair, limit)
                self._flush(client, pair, rows, None, client.push)
        finally:
            if client.closed_reason is None:
                for pair in list(client._deferred):
                    self._register_pair(client, pair, pending=False)

    async def snapshot_items(
        self, client: LiveClient, pairs: Sequence[Pair], limit: int, snapshot_id: int
    ) -> list[Item]:
        """SSE: read the snapshots of the pending pairs (a few at a time), then, in one step,
        return every snapshot followed by the updates buffered meanwhile (pending pairs and
        wildcards alike) that the snapshots do not cover, in event order; the pairs are then
        live. Every later event has a higher id than all of these, so ids only grow along the
        stream and ``Last-Event-ID`` resumes without a gap."""
        gate = asyncio.Semaphore(SNAPSHOT_READERS)

        async def read(pair: Pair) -> list[Candle] | None:
            async with gate:
                return await self._read_snapshot(client, pair, limit)

        wanted = [p for p in dict.fromkeys(pairs) if p in client._pending]
        results = await asyncio.gather(*(read(pair) for pair in wanted))
        if client.closed_reason is not None:
            return []
        items: list[Item] = []
        events: list[CandleEvent] = []
        for pair, rows in zip(wanted, results, strict=True):
            self._flush(client, pair, rows, snapshot_id, items.append, events.append)
        queued = [item for item in client.queue if isinstance(item, CandleEvent)]
        others = [item for item in client.queue if not isinstance(item, CandleEvent)]
        client.queue.clear()
        client.queue.extend(others)
        events.extend(queued)
        events.sort(key=lambda event: event.seq)
        items.extend(events)
        return items

    def _flush(
        self,
        client: LiveClient,
        pair: Pair,
        rows: list[Candle] | None,
        snapshot_id: int | None,
        put: Callable[[Item], object],
        put_event: Callable[[CandleEvent], object] | None = None,
    ) -> None:
        """Hand over the snapshot (``rows`` oldest first; None: none) and the pair's buffered
        updates that it does not cover, and make the pair live. Synchronous: nothing slips in
        between. ``put`` returning False means the client's queue is full."""
        pending = client._pending.pop(pair, None)
        if pending is None or client.closed_reason is not None:
            return
        client._pending_count -= len(pending)
        put_event = put_event or put
        covered: dict[int, int] = {}
        if rows is not None:
            covered = {c.timestamp: c.revision for c in rows}
            message = Message(
                "snapshot", {"symbol": pair[0], "interval": pair[1], "candles": rows}, snapshot_id
            )
            if put(message) is False:
                self.close_client(client, SLOW_CONSUMER)
                return
        if covered:
            client._covered[pair] = (time.monotonic() + COVER_S, covered)
        for event in pending:
            if covered and not client._is_new(pair, event.candle):
                continue
            if put_event(event) is False:
                self.close_client(client, SLOW_CONSUMER)
                return

    def resume(
        self, client: LiveClient, pairs: Sequence[Pair], wild: Sequence[str], last_id: int
    ) -> list[CandleEvent] | None:
        """For an SSE reconnect: if every event after ``last_id`` is still in the ring, register
        the subscription live and return those events that match it, in order; else None (and
        nothing is registered: send a snapshot instead)."""
        first, last = self.ring_window()
        if not first - 1 <= last_id <= last:
            return None
        self.subscribe(client, pairs, wild, mode="live")
        if last_id == last:
            return []
        want_pairs, want_wild = client.pairs, client.wildcards
        out = []
        for event in itertools.islice(self._ring, last_id - first + 1, None):
            candle = event.candle
            if candle.interval in want_wild or (candle.symbol, candle.interval) in want_pairs:
                out.append(event)
        return out

    # --- the bus side --------------------------------------------------------------------------

    async def _run(self, subscription: Subscription) -> None:
        while True:
            try:
                _, batch = await subscription.get()
            except SubscriptionClosed as exc:
                if not self._stopping:
                    log.warning("candle bus subscription ended (%s): live feeds stop", exc.reason)
                return
            at = time.time()
            for start in range(0, len(batch), DISPATCH_CHUNK):
                try:
                    self._dispatch(batch[start : start + DISPATCH_CHUNK], at)
                except Exception:  # a bug here must not end every live feed
                    log.exception("dispatching candle updates failed")
                await asyncio.sleep(0)  # let the client writers run between chunks

    def _dispatch(self, candles: Sequence[Candle], at: float) -> None:
        subs, wild, ring, latest = self._subs, self._wild, self._ring, self._latest
        slow: list[LiveClient] = []
        seq = self.seq
        stale = 0
        for candle in candles:
            key = (candle.symbol, candle.interval)
            current = latest.get(key)
            if current is None or candle.timestamp > current.timestamp:
                latest[key] = candle
            elif candle.timestamp == current.timestamp:
                if candle.revision <= current.revision:
                    stale += 1  # redelivered (at-least-once buses): never send it twice
                    continue
                latest[key] = candle
            seq += 1
            event = CandleEvent(seq, candle, at)
            ring.append(event)
            clients = subs.get(key)
            if clients:
                for client in clients:
                    if not client.offer(key, event):
                        slow.append(client)
            monitors = wild.get(candle.interval)
            if monitors:
                for client in monitors:
                    if key not in client.pairs and not client.push(event):
                        slow.append(client)
            if slow:
                self.seq = seq
                for client in slow:
                    self.close_client(client, SLOW_CONSUMER)
                slow.clear()
        self.seq = seq
        self.events += len(candles) - stale
        self.stale_skipped += stale
        self.last_event_at = at

    def _unregister(self, client: LiveClient) -> None:
        for pair in client.pairs:
            self._discard(self._subs, pair, client)
        for interval in client.wildcards:
            self._discard(self._wild, interval, client)
            self.wildcards -= 1
        client.pairs = set()
        client.wildcards = set()

    @staticmethod
    def _discard(index: dict[Any, set[LiveClient]], key: Any, client: LiveClient) -> None:
        clients = index.get(key)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del index[key]
