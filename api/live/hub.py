"""The live candle hub: one bus subscription fanned out to WebSocket and SSE clients.

The hub subscribes once to every configured interval's candle topic (``market-data-{interval}``,
overflow ``block`` with a large queue: it only enqueues, never does I/O per client) as a
*broadcast* subscriber (``consumer=None``, :mod:`speedlayer.bus.base`): on Kafka without a
consumer group, every partition assigned to itself; on Kinesis with iterators of its own on every
shard and no checkpoint. So every API replica sees every candle update, and any number of
replicas can run behind a load balancer. The subscription starts at the end of the log ("from
now on"): what came before is in the store, which is where snapshots come from. Each replica
numbers the updates and keeps its replay ring itself, so an SSE ``Last-Event-ID`` resume works on
the replica that issued the id, and a reconnect that lands on another replica gets a fresh
snapshot: numbered from its own start time, the other replica's ids lie outside its window
(unless the two hubs started within ``sse_replay_events`` microseconds of each other, 0.1 s by
default). For each candle update it

* assigns the next global event sequence number (``seq``; it starts at the hub's start time in
  microseconds, so ids from an earlier process are recognisably older than this one's window),
* remembers the latest candle per (symbol, interval) (:meth:`CandleHub.latest`),
* appends the event to a bounded ring (``settings.sse_replay_events``) for SSE ``Last-Event-ID``
  resume,
* and offers it to every client subscribed to the pair (or to the interval with the ``*``
  wildcard); the event's JSON is encoded once and shared (:mod:`api.live.messages`).

A client that cannot take an update (its bounded queue is full, :mod:`api.live.client`) is
dropped at once (reason ``slow consumer``, counted in ``dropped_slow``): the hub never waits for
a client, so a slow one cannot slow the pipeline or the others. Each connection's own writer task
does the socket I/O.

**Snapshot then live, with no gap and no duplicate.** A pair subscribed with a snapshot is
registered *first*, pending (the client buffers its updates), and only then are its last N
candles read from the store. The pipeline writes the store before it publishes, so every update
published before the registration is in the snapshot, and every update published after it is in
the buffer. When the snapshot arrives, the hub queues it and then the buffered updates the
snapshot does not cover (:meth:`LiveClient.finish_snapshot`: same candle, revision at or below
the snapshot's). Per candle, updates reach the hub in revision order (the pipeline publishes
serially; a redelivered or older revision of a pair's newest candle, which an at-least-once bus
can produce, is dropped and counted in ``stale_skipped``), so a client sees revisions of a candle
strictly increasing.

A WebSocket registers its pairs one at a time, each just before its own snapshot is read, so
nothing waits in a buffer longer than one read. An SSE stream registers all its pairs at once and
emits every snapshot, then the buffered updates in event order, so event ids only grow along the
stream and a ``Last-Event-ID`` resume cannot skip anything.

**When the bus subscription fails.** If the consumer feeding the hub's subscription dies (a
Kafka or Kinesis consumer task failed: the subscription closes with an ``error``), the hub
subscribes again, with backoff (``RESUBSCRIBE_INITIAL_S`` doubling up to ``RESUBSCRIBE_CAP_S``,
jittered), until a new subscription holds its positions (a broadcast subscription resumes
nothing: it starts at the end of the log again); meanwhile :meth:`CandleHub.problem` says so and
``/readyz`` answers 503. Updates published in between may never reach the hub, so it closes
every connected client with ``live feed interrupted`` (WebSocket close code 1011, SSE a final
``event: error``), once when the subscription fails and again, for those connected meanwhile,
when the new one is in place; it also empties the replay ring and skips an event id, so no id
issued before can be resumed with ``Last-Event-ID``. Clients reconnect and get a fresh snapshot
(the dashboard does it by itself). A subscription closed because the hub stops is not a failure;
one closed by the bus stopping under a running hub ends the live feed, and ``problem()`` says so.

Wildcard subscriptions (``*`` for an interval, for monitors) get no snapshot and are limited per
process (``settings.live_max_wildcards``). Without a bus (``speedlayer api`` on its own) the hub
still serves snapshots, counts connections and enforces limits, but nothing is live.

Counters for /metrics are plain attributes: ``clients`` (connected, WebSocket + SSE; also
``ws_clients`` and ``sse_clients``), ``dropped_slow``, ``delivered`` (messages written to client
sockets), ``events`` (candle updates numbered and fanned out), ``stale_skipped``,
``connections_total``, ``rejected_connections`` (over ``live_max_connections``), ``wildcards``
(active wildcard subscriptions), ``last_event_at`` (wall time of the last update, 0 before any),
``interruptions`` (times live clients were closed because the bus subscription failed).
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

from api.live.client import (
    LIVE_FEED_INTERRUPTED,
    SHUTTING_DOWN,
    SLOW_CONSUMER,
    ClientKind,
    LiveClient,
)
from api.live.messages import CandleEvent, Item, Message, Pair
from speedlayer.bus.base import Bus, Subscription, candle_topic
from speedlayer.config import Settings
from speedlayer.errors import RequestError, StoreError, SubscriptionClosed
from speedlayer.models import Candle
from speedlayer.retry import Backoff
from speedlayer.store.base import Store

log = logging.getLogger(__name__)

SubscribeMode = Literal["live", "pending", "deferred"]
HUB_QUEUE_BATCHES = 8192  # bus batches the hub may lag behind before the pipeline waits
DISPATCH_CHUNK = 500  # events dispatched between yields: below the per-client queue limit
SNAPSHOT_READERS = 4  # concurrent store reads for one SSE stream's snapshots
RESUBSCRIBE_INITIAL_S = 0.5  # the first wait before subscribing again after a failure
RESUBSCRIBE_CAP_S = 10.0  # the longest wait; a subscription that lived this long resets it


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
        self.interruptions = 0
        self._ring: deque[CandleEvent] = deque(maxlen=settings.sse_replay_events)
        self._latest: dict[Pair, Candle] = {}
        self._subs: dict[Pair, set[LiveClient]] = {}
        self._wild: dict[str, set[LiveClient]] = {}
        self._clients: set[LiveClient] = set()
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._problem: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.bus is None:
            log.warning("no candle bus: /ws and /stream/candles serve snapshots, no live updates")
            return
        self._subscription = self._subscribe(self.bus)
        self._tasks = [
            asyncio.create_task(self._supervise(self.bus, self._subscription), name="candle-hub"),
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

    def problem(self) -> str | None:
        """None while the live feed works (or the hub runs without a bus: snapshots only, by
        design); else what is wrong with its bus subscription."""
        return self._problem

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

    def count_stalled(self, client: LiveClient) -> None:
        """An SSE stream closed because its client read nothing for the send timeout: a slow
        consumer too (counted once, if its queue had not overflowed already)."""
        if client.closed_reason != SLOW_CONSUMER:
            self.dropped_slow += 1

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
            client.close("disconnected")

    def close_client(self, client: LiveClient, reason: str) -> None:
        """Stop feeding a client: its connection handler closes the socket with ``reason``."""
        if client.closed_reason is not None:
            return
        if reason == SLOW_CONSUMER:
            self.dropped_slow += 1
            log.info("dropping %s client %d: %s", client.kind, client.id, reason)
        self._unregister(client)
        client.close(reason)

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
            if mode == "deferred":
                self._discard(self._subs, pair, client)
                client.defer(pair)
            else:
                self._register_pair(client, pair, pending=mode == "pending")
        for interval in new_wild:
            client.add_wildcard(interval)
            self._wild.setdefault(interval, set()).add(client)
            self.wildcards += 1

    def unsubscribe(self, client: LiveClient, pairs: Sequence[Pair], wild: Sequence[str]) -> None:
        for pair in pairs:
            client.unsubscribe(pair)
            self._discard(self._subs, pair, client)
        for interval in wild:
            if client.remove_wildcard(interval):
                self._discard(self._wild, interval, client)
                self.wildcards -= 1

    def _register_pair(self, client: LiveClient, pair: Pair, *, pending: bool) -> None:
        self._subs.setdefault(pair, set()).add(client)
        if pending:
            client.begin_pending(pair)
        else:
            client.go_live(pair)

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
                if not client.is_deferred(pair):
                    continue  # unsubscribed meanwhile
                self._register_pair(client, pair, pending=True)
                rows = await self._read_snapshot(client, pair, limit)
                self._flush(client, pair, rows, None, client.push)
        finally:
            if client.closed_reason is None:
                for pair in client.deferred():
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

        wanted = [p for p in dict.fromkeys(pairs) if client.is_pending(p)]
        results = await asyncio.gather(*(read(pair) for pair in wanted))
        if client.closed_reason is not None:
            return []
        items: list[Item] = []
        events: list[CandleEvent] = []
        for pair, rows in zip(wanted, results, strict=True):
            self._flush(client, pair, rows, snapshot_id, items.append, events.append)
        events.extend(client.take_events())
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
        updates = client.finish_snapshot(pair, rows)
        if updates is None:
            return
        put_event = put_event or put
        if rows is not None:
            message = Message(
                "snapshot", {"symbol": pair[0], "interval": pair[1], "candles": rows}, snapshot_id
            )
            if put(message) is False:
                self.close_client(client, SLOW_CONSUMER)
                return
        for event in updates:
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

    def _subscribe(self, bus: Bus) -> Subscription:
        topics = [candle_topic(iv.name) for iv in self.settings.interval_set]
        # broadcast: no consumer name, so no shared position, group or checkpoint (every
        # replica reads every partition or shard, from the end of the log)
        return bus.subscribe(topics, maxsize=HUB_QUEUE_BATCHES, overflow="block", consumer=None)

    async def _supervise(self, bus: Bus, subscription: Subscription) -> None:
        """Consume ``subscription``; when it fails, interrupt the live clients and subscribe
        again, with backoff, until a new subscription is in place (see the module docstring)."""
        backoff = Backoff(initial_s=RESUBSCRIBE_INITIAL_S, cap_s=RESUBSCRIBE_CAP_S)
        while True:
            since = time.monotonic()
            await self._consume(subscription)
            if self._stopping:
                return
            reason = subscription.closed_reason or "closed"
            if not subscription.failed:
                self._problem = f"live feed: candle bus subscription closed ({reason})"
                log.warning("candle bus subscription ended (%s): live feeds stop", reason)
                return
            error = str(subscription.error)
            detail = reason if not error or error in reason else f"{reason}: {error}"
            failure = f"live feed: candle bus subscription failed: {detail}; resubscribing"
            self._problem = failure
            log.warning("%s", failure)
            self._interrupt()
            if time.monotonic() - since >= RESUBSCRIBE_CAP_S:
                backoff.reset()  # it had been working: start again with short waits
            while True:
                await backoff.sleep()  # unbounded: only stop() ends it
                try:
                    subscription = self._subscription = self._subscribe(bus)
                except Exception as exc:  # BusError (a broker away), or any other: try again
                    self._problem = f"{failure} (attempt {backoff.failures} failed: {exc})"
                    log.warning("subscribing to the candle bus failed: %s", exc)
                    continue
                if await subscription.wait_started():  # its consumers hold their positions
                    break
                self._problem = (
                    f"{failure} (attempt {backoff.failures} failed: {subscription.closed_reason})"
                )
                log.warning("subscribing to the candle bus failed: %s", subscription.closed_reason)
            self._interrupt()  # clients connected meanwhile may have missed updates too
            self._problem = None
            log.info("candle bus subscription restored; live feeds resume")

    def _interrupt(self) -> None:
        """Updates may have been lost: close every client (each reconnects for a fresh snapshot)
        and make no event id issued so far resumable (an emptied ring, and a skipped id that
        no event carries)."""
        self._ring.clear()
        self.seq += 1
        clients = list(self._clients)
        for client in clients:
            self.close_client(client, LIVE_FEED_INTERRUPTED)
        if clients:
            self.interruptions += 1
            log.warning("closed %d live clients: %s", len(clients), LIVE_FEED_INTERRUPTED)

    async def _consume(self, subscription: Subscription) -> None:
        """Dispatch the subscription's batches until it closes."""
        while True:
            try:
                _, batch = await subscription.get()
            except SubscriptionClosed:
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
        pairs, wildcards = client.drop_subscriptions()
        for pair in pairs:
            self._discard(self._subs, pair, client)
        for interval in wildcards:
            self._discard(self._wild, interval, client)
            self.wildcards -= 1

    @staticmethod
    def _discard(index: dict[Any, set[LiveClient]], key: Any, client: LiveClient) -> None:
        clients = index.get(key)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del index[key]
