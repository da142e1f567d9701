"""One live connection (WebSocket or SSE): its subscriptions and its bounded outgoing queue.

The hub appends to a client's queue and never waits for it; the connection's own writer task
takes everything queued at once (:meth:`LiveClient.take`) and does the socket I/O. The queue is
bounded (``settings.live_queue_messages``): when an item does not fit, :meth:`LiveClient.push`
and :meth:`LiveClient.offer` answer False and the hub drops the client (``slow consumer``), so a
slow client cannot slow the pipeline or the others.

**Snapshot then live, per pair.** A subscribed (symbol, interval) pair is in one of three
states:

* *deferred* (:meth:`LiveClient.defer`): subscribed, but the hub does not feed it yet (a
  WebSocket's pairs wait here until their own snapshot is read);
* *pending* (:meth:`LiveClient.begin_pending`): the hub feeds it and the client buffers its
  updates (counted against the same queue limit) while the snapshot is read;
* *live*: updates go to the queue.

:meth:`LiveClient.finish_snapshot` ends the pending state: it takes the snapshot's candles and
returns the buffered updates the snapshot does not cover, those whose (timestamp, revision) is
above the snapshot's for the same candle. The same filter stays on for ``COVER_S`` seconds, so
updates that were written to the store before the read but published after it are not sent a
second time (counted in ``skipped``). Per candle, updates reach a client in revision order, so
it sees the revisions of a candle strictly increasing.

:meth:`LiveClient.close` ends the client with a reason (``slow consumer``, ``server shutting
down``, ``live feed interrupted``, ``disconnected``) that its connection handler sends before
closing the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from typing import Literal

from api.live.messages import CandleEvent, Item, Pair
from speedlayer.models import Candle

ClientKind = Literal["ws", "sse"]
SLOW_CONSUMER = "slow consumer"
SHUTTING_DOWN = "server shutting down"
LIVE_FEED_INTERRUPTED = "live feed interrupted"  # reconnect: updates may have been missed
COVER_S = 60.0  # how long a snapshot's (timestamp, revision) filter stays on

_client_ids = itertools.count(1)


class LiveClient:
    """One WebSocket or SSE connection: its subscriptions and its bounded outgoing queue.

    ``pairs`` and ``wildcards`` (intervals subscribed with ``*``) are read by the hub and the
    connection handlers; they change only through the methods below."""

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

    # --- subscriptions -----------------------------------------------------------------------

    def defer(self, pair: Pair) -> None:
        """Subscribe ``pair`` without being fed yet (it waits for :meth:`begin_pending` or
        :meth:`go_live`); anything buffered or covered for it before is forgotten."""
        self._forget(pair)
        self.pairs.add(pair)
        self._deferred.add(pair)

    def begin_pending(self, pair: Pair) -> None:
        """Subscribe ``pair`` and buffer its updates until :meth:`finish_snapshot`; a buffer or
        snapshot filter it had before is dropped (a new snapshot is on its way)."""
        self.pairs.add(pair)
        self._deferred.discard(pair)
        old = self._pending.pop(pair, None)
        if old:
            self._pending_count -= len(old)
        self._pending[pair] = []
        self._covered.pop(pair, None)

    def go_live(self, pair: Pair) -> None:
        """Subscribe ``pair`` with its updates flowing (a deferral ends; a pair already waiting
        for its snapshot keeps buffering until then)."""
        self.pairs.add(pair)
        self._deferred.discard(pair)

    def unsubscribe(self, pair: Pair) -> None:
        """Drop ``pair``: no longer subscribed, nothing buffered or covered for it."""
        self.pairs.discard(pair)
        self._forget(pair)

    def add_wildcard(self, interval: str) -> None:
        self.wildcards.add(interval)

    def remove_wildcard(self, interval: str) -> bool:
        """Drop a wildcard subscription; False if the client did not have it."""
        if interval not in self.wildcards:
            return False
        self.wildcards.discard(interval)
        return True

    def drop_subscriptions(self) -> tuple[set[Pair], set[str]]:
        """Drop every subscription; returns the pairs and wildcard intervals it had."""
        pairs, wildcards = self.pairs, self.wildcards
        self.pairs = set()
        self.wildcards = set()
        return pairs, wildcards

    def is_deferred(self, pair: Pair) -> bool:
        return pair in self._deferred

    def deferred(self) -> list[Pair]:
        """The pairs still waiting to be fed."""
        return list(self._deferred)

    def is_pending(self, pair: Pair) -> bool:
        return pair in self._pending

    def _forget(self, pair: Pair) -> None:
        self._deferred.discard(pair)
        pending = self._pending.pop(pair, None)
        if pending:
            self._pending_count -= len(pending)
        self._covered.pop(pair, None)

    # --- the snapshot hand-over ----------------------------------------------------------------

    def finish_snapshot(self, pair: Pair, candles: list[Candle] | None) -> list[CandleEvent] | None:
        """End the pending state of ``pair``: its snapshot is ``candles`` (None: there is none,
        e.g. the store failed). Returns the buffered updates to send after the snapshot, those it
        does not cover, in order; the pair is live from now on, with the snapshot's filter on for
        ``COVER_S`` seconds. None when the pair was not pending or the client is closed: then
        nothing is to be sent, the snapshot neither."""
        pending = self._pending.pop(pair, None)
        if pending is None or self.closed_reason is not None:
            return None
        self._pending_count -= len(pending)
        if not candles:
            return pending
        self._covered[pair] = (
            time.monotonic() + COVER_S,
            {c.timestamp: c.revision for c in candles},
        )
        return [event for event in pending if self._is_new(pair, event.candle)]

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

    # --- the queue -----------------------------------------------------------------------------

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

    def take_events(self) -> list[CandleEvent]:
        """Remove the candle events queued so far and return them (other messages stay)."""
        events = [item for item in self.queue if isinstance(item, CandleEvent)]
        if events:
            others = [item for item in self.queue if not isinstance(item, CandleEvent)]
            self.queue.clear()
            self.queue.extend(others)
        return events

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

    def close(self, reason: str) -> None:
        """Stop: nothing more is queued or taken; the connection handler ends with ``reason``."""
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
