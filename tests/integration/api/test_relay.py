"""The relay (speedlayer/bus/relay.py): the pipeline's in-process bus served over a real Unix
socket to a RelayBus, as `speedlayer up --workers N` runs it for its API processes; and the live
hub on a RelayBus, reconnecting after the serving process went away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from api.live.hub import CandleHub
from speedlayer.backends import make_bus
from speedlayer.bus import relay
from speedlayer.bus.base import RAW_TOPIC, candle_topic
from speedlayer.bus.memory import MemoryBus
from speedlayer.bus.relay import RelayBus, RelayServer
from speedlayer.clock import ManualClock
from speedlayer.config import Settings
from speedlayer.errors import BusError, ConfigError, SubscriptionClosed
from speedlayer.models import Bar, Candle
from speedlayer.store.memory import MemoryStore
from tests.bus_helpers import bars
from tests.waiting import until

T0 = 1_704_205_800_000
NOW = T0 + 90_000


def candles(n: int, revision: int = 1, interval: str = "1m") -> list[Candle]:
    return [candle(i, revision, interval) for i in range(n)]


def candle(i: int, revision: int, interval: str) -> Candle:
    return Candle(f"S{i:04d}", interval, T0, 10.0 + i, 11.0 + i, 9.0, 10.5, 100.0 * i, 10.25, 7,
                  i, i % 2 == 0, revision, 4_000_000_000)  # fmt: skip


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "bus.relay"


@contextlib.asynccontextmanager
async def serving(sock: Path, clock: ManualClock | None = None) -> AsyncIterator[RelayServer]:
    async with MemoryBus() as bus, RelayServer(bus, sock, clock or ManualClock(NOW)) as server:
        yield server


async def test_batches_cross_the_socket_unchanged_with_the_market_clock(sock: Path) -> None:
    async with serving(sock) as server, RelayBus(sock) as remote:
        sub = remote.subscribe([candle_topic("1m"), candle_topic("5m"), RAW_TOPIC], consumer=None)
        assert await sub.wait_started()
        assert remote.clock.synced and abs(remote.clock.now_ms() - NOW) < 1_000
        assert stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0  # only its owner may connect

        sent_1m, sent_5m = candles(300), candles(5, revision=3, interval="5m")
        sent_bars: list[Bar] = bars(["AAPL", "MSFT"], range(3))
        await server.bus.publish(candle_topic("1m"), sent_1m)
        await server.bus.publish(RAW_TOPIC, sent_bars)
        await server.bus.publish(candle_topic("15m"), candles(2, interval="15m"))  # not asked for
        await server.bus.publish(candle_topic("5m"), sent_5m)

        got = [await asyncio.wait_for(sub.get(), 5) for _ in range(3)]
        assert got == [(candle_topic("1m"), sent_1m), (RAW_TOPIC, sent_bars),
                       (candle_topic("5m"), sent_5m)]  # fmt: skip
        assert sub.queue.empty()
        await remote.ping()
        with pytest.raises(BusError, match="only receives"):
            await remote.publish(candle_topic("1m"), sent_1m)
        sub.close()
        await until(lambda: server.clients == 0, 5, "the server to let the client go")


async def test_the_clock_follows_the_serving_process(sock: Path) -> None:
    clock = ManualClock(NOW)
    async with serving(sock, clock), RelayBus(sock) as remote:
        sub = remote.subscribe([candle_topic("1m")], consumer=None)
        assert await sub.wait_started()
        clock.advance(3_600_000)  # an hour on, told within a clock frame's interval
        await until(lambda: remote.clock.now_ms() - NOW >= 3_600_000, 5, "the next clock frame")
        sub.close()


async def test_several_processes_share_one_encoding_of_a_batch(sock: Path) -> None:
    async with serving(sock) as server, RelayBus(sock) as one, RelayBus(sock) as two:
        subs = [bus.subscribe([candle_topic("1m")], consumer=None) for bus in (one, two)]
        for sub in subs:
            assert await sub.wait_started()
        batch = candles(50)
        await server.bus.publish(candle_topic("1m"), batch)
        for sub in subs:
            assert await asyncio.wait_for(sub.get(), 5) == (candle_topic("1m"), batch)
        assert server.connections_total == 2


async def test_a_client_that_stops_reading_is_dropped_and_never_stalls_the_publisher(
    sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "RELAY_QUEUE_BATCHES", 8)
    async with serving(sock) as server:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(orjson.dumps({"topics": [candle_topic("1m")]}) + b"\n")
        await reader.readexactly(4)  # the first frame's length: subscribed
        async with asyncio.timeout(10):  # the publisher is never held up by the stalled reader
            for revision in range(1, 400):
                await server.bus.publish(candle_topic("1m"), candles(200, revision))
        await until(lambda: server.dropped == 1, 10, "the stalled client to be dropped")
        assert server.clients == 0
        writer.close()


async def test_a_lost_relay_fails_the_subscription_and_a_new_one_works(sock: Path) -> None:
    async with RelayBus(sock) as remote:
        async with serving(sock):
            sub = remote.subscribe([candle_topic("1m")], consumer=None)
            assert await sub.wait_started()
        with pytest.raises(SubscriptionClosed):
            await asyncio.wait_for(sub.get(), 5)
        assert sub.failed and "relay" in str(sub.error)

        down = remote.subscribe([candle_topic("1m")], consumer=None)  # nothing to connect to
        assert not await down.wait_started() and down.failed
        with pytest.raises(BusError, match="not reachable"):
            await remote.ping()

        async with serving(sock) as server:
            again = remote.subscribe([candle_topic("1m")], consumer=None)
            assert await again.wait_started()
            await server.bus.publish(candle_topic("1m"), candles(3))
            assert (await asyncio.wait_for(again.get(), 5))[1] == candles(3)


async def test_a_bad_hello_is_refused_with_a_reason_and_others_are_served(sock: Path) -> None:
    async with serving(sock) as server:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b'{"topics": "market-data-1m"}\n')
        reply = orjson.loads(await asyncio.wait_for(reader.readline(), 5))
        assert "topics" in reply["error"]
        assert await reader.read() == b""  # and hung up
        writer.close()
        async with RelayBus(sock) as remote:
            sub = remote.subscribe([candle_topic("1m")], consumer=None)
            assert await sub.wait_started()
            await server.bus.publish(candle_topic("1m"), candles(1))
            assert (await asyncio.wait_for(sub.get(), 5))[1] == candles(1)


async def test_the_live_hub_on_a_relay_resubscribes_when_the_relay_returns(sock: Path) -> None:
    """The API process's hub: live while the relay serves, unready (a problem) while it is gone,
    live again once it is back, without a restart of the API."""
    settings = Settings(bus="relay", relay_socket=sock, intervals="1m")
    async with RelayBus(sock) as remote:
        hub = CandleHub(settings, MemoryStore(settings.interval_set, remote.clock), remote)
        async with serving(sock) as server:
            await hub.start()
            try:
                await until(lambda: remote.clock.synced, 5, "the hub's subscription")
                await server.bus.publish(candle_topic("1m"), candles(4))
                await until(lambda: hub.events == 4, 5, "the hub to see the updates")
                assert hub.problem() is None
            except BaseException:
                await hub.stop()
                raise
        try:
            await until(lambda: hub.problem() is not None, 5, "the hub to notice")
            assert "relay" in str(hub.problem())
            async with serving(sock) as server:
                await until(lambda: hub.problem() is None, 15, "the hub to resubscribe")
                await server.bus.publish(candle_topic("1m"), candles(4, revision=2))
                await until(lambda: hub.events == 8, 5, "updates after the return")
        finally:
            await hub.stop()


def test_settings_select_the_relay_and_check_its_path(tmp_path: Path) -> None:
    bus = make_bus(Settings(bus="relay", db=tmp_path / "x.db"))
    assert isinstance(bus, RelayBus) and bus.path == tmp_path / "x.db.relay"
    long = tmp_path / ("d" * 120) / "x.db"
    with pytest.raises(ConfigError, match="too long"):
        make_bus(Settings(bus="relay", db=long))


@pytest.mark.parametrize(
    "reply",
    [
        b"\x00\x00\x00\x03abc",  # not a frame msgspec can decode
        (relay.FRAME_LIMIT + 1).to_bytes(4, "big"),  # a length past the limit
        relay.encode_frame(relay.ClockFrame(NOW, 1000.0))[:-2],  # cut off mid-frame
    ],
    ids=["garbage", "oversized", "truncated"],
)
async def test_a_broken_stream_fails_the_subscription_with_a_reason(
    sock: Path, reply: bytes
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(broken, path=str(sock))
    try:
        async with RelayBus(sock) as remote:
            sub = remote.subscribe([candle_topic("1m")], consumer=None)
            assert not await sub.wait_started()
            assert sub.failed and isinstance(sub.error, BusError), sub.error
    finally:
        server.close()
        await server.wait_closed()
