"""What the Kinesis Lambda handlers share: reading the event, answering with failures, hosting.

**The event** is what a Kinesis event source mapping sends (one batch, from one shard, in shard
order)::

    {"Records": [{"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "AAPL",
                              "sequenceNumber": "4959...", "data": "<base64>",
                              "approximateArrivalTimestamp": 1704206400.123},
                  "eventSource": "aws:kinesis", "eventVersion": "1.0",
                  "eventID": "shardId-000000000000:4959...", "eventName": "aws:kinesis:record",
                  "awsRegion": "us-east-1", "invokeIdentityArn": "arn:aws:iam::...",
                  "eventSourceARN": "arn:aws:kinesis:us-east-1:...:stream/market-data-15m"}]}

``data`` is a record of the bus wire format (:mod:`speedlayer.bus.wire`), bare or in the Debezium
envelope the Flink job writes (its retractions, without a record, are counted apart and skipped:
they are no fault). A record that is not
(bad base64, bad JSON, an unknown type, a candle of an interval that is not configured or not on
its bucket boundary, a bar where candles are expected) is **counted and skipped**: retrying it
cannot help, so it is never reported as failed and never blocks the shard.

**The answer** uses the partial batch response format (``FunctionResponseTypes:
ReportBatchItemFailures`` on the event source mapping)::

    {"batchItemFailures": [{"itemIdentifier": "<sequenceNumber>"}, ...]}

Lambda resumes the shard at the lowest reported sequence number and checkpoints everything
before it, so handlers report every record from the first one whose effect is not certain, in
shard order; an empty list means the whole batch is done.

**Hosting.** AWS calls a plain ``handler(event, context)``. :class:`LambdaHost` keeps one event
loop and the clients built on it (lazily, at the first invocation) for the life of the execution
environment, so warm invocations reuse connections; the async core of each handler is what tests
call directly. Each entry point carries an async twin, ``async_handler(event, context)``, that
runs the same on the caller's event loop, and the close of its clients
(:func:`attach_async_entry`): the local runner (:mod:`processors.lambda_runner`) invokes the
twin for every shard and stream concurrently on its own loop, and closes the clients when it
ends. Clients still open at interpreter exit are closed by an ``atexit`` hook.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from speedlayer.bus.wire import decode_record
from speedlayer.errors import BusError
from speedlayer.intervals import IntervalSet
from speedlayer.models import SYMBOL_RE, Bar, Candle

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One Kinesis record of an event: its position in the batch, identity and payload."""

    index: int
    sequence: str
    partition_key: str
    data: bytes | None  # None: not base64


@dataclass
class DecodedBatch(Generic[T]):
    records: list[EventRecord]
    items: list[tuple[int, T]]  # (record index, item), in shard order
    skipped: Counter[str] = field(default_factory=Counter)
    retractions: int = 0  # change records without a value (speedlayer.bus.wire.decode_record)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def event_records(event: Mapping[str, Any]) -> tuple[list[EventRecord], Counter[str]]:
    """The records of a Kinesis event (those without a sequence number are counted, skipped)."""
    records: list[EventRecord] = []
    skipped: Counter[str] = Counter()
    raw = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(raw, list):
        if raw is not None:
            skipped["bad_event"] += 1
        return records, skipped
    for entry in raw:
        kinesis = entry.get("kinesis") if isinstance(entry, Mapping) else None
        sequence = kinesis.get("sequenceNumber") if isinstance(kinesis, Mapping) else None
        if not isinstance(sequence, str) or not sequence:
            skipped["no_sequence_number"] += 1
            continue
        assert isinstance(kinesis, Mapping)
        data: bytes | None
        try:
            data = base64.b64decode(kinesis.get("data") or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            data = None
        key = kinesis.get("partitionKey")
        records.append(
            EventRecord(len(records), sequence, key if isinstance(key, str) else "", data)
        )
    return records, skipped


def decode_candles(event: Mapping[str, Any], intervals: IntervalSet) -> DecodedBatch[Candle]:
    """The candles of an event, each with ``ttl`` set from its own bucket (event time):
    start + interval + the interval's retention. Anything else is counted and skipped."""
    records, skipped = event_records(event)
    by_name = {iv.name: iv for iv in intervals}
    items: list[tuple[int, Candle]] = []
    retractions = 0
    for record in records:
        reason = None
        if record.data is None:
            reason = "bad_base64"
        else:
            try:
                item = decode_record(record.data)
            except (msgspec.DecodeError, BusError):
                reason = "undecodable"
            else:
                if item is None:
                    retractions += 1
                elif isinstance(item, Bar):
                    reason = "not_a_candle"
                else:
                    interval = by_name.get(item.interval)
                    if interval is None:
                        reason = "unknown_interval"
                    elif interval.bucket_start(item.timestamp) != item.timestamp:
                        reason = "not_on_bucket_boundary"
                    elif SYMBOL_RE.match(item.symbol) is None:
                        reason = "bad_symbol"
                    else:
                        ttl = interval.ttl(item.timestamp)
                        if item.ttl != ttl:
                            item = msgspec.structs.replace(item, ttl=ttl)
                        items.append((record.index, item))
        if reason is not None:
            skipped[reason] += 1
            log.warning("skipping record %s (partition key %r): %s",
                        record.sequence, record.partition_key, reason)  # fmt: skip
    return DecodedBatch(records, items, skipped, retractions)


def latest_per_key(items: Iterable[tuple[int, Candle]]) -> list[tuple[int, Candle]]:
    """One candle per (interval, symbol, timestamp): the highest revision (the later record on
    a tie), with the index of the record that carried it; in record order."""
    best: dict[tuple[str, str, int], tuple[int, Candle]] = {}
    for index, candle in items:
        key = (candle.interval, candle.symbol, candle.timestamp)
        held = best.get(key)
        if held is None or candle.revision >= held[1].revision:
            best[key] = (index, candle)
    return sorted(best.values(), key=lambda pair: pair[0])


def batch_response(records: Sequence[EventRecord], first_failed: int | None) -> dict[str, Any]:
    """The partial batch response naming every record from index ``first_failed`` on."""
    if first_failed is None:
        return {"batchItemFailures": []}
    return {
        "batchItemFailures": [
            {"itemIdentifier": r.sequence} for r in records if r.index >= first_failed
        ]
    }


class BatchHandler:
    """The async core of a Lambda handler: its counters (tests, logs) and its answer."""

    name = "handler"

    def __init__(self) -> None:
        self.invocations = 0
        self.records = 0
        self.skipped = 0
        self.reported_failed = 0

    def respond(
        self, batch: DecodedBatch[Any], first_failed: int | None, began: float
    ) -> dict[str, Any]:
        """The partial batch response naming every record from ``first_failed`` on; counts the
        invocation's records and logs its summary."""
        response = batch_response(batch.records, first_failed)
        failed = len(response["batchItemFailures"])
        self.records += len(batch.records)
        self.skipped += batch.skipped_total
        self.reported_failed += failed
        log_summary(self.name, batch, failed, began)
        return response


def remaining_s(context: Any, margin_s: float = 2.0) -> float | None:
    """Seconds left in this invocation (minus a margin) from a Lambda context, if it has one."""
    get = getattr(context, "get_remaining_time_in_millis", None)
    if get is None:
        return None
    return max(0.0, float(get()) / 1000 - margin_s)


class LambdaHost(Generic[T]):
    """One lazily built resource (clients) per execution environment, and the loop it lives on.

    :meth:`run` (the AWS entry point) keeps a private event loop for the life of the environment;
    calls from several threads take turns, one invocation at a time. :meth:`invoke` does the same
    on the caller's running loop, where invocations may overlap (the resource is built once).
    :meth:`aclose` / :meth:`close` release the resource; an ``atexit`` hook closes what is still
    open when the interpreter exits and its loop can still run."""

    def __init__(
        self, build: Callable[[], Coroutine[Any, Any, T]], stop: Callable[[T], Awaitable[None]]
    ) -> None:
        self._build = build
        self._stop = stop
        self._loop: asyncio.AbstractEventLoop | None = None  # the private loop of run()
        self._resource: T | None = None
        self._home: asyncio.AbstractEventLoop | None = None  # the loop the resource lives on
        self._pending: asyncio.Task[T] | None = None  # a build in progress (invoke)
        self._lock = threading.Lock()
        atexit.register(self._close_at_exit)

    def _usable_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Forget a resource whose loop is closed; refuse one that lives on another loop."""
        home = self._home
        if self._resource is None or home is loop:
            return
        if home is None or home.is_closed():
            self._resource = self._home = None  # its loop is gone: nothing can close it now
            return
        raise RuntimeError(
            "the handler's clients live on another event loop: close them first "
            "(reset() or aclose())"
        )

    def run(self, call: Callable[[T], Awaitable[R]]) -> R:
        """``call(resource)`` on the private loop (the AWS entry point, synchronous)."""
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
            loop = self._loop
            self._usable_on(loop)
            if self._resource is None:
                self._resource = loop.run_until_complete(self._build())
                self._home = loop
            return loop.run_until_complete(call(self._resource))

    async def invoke(self, call: Callable[[T], Awaitable[R]]) -> R:
        """``await call(resource)`` on the running loop (the resource is built there once)."""
        loop = asyncio.get_running_loop()
        self._usable_on(loop)
        if self._resource is None:
            if self._pending is None or self._pending.get_loop() is not loop:
                self._pending = loop.create_task(self._build())
            task = self._pending
            try:
                resource = await asyncio.shield(task)  # a cancelled caller leaves it to others
            except BaseException:
                if task.done() and self._pending is task:
                    self._pending = None  # a failed build: the next invocation tries again
                raise
            if self._pending is task:
                self._pending = None
            if self._resource is None:
                self._resource, self._home = resource, loop
        return await call(self._resource)

    async def aclose(self) -> None:
        """Release the resource, from the loop it lives on or (the private loop) from a
        worker thread; a build in progress is cancelled."""
        loop = asyncio.get_running_loop()
        pending, self._pending = self._pending, None
        if pending is not None and pending.get_loop() is loop:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            built = not pending.cancelled() and pending.exception() is None
            if built and self._resource is None:  # built, but never handed out
                self._resource, self._home = pending.result(), pending.get_loop()
        if self._resource is not None and self._home is loop:
            resource, self._resource, self._home = self._resource, None, None
            await self._stop(resource)
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Release the resource and the private loop (tests; AWS simply freezes or ends the
        environment). Call :meth:`aclose` instead from inside the loop the resource lives on."""
        with self._lock:
            resource, home = self._resource, self._home
            if resource is not None and home is not None and not home.is_closed():
                if home.is_running():
                    raise RuntimeError("the handler's clients are in use: await aclose() there")
                home.run_until_complete(self._stop(resource))
            self._resource = self._home = None
            loop, self._loop = self._loop, None
            if loop is not None and not loop.is_closed():
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception as exc:  # at exit: say it, never fail the exit
            log.warning("closing the Lambda handler's clients at exit failed: %r", exc)


AsyncEntry = Callable[[Mapping[str, Any], Any], Awaitable[Any]]
ASYNC_ENTRY = "__lambda_async__"
ACLOSE = "__lambda_aclose__"


def attach_async_entry(
    handler: Callable[..., Any], entry: AsyncEntry, aclose: Callable[[], Awaitable[None]]
) -> None:
    """Give the AWS entry point ``handler(event, context)`` its async twin ``entry(event,
    context)`` (the same, on the caller's event loop) and the close of its clients: the local
    runner finds them there (:func:`async_entry`). AWS sees the plain function."""
    setattr(handler, ASYNC_ENTRY, entry)
    setattr(handler, ACLOSE, aclose)


def async_entry(
    handler: Any,
) -> tuple[AsyncEntry, Callable[[], Awaitable[None]]] | None:
    """The async twin and the close attached to ``handler``, if it has them."""
    entry, aclose = getattr(handler, ASYNC_ENTRY, None), getattr(handler, ACLOSE, None)
    if callable(entry) and callable(aclose):
        return entry, aclose
    return None


def log_summary(name: str, batch: DecodedBatch[Any], failed: int, began: float) -> None:
    log.info(
        "%s: %d records, %d items, %d skipped %s, %d reported failed, %.0f ms",
        name, len(batch.records), len(batch.items), batch.skipped_total,
        dict(batch.skipped), failed, (time.perf_counter() - began) * 1000,
    )  # fmt: skip
