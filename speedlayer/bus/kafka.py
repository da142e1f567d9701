"""Kafka bus (aiokafka): one topic per bus topic, consumer groups with committed offsets.

Topics: ``market-data-raw`` and ``market-data-{interval}`` (optionally prefixed), created by
``ensure_topics()`` with the admin client (idempotent: an existing topic is fine); with
``create_topics=True`` (the default) ``publish`` and ``subscribe`` create the topics they use on
first touch. Records: key = symbol (so one symbol's records share a partition and keep their
order), value = the wire format of :mod:`speedlayer.bus.wire` (the same as on Kinesis).

**Publishing** goes through one idempotent producer (``enable_idempotence``, ``acks=all``): the
broker drops the duplicates that the producer's own retries of a batch would create, and keeps
each partition in send order. The producer retries retriable broker errors by itself until
``request_timeout_ms``; a record that still fails (the broker was down longer, the topic's
metadata was not there yet) is sent again by ``publish``, with backoff and jitter until
``retry_timeout_s``. A retry resends every record of that symbol from its first failed one on,
so a symbol's last record is always its newest (at least once: a record can appear twice).

**Consuming** (``subscribe(..., consumer=NAME)``): one AIOKafkaConsumer per subscription in the
consumer group ``NAME``, auto-commit off. A partition's records are handed to the subscription
queue first and their offset committed afterwards, so delivery is at least once and a restarted
consumer of the same group resumes after the last committed batch. A subscriber that sets
``subscription.auto_commit = False`` (see :mod:`speedlayer.bus.base`) commits by itself, once it
has finished the batches it got. A group with no committed offset starts at the end of the log
("from now on"; or at the oldest record kept with ``initial_position="TRIM_HORIZON"``, as on the
Kinesis bus) and commits that position as soon as it is assigned, so a restart does not skip what
was published in between; a ``publish`` on the same bus waits until new subscriptions to its
topic hold their positions, so nothing published after ``subscribe()`` returned is missed.
Partitions are balanced by Kafka's group coordinator between the members of a group (several
processes may share a consumer name, unlike the Kinesis bus).

**Broadcast** (``subscribe(..., consumer=None)``, the API's live hub): one AIOKafkaConsumer per
subscription without a group (no ``group_id``, no membership, no rebalances, nothing committed).
It looks up every partition of its topics, ``assign()``s them all to itself and seeks each to its
end, so every broadcast subscriber, in any number of processes, sees every record published once
it holds those positions (the ``initial_position`` of the bus does not apply: it always starts
"from now on"). A ``publish`` on the same bus waits for that, as for a durable subscription. The
partitions are looked up again every ``partition_refresh_s``: a partition added to a topic later
(or a topic created later) is assigned from its beginning, since everything in it was written
after the subscription started, and the partitions already assigned keep their positions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

from speedlayer.bus.base import RAW_TOPIC, ConsumerBus, InitialPosition, Subscription, candle_topic
from speedlayer.bus.wire import decode_record, encode_item
from speedlayer.errors import BusError, SpeedlayerError
from speedlayer.intervals import DEFAULT_INTERVALS
from speedlayer.retry import Backoff

__all__ = ["BusError", "KafkaBus", "Record"]

log = logging.getLogger(__name__)

Record = tuple[str, bytes, bytes]  # (Kafka topic name, key, value)


def is_retriable(exc: BaseException) -> bool:
    """Errors worth another try: the broker is (re)starting, moving leaders, not reachable."""
    return isinstance(exc, KafkaTimeoutError) or (
        isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))
    )


class KafkaBus(ConsumerBus):
    def __init__(
        self,
        bootstrap_servers: str | Sequence[str] = "127.0.0.1:9092",
        *,
        topic_prefix: str = "",
        partitions: int = 4,
        replication_factor: int = 1,
        intervals: Sequence[str] = DEFAULT_INTERVALS,
        create_topics: bool = True,
        client_id: str = "speedlayer",
        linger_ms: int = 5,
        request_timeout_ms: int = 30_000,
        retry_timeout_s: float = 60.0,
        poll_timeout_ms: int = 200,
        max_poll_records: int = 2000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        metadata_max_age_ms: int = 30_000,
        partition_refresh_s: float = 30.0,
        initial_position: InitialPosition = "LATEST",
    ) -> None:
        super().__init__(initial_position)
        if isinstance(bootstrap_servers, str):
            bootstrap_servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
        self.bootstrap_servers = list(bootstrap_servers)
        self.topic_prefix = topic_prefix
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.intervals = tuple(intervals)
        self.create_topics = create_topics
        self.client_id = client_id
        self.linger_ms = linger_ms
        self.request_timeout_ms = request_timeout_ms
        self.retry_timeout_s = retry_timeout_s
        self.poll_timeout_ms = poll_timeout_ms
        self.max_poll_records = max_poll_records
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.metadata_max_age_ms = metadata_max_age_ms
        self.partition_refresh_s = partition_refresh_s
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known_topics: set[str] = set()
        self._topic_lock = asyncio.Lock()
        self._consumers: dict[Subscription, AIOKafkaConsumer] = {}
        # counters (tests, metrics)
        self.records_sent = 0
        self.records_retried = 0
        self.send_errors = 0
        self.records_received = 0
        self.undecodable_records = 0
        # records without an item (deletes of an upsert topic, retractions), skipped
        self.tombstones = 0
        self.commits = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=self.request_timeout_ms,
            metadata_max_age_ms=self.metadata_max_age_ms,
        )
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=self.request_timeout_ms,
        )
        try:
            await self._retry("connect to Kafka", producer.start)
            await self._retry("connect the Kafka admin client", admin.start)
        except BaseException:
            await asyncio.gather(producer.stop(), admin.close(), return_exceptions=True)
            raise
        self._producer, self._admin = producer, admin

    async def stop(self) -> None:
        await self._close_subscriptions()
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if producer is not None:
            await producer.stop()  # flushes what is still buffered
        if admin is not None:
            await admin.close()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BusError("Kafka bus is not started")
        return self._producer

    @property
    def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise BusError("Kafka bus is not started")
        return self._admin

    def topic_name(self, topic: str) -> str:
        return self.topic_prefix + topic

    async def _retry(self, what: str, call: Any, *args: Any) -> Any:
        backoff = Backoff(timeout_s=self.retry_timeout_s, initial_s=0.1)
        while True:
            try:
                return await call(*args)
            except KafkaError as exc:
                if is_retriable(exc) and await backoff.sleep():
                    log.info("%s: %r; retrying", what, exc)
                    continue
                raise BusError(f"{what} failed: {exc!r}") from exc

    # -- topics ---------------------------------------------------------------------------------

    async def ensure(self) -> None:
        await self.ensure_topics()

    async def ping(self) -> None:
        """Raise BusError unless the brokers answer a metadata request (API readiness)."""
        try:
            await self.admin.describe_cluster()
        except KafkaError as exc:
            raise BusError(f"Kafka metadata request failed: {exc!r}") from exc

    async def ensure_topics(self, topics: Sequence[str] | None = None) -> None:
        """Create the topics (raw + one per interval by default) if missing, and wait until
        every partition has a leader. Idempotent."""
        if topics is None:
            topics = [RAW_TOPIC, *(candle_topic(name) for name in self.intervals)]
        names = [self.topic_name(t) for t in topics]
        async with self._topic_lock:
            missing = [n for n in dict.fromkeys(names) if n not in self._known_topics]
            if not missing:
                return
            new = [NewTopic(n, self.partitions, self.replication_factor) for n in missing]
            resp = await self._retry("CreateTopics", self.admin.create_topics, new)
            for entry in resp.topic_errors:
                name, code = entry[0], entry[1]
                if code and for_code(code) is not TopicAlreadyExistsError:
                    error = for_code(code)
                    if not error.retriable:
                        raise BusError(f"cannot create Kafka topic {name}: {error.__name__}")
            await self._wait_leaders(missing)
            self._known_topics.update(missing)

    async def _wait_leaders(self, names: list[str]) -> None:
        backoff = Backoff(timeout_s=self.retry_timeout_s, initial_s=0.05, cap_s=0.5)
        while True:
            described = await self._retry("Metadata", self.admin.describe_topics, names)
            ready = {
                t["topic"]
                for t in described
                if not t["error_code"]
                and t["partitions"]
                and all(p["leader"] >= 0 and not p["error_code"] for p in t["partitions"])
            }
            if ready >= set(names):
                return
            if not await backoff.sleep():
                raise BusError(f"Kafka topics {sorted(set(names) - ready)} have no leader")

    async def delete_topics(self, topics: Sequence[str]) -> None:
        """Delete topics (tests, teardown of a prefixed set); missing topics are fine."""
        names = [self.topic_name(t) for t in topics]
        await self._retry("DeleteTopics", self.admin.delete_topics, names)
        self._known_topics.difference_update(names)

    # -- publish --------------------------------------------------------------------------------

    async def publish(self, topic: str, batch: Sequence[Any]) -> None:
        if not batch:
            return
        self.producer  # noqa: B018 - raises BusError when the bus is not started
        await self._wait_for_consumers(topic)  # subscriptions still being assigned partitions
        if self.create_topics:
            await self.ensure_topics([topic])
        name = self.topic_name(topic)
        errors = await self.deliver(
            [(name, item.symbol.encode(), encode_item(item)) for item in batch]
        )
        failed = [exc for exc in errors if exc is not None]
        if failed:
            raise BusError(
                f"publishing to Kafka topic {name}: {len(failed)} of {len(batch)} records not "
                f"delivered within {self.retry_timeout_s:g} s: {failed[0]!r}"
            ) from failed[0]

    async def deliver(
        self, records: Sequence[Record], timeout_s: float | None = None
    ) -> list[BaseException | None]:
        """Send (topic name, key, value) records and wait until all in-sync replicas have them.

        Failures are retried with backoff until ``timeout_s`` (default ``retry_timeout_s``);
        a retry resends every record of the failed record's (topic, key) from that record on,
        so each key keeps its order. Returns, per record, None when delivered, else the error
        (a record resent for order's sake carries its key's error). A non-retriable error ends
        the retries at once."""
        results: list[BaseException | None] = [None] * len(records)
        pending = list(range(len(records)))
        backoff = Backoff(
            timeout_s=self.retry_timeout_s if timeout_s is None else timeout_s, initial_s=0.1
        )
        while True:
            errors = await self.send_once([records[i] for i in pending])
            first_failed: dict[tuple[str, bytes], BaseException] = {}
            retry: list[int] = []
            for i, exc in zip(pending, errors, strict=True):
                key = (records[i][0], records[i][1])
                if exc is not None and key not in first_failed:
                    first_failed[key] = exc
                failed = first_failed.get(key)
                results[i] = failed
                if failed is not None:
                    retry.append(i)
            if not retry:
                return results
            error = next(iter(first_failed.values()))
            if not all(is_retriable(exc) for exc in first_failed.values()):
                return results
            if not await backoff.sleep():
                return results
            self.records_retried += len(retry)
            log.info("Kafka: resending %d records after %r", len(retry), error)
            pending = retry

    async def send_once(self, records: Sequence[Record]) -> list[BaseException | None]:
        """One attempt (with the producer's own retries): the error of each record, or None."""
        producer = self.producer
        results: list[BaseException | None] = [None] * len(records)
        futures: list[tuple[int, asyncio.Future[Any]]] = []
        for index, (topic_name, key, value) in enumerate(records):
            try:
                futures.append((index, await producer.send(topic_name, value, key=key)))
            except KafkaError as exc:  # no metadata for the topic in time, buffer closed, ...
                for later in range(index, len(records)):
                    results[later] = exc
                break
        outcomes = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
        for (index, _), outcome in zip(futures, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                results[index] = outcome
        failed = sum(1 for r in results if r is not None)
        self.records_sent += len(records) - failed
        self.send_errors += failed
        return results

    # -- subscribe ------------------------------------------------------------------------------

    def _start_consumers(self, sub: Subscription, consumer: str | None) -> list[asyncio.Task[None]]:
        self.producer  # noqa: B018 - raises BusError when the bus is not started
        ready = self._starting_event(sub, sub.topics)
        run = (
            self._broadcast(sub, ready) if consumer is None else self._consume(sub, consumer, ready)
        )
        return [asyncio.get_running_loop().create_task(run)]

    def _decode(self, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """The items of a partition's fetched records; tombstones and undecodable records are
        counted and skipped."""
        items = []
        for record in records:
            if record.value is None:  # a tombstone: no item (flink_sql/sink.kafka.sql)
                self.tombstones += 1
                continue
            try:
                item = decode_record(record.value)
            except (msgspec.DecodeError, BusError) as exc:
                self.undecodable_records += 1
                log.warning("%s[%d]: skipping undecodable record at offset %d: %s",
                            tp.topic, tp.partition, record.offset, exc)  # fmt: skip
                continue
            if item is None:
                self.tombstones += 1
            else:
                items.append(item)
        self.records_received += len(items)
        return items

    async def _consume(self, sub: Subscription, group: str, ready: asyncio.Event) -> None:
        names = {self.topic_name(t): t for t in sub.topics}
        consumer: AIOKafkaConsumer | None = None
        try:
            if self.create_topics:
                await self.ensure_topics(sub.topics)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-{group}",
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest"
                if self.initial_position == "TRIM_HORIZON"
                else "latest",
                max_poll_records=self.max_poll_records,
                fetch_max_wait_ms=self.poll_timeout_ms,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                metadata_max_age_ms=self.metadata_max_age_ms,
                request_timeout_ms=self.request_timeout_ms,
            )
            await self._retry(f"start Kafka consumer {group}", consumer.start)
            self._consumers[sub] = consumer
            consumer.subscribe(list(names), listener=_Positions(self, consumer, ready))
            while True:
                batches = await consumer.getmany(timeout_ms=self.poll_timeout_ms)
                for tp, records in batches.items():
                    items = self._decode(tp, records)
                    position = records[-1].offset + 1
                    manual = not sub.auto_commit
                    if items and not await self._hand_over(
                        sub, names[tp.topic], items, (tp, position) if manual else None
                    ):
                        return  # the subscription was dropped
                    if not manual:
                        await self._commit_offsets(consumer, {tp: position})  # after hand-over
        except asyncio.CancelledError:
            raise
        except (SpeedlayerError, KafkaError) as exc:  # a backend failure, said in one line
            log.error("Kafka consumer %s on %s failed: %s", group, sorted(names), exc)
            sub.close(f"kafka consumer failed: {exc}", exc)
        except Exception as exc:  # a bug: with its traceback
            log.exception("Kafka consumer %s on %s failed", group, sorted(names))
            sub.close(f"kafka consumer failed: {exc}", exc)
        finally:
            ready.set()
            self._consumers.pop(sub, None)
            if consumer is not None:
                await consumer.stop()  # leaves the group: a successor is assigned at once

    async def _broadcast(self, sub: Subscription, ready: asyncio.Event) -> None:
        """Feed a broadcast subscription: every partition, assigned without a group, from the
        log end (see the module docstring); nothing is committed."""
        names = {self.topic_name(t): t for t in sub.topics}
        consumer: AIOKafkaConsumer | None = None
        loop = asyncio.get_running_loop()
        try:
            if self.create_topics:
                await self.ensure_topics(sub.topics)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-broadcast",
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                max_poll_records=self.max_poll_records,
                fetch_max_wait_ms=self.poll_timeout_ms,
                metadata_max_age_ms=self.metadata_max_age_ms,
                request_timeout_ms=self.request_timeout_ms,
            )
            await self._retry("start Kafka broadcast consumer", consumer.start)
            await self._assign_partitions(consumer, names, at_end=True)
            ready.set()  # every partition known now has its position: publishers may go on
            refresh_at = loop.time() + self.partition_refresh_s
            while True:
                if consumer.assignment():
                    batches = await consumer.getmany(timeout_ms=self.poll_timeout_ms)
                else:  # none of the topics exists yet (create_topics=False)
                    batches = {}
                    await asyncio.sleep(self.poll_timeout_ms / 1000)
                for tp, records in batches.items():
                    items = self._decode(tp, records)
                    if items and not await self._hand_over(sub, names[tp.topic], items):
                        return  # the subscription was dropped
                if loop.time() >= refresh_at:
                    await self._assign_partitions(consumer, names, at_end=False)
                    refresh_at = loop.time() + self.partition_refresh_s
        except asyncio.CancelledError:
            raise
        except (SpeedlayerError, KafkaError) as exc:  # a backend failure, said in one line
            log.error("Kafka broadcast consumer on %s failed: %s", sorted(names), exc)
            sub.close(f"kafka consumer failed: {exc}", exc)
        except Exception as exc:  # a bug: with its traceback
            log.exception("Kafka broadcast consumer on %s failed", sorted(names))
            sub.close(f"kafka consumer failed: {exc}", exc)
        finally:
            ready.set()
            if consumer is not None:
                await consumer.stop()

    async def _assign_partitions(
        self, consumer: AIOKafkaConsumer, names: dict[str, str], *, at_end: bool
    ) -> None:
        """Assign every partition of the topics ``names`` to a group-less consumer; those not
        assigned yet start at the log end (``at_end``: the subscription's start, every partition
        listed) or at their beginning (found later, so added since the start; only those with a
        leader, the others wait for the next look-up); the others keep their positions. Returns
        once every new partition's position is known (BusError after ``retry_timeout_s``)."""
        described = await self._retry("Metadata", self.admin.describe_topics, list(names))
        for t in described:
            error = for_code(t["error_code"]) if t["error_code"] else None
            if at_end and error is not None and error is not UnknownTopicOrPartitionError:
                # only a topic that does not exist yet may be read from its beginning later
                raise BusError(f"Kafka metadata of topic {t['topic']}: {error.__name__}")
        found = {
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if t["topic"] in names and not t["error_code"]  # a topic not there yet: later
            for p in t["partitions"]
            if at_end or (p["leader"] >= 0 and not p["error_code"])
        }
        current = set(consumer.assignment())
        new = found - current
        if not new:
            return
        try:
            async with asyncio.timeout(self.retry_timeout_s):
                # assign() replaces the assignment and forgets positions: keep the others'
                kept = {tp: await consumer.position(tp) for tp in current}
                consumer.assign(sorted(current | new))
                for tp, offset in kept.items():
                    consumer.seek(tp, offset)
                if at_end:
                    await consumer.seek_to_end(*new)
                else:
                    await consumer.seek_to_beginning(*new)
                for tp in new:
                    await consumer.position(tp)  # waits until the offset lookup is done
        except TimeoutError:
            raise BusError(
                f"Kafka: no position for partitions {sorted(new)} within {self.retry_timeout_s:g} s"
            ) from None
        if current:
            log.info("Kafka broadcast consumer: reading %d new partition(s) from their beginning: "
                     "%s", len(new), sorted(new))  # fmt: skip

    async def commit_positions(self, subscription: Subscription, marks: dict[Any, Any]) -> None:
        """Commit the positions of the batches a manual-commit subscription has finished."""
        consumer = self._consumers.get(subscription)
        if consumer is not None and marks:
            await self._commit_offsets(consumer, dict(marks))

    async def _commit_offsets(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]
    ) -> None:
        try:
            await self._retry("Kafka offset commit", consumer.commit, offsets)
            self.commits += 1
        except BusError as exc:
            # The group rebalanced (or the broker stayed away): the partition's new owner
            # resumes from the last committed offset; the batch is delivered again.
            log.warning("%s", exc)


class _Positions(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment: a partition the group never committed starts at the log end; commit that
    position at once (so a restart resumes there), then release the publishers waiting on it."""

    def __init__(self, bus: KafkaBus, consumer: AIOKafkaConsumer, ready: asyncio.Event) -> None:
        self.bus = bus
        self.consumer = consumer
        self.ready = ready

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        fresh: dict[TopicPartition, int] = {}
        for tp in assigned:
            if await self.consumer.committed(tp) is None:
                fresh[tp] = await self.consumer.position(tp)
        if fresh:
            await self.bus._commit_offsets(self.consumer, fresh)
        self.ready.set()
