"""The Bus interface: topics carrying batches of items, bounded subscriptions.

Topics (docs/design.md#bus-contract): ``market-data-raw`` carries validated 1-minute bars;
``market-data-{interval}`` carries candle updates of one interval. A subscription is a bounded
queue of batches with one of two overflow policies: ``block`` (the publisher waits: for the
pipeline, which must lose nothing) or ``drop`` (the subscription is closed with a reason: for
clients that must never stall the rest).

Durable and broadcast subscriptions. ``subscribe(topics, consumer=NAME)`` (the default name is
``speedlayer``) is a *durable* subscription on buses that keep positions (Kinesis, Kafka): its
position is stored under NAME, a later subscription with the same name resumes there, and on
Kafka the subscriptions of one name share the partitions (a consumer group). ``consumer=None`` is
a *broadcast* subscription: no name, no stored position, no group. It reads every partition or
shard of its topics with positions of its own, starting at the end of the log once it holds them
("from now on", whatever the bus's ``initial_position``), and commits or checkpoints nothing
(``commit()`` does nothing), so any number of processes can each see every record: the API's
live hub, where every replica must see every candle update. A broadcast subscription that ends
loses its place; a new one starts "from now on" again. The in-process bus keeps no positions, so
every subscription there behaves as a broadcast one. Either kind receives everything published
after ``subscribe()`` returned by a publisher on the same bus object: ``publish`` waits until new
subscriptions to its topic hold their positions (``Subscription.wait_started`` waits for the
same); a publisher in another process has no such hand-shake.

Positions. On buses that keep consumer positions (Kinesis, Kafka) a durable subscription's
position normally advances as soon as a batch is on its queue ("auto commit": enough for a
consumer that only needs to skip, after a restart, what it was already handed). A consumer that
must not lose a batch it was handed but had not finished when the process died (the candle
pipeline) sets ``subscription.auto_commit = False`` right after ``subscribe()`` returns (before
awaiting anything) and calls ``await subscription.commit()`` once every batch ``get()`` returned
so far is done: a restart then resumes after the last committed batch, and delivery is at least
once even across ``kill -9``. Broadcast subscriptions and buses without positions accept both and
do nothing.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self

from speedlayer.errors import SubscriptionClosed

RAW_TOPIC = "market-data-raw"
Overflow = Literal["block", "drop"]
InitialPosition = Literal["LATEST", "TRIM_HORIZON"]


def candle_topic(interval: str) -> str:
    return f"market-data-{interval}"


_CLOSED = object()


class Subscription:
    """A bounded queue of batches from one or more topics. Iterate it, or ``await get()``."""

    def __init__(
        self,
        bus: Bus,
        topics: Sequence[str],
        maxsize: int,
        overflow: Overflow,
        consumer: str | None = None,
    ) -> None:
        self.bus = bus
        self.topics = tuple(topics)
        self.overflow = overflow
        self.consumer = consumer  # the durable consumer name; None for a broadcast subscription
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.closed_reason: str | None = None
        self.error: BaseException | None = None  # why the consumer feeding it failed, if it did
        self.delivered = 0
        self.auto_commit = True
        self._marks: dict[Any, Any] = {}  # position key -> position of the last batch returned
        self._starts: list[asyncio.Event] = []  # set once each consumer holds its positions

    async def get(self) -> tuple[str, list[Any]]:
        """The next (topic, batch); raises SubscriptionClosed once closed and drained."""
        if self.closed_reason is not None and self.queue.empty():
            raise SubscriptionClosed(self.closed_reason)
        item = await self.queue.get()
        if item is _CLOSED:
            raise SubscriptionClosed(self.closed_reason or "closed")
        self.delivered += 1
        if len(item) == 3:  # (topic, batch, (position key, position)) from a positioned bus
            topic, batch, (key, position) = item
            self._marks[key] = position
            return topic, batch
        topic, batch = item
        return topic, batch

    async def commit(self) -> None:
        """Advance the durable position past every batch ``get()`` has returned so far (only
        for ``auto_commit = False`` on buses with positions; a no-op otherwise)."""
        if not self._marks:
            return
        marks, self._marks = self._marks, {}
        try:
            await self.bus.commit_positions(self, marks)
        except BaseException:
            for key, position in marks.items():  # keep them for the next commit
                self._marks.setdefault(key, position)
            raise

    async def offer(self, item: tuple[Any, ...]) -> bool:
        """Queue one ``(topic, batch[, (position key, position)])`` by the overflow policy:
        ``block`` waits for room, ``drop`` closes a full subscription as a slow consumer.
        False when the subscription was dropped instead."""
        if self.overflow == "block":
            await self.queue.put(item)
        elif self.queue.full():
            self.close("slow consumer: queue full")
            return False
        else:
            self.queue.put_nowait(item)
        return True

    def track_start(self, started: asyncio.Event) -> None:
        """For buses: ``started`` is set once a consumer feeding this subscription holds its
        positions (or has failed)."""
        self._starts.append(started)

    async def wait_started(self) -> bool:
        """Wait until every consumer feeding the subscription holds its positions (at once on a
        bus without consumers); True if the subscription is then still open, False if it has
        closed meanwhile (see ``failed`` and ``error``)."""
        for started in self._starts:
            await started.wait()
        return self.closed_reason is None

    @property
    def durable(self) -> bool:
        """Whether the subscription has a consumer name (a stored position on buses that keep
        positions); False for a broadcast subscription (``consumer=None``)."""
        return self.consumer is not None

    @property
    def failed(self) -> bool:
        """Whether the subscription ended because the consumer feeding it failed (``error``),
        rather than being closed by its owner, by the bus stopping or as a slow consumer."""
        return self.error is not None

    def close(self, reason: str = "closed", error: BaseException | None = None) -> None:
        """Stop receiving; a pending ``get`` ends with SubscriptionClosed(reason). ``error``:
        the failure of the consumer that fed it (its owner must then fail or resubscribe)."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self.error = error
        self.bus.unsubscribe(self)
        while True:  # make room for the sentinel so a waiting reader wakes up
            try:
                self.queue.put_nowait(_CLOSED)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    def __aiter__(self) -> AsyncIterator[tuple[str, list[Any]]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[str, list[Any]]]:
        while True:
            try:
                yield await self.get()
            except SubscriptionClosed:
                return


class Bus(ABC):
    """Lifecycle: ``start``/``stop`` or ``async with``; no I/O in ``__init__``."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def publish(self, topic: str, batch: Sequence[Any]) -> None:
        """Deliver one batch to every subscription of ``topic`` (BusError if it could not be
        delivered; a failed publish may be sent again: subscribers see it at least once)."""

    async def ensure(self) -> None:
        """Create what the bus needs to carry every topic (streams, topics), idempotently; a bus
        with nothing to create does nothing."""
        return None

    async def ping(self) -> None:
        """Raise BusError unless the backend answers (for readiness checks)."""
        return None

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        maxsize: int = 1024,
        overflow: Overflow = "block",
        consumer: str | None = "speedlayer",
    ) -> Subscription:
        """A new subscription receiving batches published from now on.

        ``consumer`` names a durable consumer on backends that keep positions (Kinesis, Kafka): a
        subscription with the same name resumes where the last one stopped. ``None`` makes a
        broadcast subscription: every record published once it holds its positions, with no
        stored position and no group (see the module docstring). The in-process bus has no
        history, so it ignores the name.
        """
        sub = Subscription(self, topics, maxsize, overflow, consumer)
        self._open(sub, consumer)
        return sub

    @abstractmethod
    def _open(self, subscription: Subscription, consumer: str | None) -> None:
        """Start feeding a new subscription (BusError when the bus is not started); ``consumer``
        is None for a broadcast subscription."""

    @abstractmethod
    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop feeding ``subscription`` (called by ``Subscription.close``)."""

    async def commit_positions(self, subscription: Subscription, marks: dict[Any, Any]) -> None:
        """Store the positions of ``subscription`` (buses with durable positions override)."""
        return None


class ConsumerBus(Bus):
    """The part shared by buses whose subscriptions are fed by consumer tasks reading a durable
    log (Kinesis, Kafka): where a consumer without a stored position starts, the consumer tasks
    of each subscription, the hand-over of batches to the subscription's queue, and publishers
    waiting until new subscriptions to their topic hold their positions (so nothing published
    after ``subscribe()`` returned is missed)."""

    def __init__(self, initial_position: InitialPosition) -> None:
        if initial_position not in ("LATEST", "TRIM_HORIZON"):
            raise ValueError(
                f"initial_position must be LATEST or TRIM_HORIZON: {initial_position!r}"
            )
        self.initial_position: InitialPosition = initial_position
        self._tasks: dict[Subscription, list[asyncio.Task[None]]] = {}
        self._stopping: list[asyncio.Task[None]] = []
        self._starting: dict[str, list[asyncio.Event]] = {}
        self.dropped_subscriptions = 0

    @abstractmethod
    def _start_consumers(
        self, subscription: Subscription, consumer: str | None
    ) -> list[asyncio.Task[None]]:
        """The tasks that feed a new subscription (BusError when the bus is not started):
        durable ones for a consumer name, broadcast ones for None."""

    def _open(self, subscription: Subscription, consumer: str | None) -> None:
        self._tasks[subscription] = self._start_consumers(subscription, consumer)

    def unsubscribe(self, subscription: Subscription) -> None:
        for task in self._tasks.pop(subscription, []):
            task.cancel()
            self._stopping.append(task)

    async def _close_subscriptions(self) -> None:
        """Close every subscription and wait until its consumer tasks have ended."""
        for sub in list(self._tasks):
            sub.close("bus stopped")
        stopping, self._stopping = self._stopping, []
        await asyncio.gather(*stopping, return_exceptions=True)

    def _starting_event(self, sub: Subscription, topics: Sequence[str]) -> asyncio.Event:
        """An event for a new consumer of ``sub`` to set once it holds its positions on
        ``topics``; until then a ``publish`` to them waits (``_wait_for_consumers``), and so does
        ``sub.wait_started()``."""
        ready = asyncio.Event()
        sub.track_start(ready)
        for topic in topics:
            self._starting.setdefault(topic, []).append(ready)
        return ready

    async def _wait_for_consumers(self, topic: str) -> None:
        starting = self._starting.get(topic)
        if starting:
            await asyncio.gather(*(event.wait() for event in starting))
            self._starting[topic] = [e for e in starting if not e.is_set()]

    async def _hand_over(
        self, sub: Subscription, topic: str, items: list[Any], mark: tuple[Any, Any] | None = None
    ) -> bool:
        """Put one batch on the subscription's queue (with its position ``mark`` for a
        subscription that commits by itself); False when the subscription was dropped instead."""
        if await sub.offer((topic, items) if mark is None else (topic, items, mark)):
            return True
        self.dropped_subscriptions += 1
        return False
