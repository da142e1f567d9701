"""Services whose backend goes away (docs/design.md#failure-policy), as real processes.

* ``speedlayer process`` reads the raw stream of a Kinesis emulator that is killed under it: the
  consumer fails, and instead of idling forever the service exits with an error, uncommitted. The
  emulator comes back on its data directory, the service is restarted (as a container supervisor
  would), and it resumes from its checkpoint: the candles equal those of ``speedlayer replay`` of
  the same bars, and nothing published meanwhile is lost.
* ``speedlayer api --bus kinesis``: the live hub's consumer fails the same way; the API stays up,
  closes its live clients ("live feed interrupted"), answers 503 on ``/readyz`` naming the live
  feed, and once the emulator is back it resubscribes, is ready again, and live updates flow.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ingest.synthetic import RandomWalk, symbol_names
from speedlayer.bus.base import RAW_TOPIC, candle_topic
from speedlayer.bus.kinesis import KinesisBus
from speedlayer.models import Bar, Candle
from tests.conftest import (
    ApiServer,
    free_port,
    kinesalite_command,
    run_cli,
    start_emulator,
    stop_process,
)
from tests.integration.aws.test_aws_path import (
    CONSUMER,
    Aws,
    Service,
    all_candles,
    assert_replay_gives,
    wait_for_items,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

T0 = 1_704_204_000_000  # 2024-01-02T14:00Z
SYMBOLS = 12
MINUTES = 40


def kinesalite(port: int, data: Path) -> subprocess.Popen[bytes]:
    return start_emulator(kinesalite_command(port, path=str(data), shardLimit=100), port)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.cleanup()


async def exit_code(service: Service, timeout_s: float) -> int:
    assert service.proc is not None
    deadline = time.monotonic() + timeout_s
    while (code := service.proc.poll()) is None:
        assert time.monotonic() < deadline, f"{service.name} kept running:\n{service.text()}"
        await asyncio.sleep(0.1)
    return code


async def test_process_exits_when_its_stream_goes_away_and_its_restart_resumes(
    tmp_path: Path, dynalite_url: str, services: list[Service]
) -> None:
    bars = list(RandomWalk(symbol_names(SYMBOLS), seed=5).bars(T0, MINUTES))
    first, second = bars[: len(bars) // 2], bars[len(bars) // 2 :]
    port, data = free_port(), tmp_path / "kinesis"
    emulator = kinesalite(port, data)
    try:
        aws = Aws(dynalite_url, f"http://127.0.0.1:{port}")
        env = {**aws.env, "SPEEDLAYER_WRITE_RETRY_DEADLINE_S": "5"}
        run_cli("init-aws", env=env)
        args = ["process", "--bus", "kinesis", "--store", "dynamodb"]
        async with aws.store() as store:
            async with aws.bus() as bus:
                await bus.publish(RAW_TOPIC, first)
            process = Service("process", args, env, tmp_path).start()
            services.append(process)
            await wait_for_items(store, len(first), [process])
            await asyncio.sleep(0.5)  # the checkpoint follows the stored batch

            kill9(emulator)
            assert await exit_code(process, 60) != 0
            log = process.text()
            assert "processing stopped" in log and "consumer failed" in log, log

            emulator = kinesalite(port, data)  # back, with what it held
            async with aws.bus() as bus:
                assert await bus.checkpoints(CONSUMER, RAW_TOPIC)
                await bus.publish(RAW_TOPIC, second)
            restarted = Service("process-2", args, env, tmp_path).start()
            services.append(restarted)
            await wait_for_items(store, len(bars), [restarted])
            await asyncio.sleep(1.0)
            symbols = sorted({bar.symbol for bar in bars})
            distributed = await all_candles(store, symbols)
        assert restarted.stop() == 0
    finally:
        stop_process(emulator)
    assert "resumes after its checkpoints" in restarted.text()

    served: dict[tuple[str, int], Bar] = {(bar.symbol, bar.t): bar for bar in bars}
    await assert_replay_gives(distributed, served, tmp_path)


def candle(revision: int, close: float) -> Candle:
    return Candle("AAA", "1m", T0, 10.0, 11.0, 9.0, close, 100.0, None, None, 1, False,
                  revision, 4_102_444_800)  # fmt: skip


async def readiness(
    http: httpx.AsyncClient, status: int, timeout_s: float, saying: str = ""
) -> str:
    """Poll /readyz until it answers ``status`` with ``saying`` in its body; the body."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = await http.get("/readyz")
            if response.status_code == status and saying in response.text:
                return response.text
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"/readyz never answered {status}"
        await asyncio.sleep(0.2)


async def live_update(ws_url: str, bus: KinesisBus, update: Candle) -> dict[str, object]:
    """Subscribe to AAA 1m, publish ``update`` on its candle stream, and return what arrives."""
    async with connect(ws_url) as ws:
        await ws.send(orjson.dumps({"action": "subscribe", "symbols": ["AAA"],
                                    "intervals": ["1m"]}).decode())  # fmt: skip
        ack = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "subscribed" and ack["live"] is True, ack
        await bus.publish(candle_topic("1m"), [update])
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
        assert isinstance(message, dict)
        return message


async def test_api_live_feed_reports_a_lost_stream_and_recovers(
    tmp_path: Path, dynalite_url: str
) -> None:
    port, data = free_port(), tmp_path / "kinesis"
    emulator = kinesalite(port, data)
    api: ApiServer | None = None
    try:
        aws = Aws(dynalite_url, f"http://127.0.0.1:{port}")
        env = {**aws.env, "SPEEDLAYER_BUS": "kinesis", "SPEEDLAYER_STORE": "dynamodb"}
        run_cli("init-aws", env=env)
        api = ApiServer(tmp_path / "unused.db", env)
        api.start()
        ws_url = f"ws://127.0.0.1:{api.port}/ws"
        async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:
            await readiness(http, 200, 30)
            async with aws.bus() as bus:
                got = await live_update(ws_url, bus, candle(1, 10.5))
            assert got["type"] == "candle" and got["close"] == 10.5, got

            async with connect(ws_url) as ws:
                await ws.send(orjson.dumps({"action": "subscribe", "symbols": ["AAA"],
                                            "intervals": ["1m"]}).decode())  # fmt: skip
                await asyncio.wait_for(ws.recv(), 10)
                kill9(emulator)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 60)
            assert closed.value.rcvd is not None, "closed without a close frame"
            assert "live feed interrupted" in closed.value.rcvd.reason
            body = await readiness(http, 503, 30, saying="live feed: candle bus subscription")
            assert "resubscribing" in body, body

            emulator = kinesalite(port, data)
            await readiness(http, 200, 60)
            async with aws.bus() as bus:
                got = await live_update(ws_url, bus, candle(2, 10.75))
            assert got["type"] == "candle" and got["close"] == 10.75, got
            assert got["revision"] == 2
    finally:
        if api is not None:
            api.stop()
        stop_process(emulator)
