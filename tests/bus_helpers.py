"""Helpers shared by the bus tests (Kinesis, Kafka) and the Lambda handler tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer

from speedlayer.bus.base import Subscription
from speedlayer.models import Bar

T0 = 1_704_206_220_000


def bars(symbols: Sequence[str], minutes: range) -> list[Bar]:
    """One bar per symbol and minute, minute by minute from ``T0``."""
    return [
        Bar(s, T0 + m * 60_000, 10.0 + m, 11.0 + m, 9.0, 10.5, 100.0 + m, 10.1, m)
        for m in minutes
        for s in symbols
    ]


async def collect(sub: Subscription, n: int, within_s: float = 20) -> list[Any]:
    """The items of the subscription's next batches, until ``n`` arrived."""
    out: list[Any] = []
    async with asyncio.timeout(within_s):
        while len(out) < n:
            _topic, batch = await sub.get()
            out.extend(batch)
    return out


async def assert_quiet(sub: Subscription, seconds: float = 0.5) -> None:
    await asyncio.sleep(seconds)
    assert sub.queue.empty(), "unexpected extra records"


async def read_kafka_topic(bootstrap: Any, topic_name: str, n: int, within_s: float) -> list[Any]:
    """Records of a Kafka topic from its beginning (a group-less consumer) until ``n`` were read."""
    consumer = AIOKafkaConsumer(
        topic_name, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Any] = []
    try:
        async with asyncio.timeout(within_s):
            while len(out) < n:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return out
