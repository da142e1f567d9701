"""Several `speedlayer api` replicas on one distributed bus, a wildcard WebSocket client on each:
shared by the Kafka and Kinesis replica tests (tests/integration/kafka/test_api_replicas.py,
tests/integration/aws/test_api_replicas.py).

The test publishes candle updates straight onto the candle topic, as ``speedlayer process`` would
(no pipeline, no store writes: wildcard clients get no snapshot). A replica's live hub subscribes
when the API starts, so probes are published until every client has received one: from then on
every hub holds its positions on the bus, and what follows must reach every client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from speedlayer.bus.base import Bus, candle_topic
from speedlayer.models import Candle
from tests.conftest import ApiServer
from tests.integration.api.test_live_api import WsClient, sub

T0 = 1_704_205_800_000  # a 1m bucket start
FAR_TTL = 4_000_000_000  # epoch seconds: never expires in these tests
SYMBOLS = [f"R{i:02d}" for i in range(24)]  # the updates every replica must see
PROBES = [f"P{i:02d}" for i in range(24)]  # keys spread over every partition / shard


def candle(symbol: str, revision: int = 1) -> Candle:
    return Candle(symbol, "1m", T0, 10.0, 11.0, 9.0, 10.5, 100.0, None, None, 1, False,
                  revision, FAR_TTL)  # fmt: skip


async def open_monitors(servers: Sequence[ApiServer]) -> list[WsClient]:
    """One WebSocket client per server, subscribed to every symbol of the 1m interval."""
    monitors = []
    for server in servers:
        client = await WsClient.open(server.url.replace("http", "ws", 1) + "/ws")
        ack = await client.reply(sub(["*"], ["1m"]), ("subscribed", "error"))
        assert ack["type"] == "subscribed" and ack["live"] is True, ack
        monitors.append(client)
    return monitors


def symbols_seen(client: WsClient, among: Sequence[str]) -> set[str]:
    wanted = set(among)
    return {m["symbol"] for m in client.messages if m["type"] == "candle"} & wanted


async def warm_up(bus: Bus, monitors: Sequence[WsClient], within_s: float = 60) -> None:
    """Publish probe updates (a higher revision each round) until every client received one."""
    deadline = time.monotonic() + within_s
    revision = 0
    while not all(symbols_seen(client, PROBES) for client in monitors):
        if time.monotonic() > deadline:
            counts = [len(symbols_seen(client, PROBES)) for client in monitors]
            raise AssertionError(f"probes never reached every replica: {counts}")
        revision += 1
        await bus.publish(candle_topic("1m"), [candle(s, revision) for s in PROBES])
        for _ in range(25):
            if all(symbols_seen(client, PROBES) for client in monitors):
                break
            await asyncio.sleep(0.02)


async def assert_every_replica_sees_every_update(
    bus: Bus, monitors: Sequence[WsClient], within_s: float = 20
) -> None:
    """Publish one update of each of SYMBOLS; every client must receive all of them."""
    await bus.publish(candle_topic("1m"), [candle(s) for s in SYMBOLS])
    deadline = time.monotonic() + within_s
    while not all(symbols_seen(client, SYMBOLS) == set(SYMBOLS) for client in monitors):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    seen: list[Any] = [len(symbols_seen(client, SYMBOLS)) for client in monitors]
    assert seen == [len(SYMBOLS)] * len(monitors), (
        f"symbols received per replica: {seen} of {len(SYMBOLS)}"
    )
    for client in monitors:  # once each: no replica saw an update twice
        updates = [m for m in client.messages if m["type"] == "candle" and m["symbol"] in SYMBOLS]
        assert len(updates) == len(SYMBOLS)


async def check_replicas(
    bus: Bus,
    start_api: Callable[..., ApiServer],
    tmp_path: Path,
    env: dict[str, str],
    replicas: int = 2,
) -> None:
    """Start ``replicas`` API servers on ``bus`` (``start_api``: the ``api_server_factory``
    fixture), a wildcard client on each: every replica delivers every update."""
    servers = [
        await asyncio.to_thread(start_api, tmp_path / f"api{i}.db", env) for i in range(replicas)
    ]
    monitors = await open_monitors(servers)
    try:
        await warm_up(bus, monitors)
        await assert_every_replica_sees_every_update(bus, monitors)
    finally:
        for monitor in monitors:
            await monitor.close()
