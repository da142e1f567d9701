"""Two `speedlayer api --bus kinesis` replicas on kinesalite: each one's live hub sees every update.

The candle streams have two shards. The hub consumes as a broadcast subscriber: each replica reads
every shard with its own iterators from LATEST and writes no checkpoint, so replicas neither share
a position nor leave one behind (a replica restarting later starts "from now", with a snapshot).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from speedlayer.bus.base import candle_topic
from speedlayer.bus.kinesis import KinesisBus
from tests.conftest import ApiServer
from tests.live_replicas import check_replicas

pytestmark = pytest.mark.timeout(180)

SHARDS = 2


async def test_every_api_replica_sees_every_candle_update_and_writes_no_checkpoint(
    kinesalite_url: str,
    dynalite_url: str,
    tmp_path: Path,
    api_server_factory: Callable[..., ApiServer],
) -> None:
    prefix = f"r{uuid.uuid4().hex[:10]}"
    table = f"{prefix}_checkpoints"
    env = {
        "SPEEDLAYER_BUS": "kinesis",
        "SPEEDLAYER_KINESIS_ENDPOINT_URL": kinesalite_url,
        "SPEEDLAYER_DYNAMODB_ENDPOINT_URL": dynalite_url,
        "SPEEDLAYER_KINESIS_STREAM_PREFIX": f"{prefix}-",
        "SPEEDLAYER_KINESIS_CHECKPOINT_TABLE": table,
        "SPEEDLAYER_KINESIS_SHARDS": str(SHARDS),
        "SPEEDLAYER_KINESIS_POLL_INTERVAL_S": "0.1",
        "SPEEDLAYER_INTERVALS": "1m,5m",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    bus = KinesisBus(
        endpoint_url=kinesalite_url,
        dynamodb_endpoint_url=dynalite_url,
        stream_prefix=f"{prefix}-",
        shard_count=SHARDS,
        intervals=["1m", "5m"],
        checkpoint_table=table,
        retry_timeout_s=10,
    )
    async with bus:
        await bus.ensure_streams()  # before the replicas: the candle streams have 2 shards
        stream = bus.stream_name(candle_topic("1m"))
        assert len((await bus.kinesis.list_shards(StreamName=stream))["Shards"]) == SHARDS
        await check_replicas(bus, api_server_factory, tmp_path, env)
        # broadcast subscribers: the hubs left no checkpoint (the table exists: the bus creates
        # it at start)
        items = (await bus.dynamodb.scan(TableName=table, ConsistentRead=True))["Items"]
        assert items == []
