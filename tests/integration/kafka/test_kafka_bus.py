"""KafkaBus against a real Kafka broker (KRaft, started by the ``kafka_broker`` fixtures).

Round trips, per-symbol order, consumer groups resuming from committed offsets, a publish that
outlives a broker restart or waits for its topic to be created, undecodable records skipped;
broadcast subscriptions (``consumer=None``): every subscriber in every process gets every record,
from now on, without a group, following partitions added later.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewPartitions

from speedlayer.bus.base import RAW_TOPIC, candle_topic
from speedlayer.bus.kafka import KafkaBus
from speedlayer.bus.wire import decode_item, encode_item
from speedlayer.errors import BusError, SubscriptionClosed
from speedlayer.models import Bar, Candle
from tests.bus_helpers import T0, assert_quiet, bars, collect, read_kafka_topic
from tests.kafka_broker import KafkaBroker

TOPICS = [RAW_TOPIC, candle_topic("5m")]


def candle(symbol: str, revision: int) -> Candle:
    return Candle(
        symbol, "5m", T0, 10.0, 11.0, 9.0, 10.5, 500.0, 10.2, 7, 5, revision > 2, revision,
        T0 // 1000 + 86_400,
    )  # fmt: skip


def new_bus(bootstrap: str, prefix: str, **kw: Any) -> KafkaBus:
    return KafkaBus(bootstrap, topic_prefix=prefix, retry_timeout_s=30, **kw)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def bus(kafka_bootstrap: str, prefix: str) -> AsyncIterator[KafkaBus]:
    async with new_bus(kafka_bootstrap, prefix) as b:
        await b.ensure_topics(TOPICS)
        yield b


async def test_round_trip_bars_and_candles(bus: KafkaBus) -> None:
    sub = bus.subscribe(TOPICS, consumer=f"g-{uuid.uuid4().hex[:8]}")
    sent_bars = bars(["AAPL", "MSFT", "BRK.B"], range(5))
    sent_candles = [candle("AAPL", 1), candle("AAPL", 2)]
    await bus.publish(RAW_TOPIC, sent_bars)
    await bus.publish(candle_topic("5m"), sent_candles)
    got: dict[str, list[Any]] = {RAW_TOPIC: [], candle_topic("5m"): []}
    async with asyncio.timeout(20):
        while sum(len(v) for v in got.values()) < len(sent_bars) + len(sent_candles):
            topic, batch = await sub.get()
            got[topic].extend(batch)
    assert sorted(got[RAW_TOPIC], key=lambda b: (b.symbol, b.t)) == sorted(
        sent_bars, key=lambda b: (b.symbol, b.t)
    )
    assert got[candle_topic("5m")] == sent_candles  # one symbol: one partition, in order
    assert all(type(x) is Bar for x in got[RAW_TOPIC])
    await assert_quiet(sub, 0.5)
    assert bus.records_sent == len(sent_bars) + len(sent_candles)
    assert bus.send_errors == 0


async def test_per_symbol_order_across_partitions(bus: KafkaBus) -> None:
    symbols = [f"S{i:03d}" for i in range(60)]
    sub = bus.subscribe([RAW_TOPIC], consumer=f"g-{uuid.uuid4().hex[:8]}")
    sent: list[Bar] = []
    for chunk in range(10):  # ten publishes, each a few minutes of every symbol
        batch = bars(symbols, range(chunk * 4, chunk * 4 + 4))
        sent.extend(batch)
        await bus.publish(RAW_TOPIC, batch)
    got = await collect(sub, len(sent))
    per_symbol: dict[str, list[int]] = {}
    for bar in got:
        per_symbol.setdefault(bar.symbol, []).append(bar.t)
    assert set(per_symbol) == set(symbols)
    for times in per_symbol.values():
        assert times == [T0 + m * 60_000 for m in range(40)]  # in order, once each


async def test_ensure_topics_is_idempotent(kafka_bootstrap: str, prefix: str) -> None:
    async with new_bus(kafka_bootstrap, prefix, intervals=["5m", "1h"]) as a:
        await a.ensure_topics()
        await a.ensure_topics()
        async with new_bus(kafka_bootstrap, prefix, intervals=["5m", "1h"]) as b:
            await b.ensure_topics()  # a second process finds them created
            names = set(await b.admin.list_topics())
    expected = {prefix + t for t in ["market-data-raw", "market-data-5m", "market-data-1h"]}
    assert expected <= names
    assert not any(n.startswith(prefix + "market-data-1m") for n in names)


async def test_restarted_consumer_resumes_from_committed_offsets(
    kafka_bootstrap: str, prefix: str
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    first, second, third = bars(["A", "B"], range(0, 5)), bars(["A", "B"], range(5, 9)), []
    async with new_bus(kafka_bootstrap, prefix) as bus:
        sub = bus.subscribe([RAW_TOPIC], consumer=group)
        await bus.publish(RAW_TOPIC, first)
        assert sorted(await collect(sub, len(first)), key=lambda b: (b.symbol, b.t)) == sorted(
            first, key=lambda b: (b.symbol, b.t)
        )
        await assert_quiet(sub, 0.3)  # the commit follows the hand-over
    async with new_bus(kafka_bootstrap, prefix) as bus:  # the consumer is down
        await bus.publish(RAW_TOPIC, second)
    async with new_bus(kafka_bootstrap, prefix) as bus:
        sub = bus.subscribe([RAW_TOPIC], consumer=group)
        other = bus.subscribe([RAW_TOPIC], consumer=group + "-new")  # a new group: from now on
        got = await collect(sub, len(second))
        assert sorted(got, key=lambda b: (b.symbol, b.t)) == sorted(
            second, key=lambda b: (b.symbol, b.t)
        )  # exactly what was published while it was down: nothing lost, nothing repeated
        third = bars(["C"], range(3))
        await bus.publish(RAW_TOPIC, third)
        assert await collect(other, len(third)) == third
        assert await collect(sub, len(third)) == third
        await assert_quiet(other, 0.3)


async def test_manual_commit_redelivers_what_was_not_finished(
    kafka_bootstrap: str, prefix: str
) -> None:
    """``auto_commit = False`` (the pipeline): a batch handed over but not committed is delivered
    again after a restart; once committed, it is not."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    first, second = bars(["A"], range(0, 3)), bars(["A"], range(3, 5))
    async with new_bus(kafka_bootstrap, prefix) as bus:
        sub = bus.subscribe([RAW_TOPIC], consumer=group)
        sub.auto_commit = False
        await bus.publish(RAW_TOPIC, first)
        assert await collect(sub, len(first)) == first  # handed over, never committed
    async with new_bus(kafka_bootstrap, prefix) as bus:
        sub = bus.subscribe([RAW_TOPIC], consumer=group)
        sub.auto_commit = False
        assert await collect(sub, len(first)) == first  # again: it was not finished
        await sub.commit()
        await bus.publish(RAW_TOPIC, second)
        assert await collect(sub, len(second)) == second  # not committed: comes back once more
    async with new_bus(kafka_bootstrap, prefix) as bus:
        sub = bus.subscribe([RAW_TOPIC], consumer=group)
        assert await collect(sub, len(second)) == second
        await assert_quiet(sub, 0.5)


async def test_trim_horizon_group_reads_what_was_kept(kafka_bootstrap: str, prefix: str) -> None:
    kept = bars(["A", "B"], range(3))
    async with new_bus(kafka_bootstrap, prefix) as bus:
        await bus.publish(RAW_TOPIC, kept)
    async with new_bus(kafka_bootstrap, prefix, initial_position="TRIM_HORIZON") as bus:
        sub = bus.subscribe([RAW_TOPIC], consumer=f"g-{uuid.uuid4().hex[:8]}")
        got = await collect(sub, len(kept))
        assert sorted(got, key=lambda b: (b.symbol, b.t)) == sorted(
            kept, key=lambda b: (b.symbol, b.t)
        )


async def test_publish_waits_for_a_topic_being_created(kafka_bootstrap: str, prefix: str) -> None:
    async with (
        new_bus(kafka_bootstrap, prefix, create_topics=False, request_timeout_ms=1500) as bus,
        new_bus(kafka_bootstrap, prefix) as admin_bus,
    ):
        batch = bars(["A", "B", "C"], range(3))
        publishing = asyncio.create_task(bus.publish(RAW_TOPIC, batch))
        await asyncio.sleep(2.5)  # longer than one metadata wait: publish must be retrying
        assert not publishing.done()
        await admin_bus.ensure_topics([RAW_TOPIC])
        await asyncio.wait_for(publishing, 30)
        assert bus.send_errors > 0 and bus.records_retried > 0
        got = await read_all(kafka_bootstrap, prefix + RAW_TOPIC, len(batch))
        assert sorted(got, key=lambda b: (b.symbol, b.t)) == sorted(
            batch, key=lambda b: (b.symbol, b.t)
        )


async def test_publish_without_topic_fails_clearly(kafka_bootstrap: str, prefix: str) -> None:
    async with KafkaBus(
        kafka_bootstrap,
        topic_prefix=prefix,
        create_topics=False,
        request_timeout_ms=500,
        retry_timeout_s=1.5,
    ) as bus:
        with pytest.raises(BusError, match="not delivered"):
            await bus.publish(RAW_TOPIC, bars(["A"], range(1)))


async def test_undecodable_records_are_skipped_and_counted(bus: KafkaBus, prefix: str) -> None:
    sub = bus.subscribe([RAW_TOPIC], consumer=f"g-{uuid.uuid4().hex[:8]}")
    await bus.publish(RAW_TOPIC, bars(["A"], range(1)))  # waits until the subscription is assigned
    for value in [b"not json", b'{"type":"trade","x":1}', b'{"type":"bar","symbol":1}', b""]:
        assert await bus.deliver([(prefix + RAW_TOPIC, b"A", value)]) == [None]
    good = bars(["A"], range(1, 3))
    await bus.publish(RAW_TOPIC, good)
    got = await collect(sub, 3)
    assert [b.t for b in got] == [T0, T0 + 60_000, T0 + 120_000]
    assert bus.undecodable_records == 4


async def test_slow_drop_subscription_is_closed(bus: KafkaBus) -> None:
    sub = bus.subscribe([RAW_TOPIC], maxsize=1, overflow="drop", consumer=f"g-{uuid.uuid4()}")
    for minute in range(4):  # separate publishes: separate fetches, more batches than fit
        await bus.publish(RAW_TOPIC, bars(["A"], range(minute, minute + 1)))
        await asyncio.sleep(0.3)
    with pytest.raises(SubscriptionClosed):
        async with asyncio.timeout(10):
            while True:
                await sub.get()
    assert sub.closed_reason == "slow consumer: queue full"
    assert bus.dropped_subscriptions == 1


# -- broadcast subscriptions (consumer=None), as the API's live hub uses -----------------------


async def consumer_groups(bus: KafkaBus) -> set[str]:
    return {str(group[0]) for group in await bus.admin.list_consumer_groups()}


def per_symbol(items: list[Bar]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for bar in items:
        out.setdefault(bar.symbol, []).append(bar.t)
    return out


async def test_broadcast_subscribers_in_two_processes_each_get_every_record(
    kafka_bootstrap: str, prefix: str
) -> None:
    """Two buses (two API replicas) subscribe without a consumer name to a topic of 4 partitions:
    each gets every record, in per-symbol order (members of one consumer group would split the
    partitions between them). No group is formed and nothing is committed."""
    symbols = [f"S{i:02d}" for i in range(24)]
    sent = bars(symbols, range(3))
    async with (
        new_bus(kafka_bootstrap, prefix, partitions=4) as publisher,
        new_bus(kafka_bootstrap, prefix) as one,
        new_bus(kafka_bootstrap, prefix) as two,
    ):
        await publisher.ensure_topics([RAW_TOPIC])
        groups = await consumer_groups(publisher)
        subs = [
            one.subscribe([RAW_TOPIC], consumer=None),
            two.subscribe([RAW_TOPIC], consumer=None),
        ]
        for sub in subs:  # the publisher is another bus: wait until they hold their positions
            assert not sub.durable
            assert await asyncio.wait_for(sub.wait_started(), 30)
        await publisher.publish(RAW_TOPIC, sent)
        for sub in subs:
            got = await collect(sub, len(sent))
            assert per_symbol(got) == per_symbol(sent)
            await assert_quiet(sub, 0.3)
        assert one.commits == two.commits == 0
        assert await consumer_groups(publisher) == groups


async def test_broadcast_starts_from_now_whatever_the_initial_position(
    kafka_bootstrap: str, prefix: str
) -> None:
    early = bars(["A", "B"], range(3))
    async with new_bus(kafka_bootstrap, prefix) as bus:
        await bus.publish(RAW_TOPIC, early)
    async with new_bus(kafka_bootstrap, prefix, initial_position="TRIM_HORIZON") as bus:
        sub = bus.subscribe([RAW_TOPIC], consumer=None)
        sub.auto_commit = False
        later = bars(["A", "B"], range(3, 5))
        await bus.publish(RAW_TOPIC, later)  # waits until the subscription holds its positions
        got = await collect(sub, len(later))
        assert per_symbol(got) == per_symbol(later)  # nothing of what came before
        await sub.commit()  # a broadcast subscription has nothing to commit
        await assert_quiet(sub, 0.5)
        assert bus.commits == 0


async def test_broadcast_reads_a_partition_added_later_from_its_beginning(
    kafka_bootstrap: str, prefix: str
) -> None:
    name = prefix + RAW_TOPIC
    async with new_bus(kafka_bootstrap, prefix, partitions=1, partition_refresh_s=1.0) as bus:
        await bus.ensure_topics([RAW_TOPIC])
        sub = bus.subscribe([RAW_TOPIC], consumer=None)
        first = bars(["A", "B"], range(2))
        await bus.publish(RAW_TOPIC, first)
        assert per_symbol(await collect(sub, len(first))) == per_symbol(first)

        await bus.admin.create_partitions({name: NewPartitions(2)})
        async with asyncio.timeout(20):  # until the broker lists the new partition with a leader
            while True:
                (topic,) = await bus.admin.describe_topics([name])
                if sum(1 for p in topic["partitions"] if p["leader"] >= 0) == 2:
                    break
                await asyncio.sleep(0.05)
        # Written to the new partition at once, likely before the subscription looks its
        # partitions up again: it must be read from the partition's beginning, not its end.
        added = bars(["NEW"], range(2))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for item in added:
                await producer.send_and_wait(name, encode_item(item), key=b"NEW", partition=1)
        finally:
            await producer.stop()
        assert await collect(sub, len(added)) == added
        more = bars(["A"], range(2, 4))
        await bus.publish(RAW_TOPIC, more)
        assert await collect(sub, len(more)) == more  # partition 0 kept its position
        await assert_quiet(sub, 0.5)


async def test_broadcast_reads_a_topic_created_after_it_subscribed(
    kafka_bootstrap: str, prefix: str
) -> None:
    async with (
        new_bus(kafka_bootstrap, prefix, create_topics=False, partition_refresh_s=0.5) as bus,
        new_bus(kafka_bootstrap, prefix, partitions=2) as creator,
    ):
        sub = bus.subscribe([RAW_TOPIC], consumer=None)
        assert await asyncio.wait_for(sub.wait_started(), 30)  # no topic, no partition: ready
        await creator.ensure_topics([RAW_TOPIC])
        sent = bars(["A", "B", "C", "D"], range(2))
        await creator.publish(RAW_TOPIC, sent)  # likely before the subscription looks again
        assert per_symbol(await collect(sub, len(sent))) == per_symbol(sent)
        await assert_quiet(sub, 0.3)


async def read_all(bootstrap: str, topic_name: str, n: int, within_s: float = 20) -> list[Any]:
    """Read a topic from the beginning with a group-less consumer (decoded items)."""
    return [
        decode_item(r.value) for r in await read_kafka_topic(bootstrap, topic_name, n, within_s)
    ]


# -- a broker of its own: stopped and started under a running publisher and consumer ----------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    yield broker
    broker.stop()


async def test_publish_and_consume_survive_a_broker_restart(own_broker: KafkaBroker) -> None:
    async with KafkaBus(
        own_broker.bootstrap, retry_timeout_s=60, request_timeout_ms=3000, partitions=2
    ) as bus:
        await bus.ensure_topics([RAW_TOPIC])
        sub = bus.subscribe([RAW_TOPIC], consumer="survivor")
        before = bars(["A", "B"], range(0, 3))
        await bus.publish(RAW_TOPIC, before)
        assert len(await collect(sub, len(before))) == len(before)

        await asyncio.to_thread(own_broker.stop)
        during = bars(["A", "B"], range(3, 8))
        publishing = asyncio.create_task(bus.publish(RAW_TOPIC, during))
        await asyncio.sleep(1.0)
        assert not publishing.done()  # the broker is down: publish keeps trying
        await asyncio.to_thread(own_broker.start)
        await asyncio.wait_for(publishing, 60)

        got = await collect(sub, len(during), within_s=60)
        per_symbol: dict[str, list[int]] = {}
        for bar in got:
            per_symbol.setdefault(bar.symbol, []).append(bar.t)
        for symbol in ["A", "B"]:
            expected = [b.t for b in during if b.symbol == symbol]
            seen = per_symbol[symbol]
            # at least once: every bar arrives (a resent run may repeat some), the newest last
            assert set(seen) == set(expected) and seen[-1] == expected[-1]


async def test_throughput_is_reported(kafka_bootstrap: str, prefix: str) -> None:
    symbols = [f"S{i:04d}" for i in range(1000)]
    batch = bars(symbols, range(10))  # 10,000 records
    async with new_bus(kafka_bootstrap, prefix) as bus:
        await bus.ensure_topics([RAW_TOPIC])
        sub = bus.subscribe([RAW_TOPIC], maxsize=10_000, consumer=f"g-{uuid.uuid4().hex[:8]}")
        await bus.publish(RAW_TOPIC, bars(["warm"], range(1)))
        await collect(sub, 1)
        began = time.perf_counter()
        await bus.publish(RAW_TOPIC, batch)
        published = time.perf_counter() - began
        await collect(sub, len(batch), within_s=60)
        received = time.perf_counter() - began
    print(
        f"\n[kafka] publish {len(batch) / published:,.0f} records/s; "
        f"publish -> subscriber {len(batch) / received:,.0f} records/s"
    )
    assert published > 0
