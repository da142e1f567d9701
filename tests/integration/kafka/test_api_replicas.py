"""Two `speedlayer api --bus kafka` replicas on one broker: each one's live hub sees every update.

The candle topics have six partitions, so replicas sharing a consumer group would split them
(one replica's clients would see only the symbols of its partitions). The hub consumes as a
broadcast subscriber instead: every replica reads every partition, and no consumer group is
created on the broker. A hub whose broadcast subscription fails subscribes again and goes on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from api.live.client import LIVE_FEED_INTERRUPTED
from api.live.hub import CandleHub
from speedlayer.bus.base import candle_topic
from speedlayer.bus.kafka import KafkaBus
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.store.sqlite import SQLiteStore
from tests.conftest import ApiServer
from tests.integration.api.test_live_hub import events_of, fail, hub_subscription
from tests.live_replicas import candle, check_replicas
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)

PARTITIONS = 6


async def consumer_groups(bus: KafkaBus) -> set[str]:
    return {str(group[0]) for group in await bus.admin.list_consumer_groups()}


async def test_every_api_replica_sees_every_candle_update(
    kafka_bootstrap: str, tmp_path: Path, api_server_factory: Callable[..., ApiServer]
) -> None:
    prefix = f"r{uuid.uuid4().hex[:10]}."
    env = {
        "SPEEDLAYER_BUS": "kafka",
        "SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SPEEDLAYER_KAFKA_TOPIC_PREFIX": prefix,
        "SPEEDLAYER_INTERVALS": "1m,5m",
    }
    bus = KafkaBus(kafka_bootstrap, topic_prefix=prefix, partitions=PARTITIONS,
                   intervals=["1m", "5m"], retry_timeout_s=30)  # fmt: skip
    async with bus:
        await bus.ensure_topics()  # before the replicas: the candle topics have 6 partitions
        described = await bus.admin.describe_topics([prefix + "market-data-1m"])
        assert len(described[0]["partitions"]) == PARTITIONS
        groups_before = await consumer_groups(bus)
        await check_replicas(bus, api_server_factory, tmp_path, env)
        # broadcast subscribers: no group membership, nothing committed on the broker
        assert await consumer_groups(bus) == groups_before


async def test_hub_resubscribes_after_its_kafka_broadcast_subscription_failed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"h{uuid.uuid4().hex[:10]}."
    settings = Settings(db=tmp_path / "hub.db", intervals=["1m"])
    bus = KafkaBus(kafka_bootstrap, topic_prefix=prefix, partitions=3, intervals=["1m"],
                   retry_timeout_s=30)  # fmt: skip
    async with bus, SQLiteStore(settings.db, settings.interval_set, SystemClock()) as store:
        hub = CandleHub(settings, store, bus)
        await hub.start()
        try:
            first = hub_subscription(hub)
            assert first.consumer is None
            client = hub.connect("ws")
            assert client is not None
            hub.subscribe(client, [], ["1m"], mode="live")
            await bus.publish(candle_topic("1m"), [candle("A", 1)])  # waits for the positions
            received = events_of(await asyncio.wait_for(client.take(), 10))
            assert [(e.candle.symbol, e.candle.revision) for e in received] == [("A", 1)]

            fail(hub)  # as a dying consumer task closes it
            await until(lambda: hub.interruptions == 1, 10, "the hub to notice the failure")
            assert client.closed_reason == LIVE_FEED_INTERRUPTED
            hub.disconnect(client)
            await until(lambda: hub.problem() is None, 30, "the hub to resubscribe")
            again = hub_subscription(hub)
            assert again is not first and again.consumer is None

            fresh = hub.connect("ws")
            assert fresh is not None
            hub.subscribe(fresh, [], ["1m"], mode="live")
            await bus.publish(candle_topic("1m"), [candle(s, 2) for s in ("A", "B", "C")])
            got: list[tuple[str, int]] = []
            async with asyncio.timeout(10):
                while len(got) < 3:
                    got += [
                        (e.candle.symbol, e.candle.revision) for e in events_of(await fresh.take())
                    ]
            assert sorted(got) == [("A", 2), ("B", 2), ("C", 2)]
            assert bus.commits == 0
        finally:
            await hub.stop()
