"""Kinesis bus (aioboto3): one stream per topic, a polling consumer with durable checkpoints.

Streams: ``market-data-raw`` and ``market-data-{interval}`` (optionally prefixed), created by
``ensure_streams()``. Records: partition key = symbol; data = the Bar/Candle as msgspec JSON with
a ``"type"`` tag (``bar`` or ``candle``) as the first field, so any reader (a subscriber, a
Lambda, Flink's JSON format) sees one flat JSON object per record.

**Publishing** uses PutRecords (≤ 500 records, ≤ 5 MiB per request). Only the records a partial
failure reports (``FailedRecordCount``) are sent again, with backoff and jitter, until
``retry_timeout_s``. PutRecords does not promise order between the records of one request, and a
retry would land a failed record after a later one of the same key; so a request holds at most
one record per partition key ("rounds": the n-th item of every symbol), and the next round is
sent only once the previous one is fully written. Per-symbol order is kept even when some
records fail (a retried record may appear twice, next to itself: at-least-once).

**Consuming** (``subscribe(..., consumer=NAME)``): one polling task per shard (ListShards,
GetShardIterator, GetRecords). A batch is handed to the subscription queue first and its last
sequence number checkpointed afterwards in the DynamoDB table ``speedlayer_checkpoints``
(key: ``lease`` = consumer/stream, ``shard``), so delivery is at least once and a restart resumes
``AFTER_SEQUENCE_NUMBER`` the checkpoint; only a batch handed over but not yet checkpointed is
delivered again. A subscription with ``auto_commit = False`` (the candle pipeline, see
``bus/base.py``) is checkpointed only by its ``commit()``, after it has processed what it was
handed: each batch carries its shard position through the queue, and a closed shard's
``SHARD_END`` follows its last batch the same way (as an empty batch), so a ``kill -9`` between
hand-over and processing loses nothing. A consumer with no checkpoint starts at LATEST ("from now
on"), or at TRIM_HORIZON (the oldest record kept) with ``initial_position="TRIM_HORIZON"``;
a ``publish`` on the same bus waits until new subscriptions to its topic hold their iterators, so
nothing published after ``subscribe()`` returned is missed. (AT_TIMESTAMP would avoid that
wait, but kinesalite 3.3.3 never answers GetShardIterator AT_TIMESTAMP on an empty shard.) A child
shard is read only after its parents reached their end (the closed parent's end is checkpointed as
``SHARD_END``), so per-key order holds across resharding. ExpiredIteratorException re-gets the
iterator from the last checkpoint; throttling backs off. There is no lease coordination between
processes (unlike the KCL): run one process per consumer name.

**Broadcast** (``subscribe(..., consumer=None)``, the API's live hub): the same polling tasks, one
per shard, with iterators of their own and no checkpoint: nothing is read from or written to the
checkpoint table, so any number of processes each read every shard. The shards open when the
subscription starts are read from LATEST (whatever the bus's ``initial_position``), closed ones
are skipped; shards that appear later (the children of a split or merge) are read from
TRIM_HORIZON once their parents reached their end, as on the durable path, so resharding loses
nothing and keeps per-key order. ``publish`` waits for broadcast subscriptions' iterators too.
An expired iterator is renewed after the last record read (LATEST if none was read yet). Each
broadcast reader polls every shard like a durable consumer does: Kinesis allows 5 GetRecords
calls per second per shard across all readers, so raise ``poll_interval_s`` when many share a
stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from speedlayer.aws import (
    AWS_ERRORS,
    UNREACHABLE_S,
    call,
    error_code,
    is_throttle,
    is_unreachable,
    open_client,
)
from speedlayer.bus.base import RAW_TOPIC, ConsumerBus, InitialPosition, Subscription, candle_topic
from speedlayer.bus.wire import decode_item, decode_record, encode_item
from speedlayer.errors import BusError, SpeedlayerError
from speedlayer.intervals import DEFAULT_INTERVALS
from speedlayer.kinesis_shards import (
    SHARD_END,
    CheckpointTable,
    Shard,
    follow_shards,
    has_parent,
    list_shards,
    start_position,
)
from speedlayer.models import Bar, Candle
from speedlayer.retry import Backoff

__all__ = ["BusError", "KinesisBus", "decode_item", "encode_item", "plan_requests"]

log = logging.getLogger(__name__)

MAX_RECORDS = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024


def plan_requests(items: Sequence[Bar | Candle]) -> list[list[tuple[str, bytes]]]:
    """Split a batch into PutRecords requests: rounds with one record per symbol each (in the
    batch's order per symbol), each round cut at 500 records / 5 MiB."""
    per_key: dict[str, list[bytes]] = {}
    for item in items:
        data = encode_item(item)
        if len(data) + len(item.symbol.encode()) > MAX_RECORD_BYTES:
            raise BusError(f"record for {item.symbol} exceeds 1 MiB")
        per_key.setdefault(item.symbol, []).append(data)
    requests: list[list[tuple[str, bytes]]] = []
    depth = max((len(v) for v in per_key.values()), default=0)
    for n in range(depth):
        current: list[tuple[str, bytes]] = []
        size = 0
        for key, datas in per_key.items():
            if n >= len(datas):
                continue
            record_size = len(datas[n]) + len(key.encode())
            if current and (len(current) >= MAX_RECORDS or size + record_size > MAX_REQUEST_BYTES):
                requests.append(current)
                current, size = [], 0
            current.append((key, datas[n]))
            size += record_size
        if current:
            requests.append(current)
    return requests


class KinesisBus(ConsumerBus):
    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        dynamodb_endpoint_url: str | None = None,
        region: str = "us-east-1",
        credentials: tuple[str, str] | None = None,
        stream_prefix: str = "",
        shard_count: int = 1,
        intervals: Sequence[str] = DEFAULT_INTERVALS,
        checkpoint_table: str = "speedlayer_checkpoints",
        poll_interval_s: float = 0.2,
        get_records_limit: int = 1000,
        shard_refresh_s: float = 10.0,
        retry_timeout_s: float = 60.0,
        active_timeout_s: float = 120.0,
        initial_position: InitialPosition = "LATEST",
        create_checkpoint_table: bool = True,
    ) -> None:
        super().__init__(initial_position)
        self.create_checkpoint_table = create_checkpoint_table
        self.endpoint_url = endpoint_url
        self.dynamodb_endpoint_url = dynamodb_endpoint_url
        self.region = region
        self.credentials = credentials
        self.stream_prefix = stream_prefix
        self.shard_count = shard_count
        self.intervals = tuple(intervals)
        self.checkpoint_table = checkpoint_table
        self.poll_interval_s = poll_interval_s
        self.get_records_limit = get_records_limit
        self.shard_refresh_s = shard_refresh_s
        self.retry_timeout_s = retry_timeout_s
        self.active_timeout_s = active_timeout_s
        self._kinesis: Any = None
        self._dynamodb: Any = None
        self._checkpoints: CheckpointTable | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        # counters (tests, metrics)
        self.put_requests = 0
        self.records_put = 0
        self.records_retried = 0
        self.expired_iterators = 0
        self.retractions = 0  # change records without an item (flink_sql/sink.kinesis.sql)
        self.checkpoints_written = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._kinesis is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            self._kinesis = await open_client(
                stack, "kinesis", self.region, self.endpoint_url, self.credentials, 32
            )
            self._dynamodb = await open_client(
                stack, "dynamodb", self.region, self.dynamodb_endpoint_url, self.credentials, 32
            )
            self._stack = stack
            self._checkpoints = CheckpointTable(
                self._dynamodb,
                self.checkpoint_table,
                timeout_s=self.retry_timeout_s,
                error=BusError,
            )
            if self.create_checkpoint_table:
                await self._checkpoints.ensure(self.active_timeout_s)
        except BaseException as exc:
            self._kinesis = self._dynamodb = self._checkpoints = self._stack = None
            await stack.aclose()
            if isinstance(exc, AWS_ERRORS):
                raise BusError(f"cannot start the Kinesis bus: {exc}") from exc
            raise

    async def stop(self) -> None:
        await self._close_subscriptions()
        stack, self._stack = self._stack, None
        self._kinesis = self._dynamodb = self._checkpoints = None
        if stack is not None:
            await stack.aclose()

    @property
    def kinesis(self) -> Any:
        """The aiobotocore Kinesis client (tests register botocore event hooks on it)."""
        if self._kinesis is None:
            raise BusError("Kinesis bus is not started")
        return self._kinesis

    @property
    def dynamodb(self) -> Any:
        if self._dynamodb is None:
            raise BusError("Kinesis bus is not started")
        return self._dynamodb

    @property
    def _checkpoint_store(self) -> CheckpointTable:
        if self._checkpoints is None:
            raise BusError("Kinesis bus is not started")
        return self._checkpoints

    def stream_name(self, topic: str) -> str:
        return self.stream_prefix + topic

    async def _call(
        self, client: Any, op: str, ok_codes: frozenset[str] = frozenset(), **kwargs: Any
    ) -> Any:
        return await call(
            client, op, timeout_s=self.retry_timeout_s, error=BusError, ok_codes=ok_codes, **kwargs
        )

    # -- streams and the checkpoint table -------------------------------------------------------

    async def ensure(self) -> None:
        await self.ensure_streams()

    async def ensure_streams(self, topics: Sequence[str] | None = None) -> None:
        """Create the streams (raw + one per interval by default) if missing; wait for ACTIVE."""
        if topics is None:
            topics = [RAW_TOPIC, *(candle_topic(name) for name in self.intervals)]
        names = [self.stream_name(t) for t in topics]
        for name in names:  # CreateStream is rate-limited on AWS: one after the other
            await self._call(
                self.kinesis,
                "create_stream",
                frozenset({"ResourceInUseException"}),
                StreamName=name,
                ShardCount=self.shard_count,
            )
        await asyncio.gather(*(self._wait_stream_active(name) for name in names))

    async def _wait_stream_active(self, name: str) -> None:
        backoff = Backoff(timeout_s=self.active_timeout_s, initial_s=0.1, cap_s=1.0)
        while True:
            desc = await self._call(self.kinesis, "describe_stream", StreamName=name, Limit=1)
            if desc["StreamDescription"]["StreamStatus"] == "ACTIVE":
                return
            if not await backoff.sleep():
                raise BusError(f"Kinesis stream {name} did not become ACTIVE")

    async def commit_positions(self, subscription: Subscription, marks: dict[Any, Any]) -> None:
        for (lease, shard_id), sequence in marks.items():
            await self._checkpoint(lease, shard_id, sequence)

    async def ping(self) -> None:
        """Raise BusError unless Kinesis answers about a candle stream (API readiness)."""
        stream = self.stream_name(candle_topic(self.intervals[0]))
        await self._call(self.kinesis, "describe_stream_summary", StreamName=stream)

    async def checkpoints(self, consumer: str, topic: str) -> dict[str, str]:
        """The stored checkpoints of ``consumer`` on ``topic``: shard id -> sequence number
        (or ``SHARD_END`` for a shard read to its end)."""
        return await self._checkpoint_store.read(f"{consumer}/{self.stream_name(topic)}")

    async def _checkpoint(self, lease: str, shard_id: str, sequence: str) -> None:
        await self._checkpoint_store.write(lease, shard_id, sequence)
        self.checkpoints_written += 1

    # -- publish --------------------------------------------------------------------------------

    async def publish(self, topic: str, batch: Sequence[Any]) -> None:
        if not batch:
            return
        stream = self.stream_name(topic)
        await self._wait_for_consumers(topic)  # subscriptions still getting their iterators
        for request in plan_requests(batch):
            await self._put_records(stream, request)

    async def _put_records(self, stream: str, records: list[tuple[str, bytes]]) -> None:
        pending = records
        backoff = Backoff(timeout_s=self.retry_timeout_s)
        while True:
            try:
                self.put_requests += 1
                resp = await self.kinesis.put_records(
                    StreamName=stream,
                    Records=[{"Data": data, "PartitionKey": key} for key, data in pending],
                )
            except AWS_ERRORS as exc:
                if is_throttle(exc) and await backoff.sleep():
                    continue
                raise BusError(f"PutRecords to {stream} failed: {exc}") from exc
            failed = resp.get("FailedRecordCount") or 0
            self.records_put += len(pending) - failed
            if not failed:
                return
            pending = [
                rec for rec, result in zip(pending, resp["Records"], strict=True)
                if result.get("ErrorCode")
            ]  # fmt: skip
            self.records_retried += len(pending)
            if not await backoff.sleep():
                raise BusError(
                    f"PutRecords to {stream}: {len(pending)} records still failing after "
                    f"{self.retry_timeout_s:g} s"
                )

    # -- subscribe ------------------------------------------------------------------------------

    def _start_consumers(self, sub: Subscription, consumer: str | None) -> list[asyncio.Task[None]]:
        self.kinesis  # noqa: B018 - raises BusError when the bus is not started
        loop = asyncio.get_running_loop()
        return [
            loop.create_task(
                self._consume_stream(sub, topic, consumer, self._starting_event(sub, [topic]))
            )
            for topic in sub.topics
        ]

    async def _consume_stream(
        self, sub: Subscription, topic: str, consumer: str | None, ready: asyncio.Event
    ) -> None:
        """Read every shard of ``topic``'s stream into ``sub``: as the durable consumer
        ``consumer``, or as a broadcast reader for None (see the module docstring)."""
        stream = self.stream_name(topic)
        lease = None if consumer is None else f"{consumer}/{stream}"
        name = consumer or "(broadcast)"
        initial: InitialPosition = self.initial_position if lease is not None else "LATEST"
        from_now: set[str] = set()  # broadcast: the shards open at the start, read from LATEST

        async def start(shard: Shard, parents: list[str]) -> asyncio.Task[None]:
            sid = shard["ShardId"]
            sequence = checkpoints.get(sid)
            # from the beginning: a child shard (its parents were read to their end), or for a
            # broadcast reader, a shard created since it started
            beginning = has_parent(shard) if lease is not None else sid not in from_now
            iterator = await self._shard_iterator(stream, sid, sequence, beginning, initial)
            return asyncio.create_task(
                self._consume_shard(
                    sub, topic, lease, stream, sid, sequence, beginning, initial, iterator
                )
            )

        try:
            if consumer is None:
                checkpoints, from_now = await self._broadcast_start(stream)
            else:
                checkpoints = await self.checkpoints(consumer, topic)
            if checkpoints and consumer is not None:
                log.info("%s: consumer %s resumes after its checkpoints on %d shard(s)",
                         stream, consumer, len(checkpoints))  # fmt: skip
            await follow_shards(
                lambda: list_shards(
                    self.kinesis, stream, timeout_s=self.retry_timeout_s, error=BusError
                ),
                start,
                checkpoints,
                self.shard_refresh_s,
                on_listed=ready.set,
            )
        except asyncio.CancelledError:
            raise
        except SpeedlayerError as exc:  # a backend failure, said in one line
            log.error("Kinesis consumer %s on %s failed: %s", name, stream, exc)
            sub.close(f"kinesis consumer failed: {exc}", exc)
        except Exception as exc:  # a bug: with its traceback
            log.exception("Kinesis consumer %s on %s failed", name, stream)
            sub.close(f"kinesis consumer failed: {exc}", exc)
        finally:
            ready.set()

    async def _broadcast_start(self, stream: str) -> tuple[dict[str, str], set[str]]:
        """Where a broadcast reader starts: the shards already closed count as read to their end
        (as if checkpointed ``SHARD_END``), so their children open now are not read from their
        beginning; the ids of the open shards, read from LATEST."""
        shards = await list_shards(
            self.kinesis, stream, timeout_s=self.retry_timeout_s, error=BusError
        )
        closed = {
            shard["ShardId"]: SHARD_END
            for shard in shards
            if shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
        }
        return closed, {shard["ShardId"] for shard in shards} - set(closed)

    async def _shard_iterator(
        self,
        stream: str,
        shard_id: str,
        sequence: str | None,
        beginning: bool,
        initial: InitialPosition,
    ) -> str:
        kwargs: dict[str, Any] = {"StreamName": stream, "ShardId": shard_id}
        kwargs.update(start_position(sequence, beginning, initial))
        resp = await self._call(self.kinesis, "get_shard_iterator", **kwargs)
        return str(resp["ShardIterator"])

    async def _consume_shard(
        self,
        sub: Subscription,
        topic: str,
        lease: str | None,
        stream: str,
        shard_id: str,
        sequence: str | None,
        beginning: bool,
        initial: InitialPosition,
        first_iterator: str,
    ) -> None:
        """Poll one shard into ``sub``; checkpoint under ``lease`` (nothing for None: a
        broadcast reader)."""
        iterator: str | None = first_iterator
        throttled = Backoff(initial_s=max(self.poll_interval_s, 0.01), cap_s=5.0)
        # Kinesis unreachable: retried for UNREACHABLE_S from the first failure in a row, then
        # the subscription fails.
        unreachable: Backoff | None = None
        while iterator is not None:
            try:
                resp = await self.kinesis.get_records(
                    ShardIterator=iterator, Limit=self.get_records_limit
                )
            except AWS_ERRORS as exc:
                code = error_code(exc)
                if code == "ExpiredIteratorException":
                    self.expired_iterators += 1
                    log.info("%s/%s: iterator expired; resuming after the last record read",
                             stream, shard_id)  # fmt: skip
                    iterator = await self._shard_iterator(
                        stream, shard_id, sequence, beginning, initial
                    )
                    continue
                if is_throttle(exc):
                    await throttled.sleep()
                    continue
                if is_unreachable(exc):
                    unreachable = unreachable or Backoff(timeout_s=UNREACHABLE_S)
                    if await unreachable.sleep():
                        continue
                raise BusError(f"GetRecords on {stream}/{shard_id} failed: {exc}") from exc
            throttled.reset()
            unreachable = None
            records = resp.get("Records", [])
            if records:
                items = []
                for record in records:
                    try:
                        item = decode_record(record["Data"])
                    except (msgspec.DecodeError, BusError) as exc:
                        log.warning("%s/%s: skipping undecodable record %s: %s",
                                    stream, shard_id, record["SequenceNumber"], exc)  # fmt: skip
                        continue
                    if item is None:
                        self.retractions += 1
                    else:
                        items.append(item)
                sequence = str(records[-1]["SequenceNumber"])
                if lease is None or sub.auto_commit:
                    if items and not await self._hand_over(sub, topic, items):
                        return  # the subscription was dropped
                    if lease is not None:
                        await self._checkpoint(lease, shard_id, sequence)  # after the hand-over
                elif not await self._hand_over(sub, topic, items, ((lease, shard_id), sequence)):
                    return
            iterator = resp.get("NextShardIterator")
            if iterator is None:  # a closed shard read to its end: its children come next
                if lease is None:
                    pass  # a broadcast reader keeps no position
                elif sub.auto_commit:
                    await self._checkpoint(lease, shard_id, SHARD_END)
                elif not await self._hand_over(sub, topic, [], ((lease, shard_id), SHARD_END)):
                    return
            elif not records:
                await asyncio.sleep(self.poll_interval_s)
