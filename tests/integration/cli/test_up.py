"""`speedlayer up` end to end: one process with the simulator feed, resampler, store and API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from ingest.simulator import FaultConfig, PolygonSimulator, SimulatorConfig
from tests.conftest import SPEEDLAYER, free_port
from tests.integration.api.test_live_api import WsClient, sub

pytestmark = pytest.mark.slow


def _candles(url: str, interval: str = "5m") -> list[dict[str, object]]:
    response = httpx.get(f"{url}/candles/AAPL?interval={interval}&order=desc&limit=20", timeout=5)
    assert response.status_code == 200, response.text
    candles: list[dict[str, object]] = response.json()["candles"]
    return candles


def test_up_serves_live_candles_forming_and_finalizing(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SPEEDLAYER_LOG_LEVEL": "info",
        "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "30",
        "SPEEDLAYER_STATS_INTERVAL_S": "1",
    }
    log_path = tmp_path / "up.log"
    started_ms = time.time_ns() // 1_000_000
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [SPEEDLAYER, "up", "--db", str(tmp_path / "up.db"), "--port", str(port),
             "--symbols", "20", "--speed", "4"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "API never became ready\n" + log_path.read_text()
            time.sleep(0.2)

        seen: dict[int, list[tuple[int, bool]]] = {}  # timestamp -> [(revision, final)]
        newest: list[int] = []
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            candles = _candles(url)
            if candles:
                newest.append(int(candles[0]["timestamp"]))  # type: ignore[call-overload]
            for candle in candles:
                ts = int(candle["timestamp"])  # type: ignore[call-overload]
                state = (int(candle["revision"]), bool(candle["final"]))  # type: ignore[call-overload]
                if not seen.get(ts) or seen[ts][-1] != state:
                    seen.setdefault(ts, []).append(state)
            flipped = [ts for ts, states in seen.items() if (False in {f for _, f in states})
                       and states[-1][1]]  # fmt: skip
            if len(set(newest)) >= 3 and flipped:
                break
            time.sleep(0.25)
        assert len(set(newest)) >= 3, f"no new 5m buckets appeared: {sorted(set(newest))}"
        flipped = [ts for ts, states in seen.items() if states[0][1] is False and states[-1][1]]
        assert flipped, f"no 5m candle was seen forming and then final: {seen}"
        for ts in flipped:
            revisions = [rev for rev, _ in seen[ts]]
            assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)

        # History came from the start-up backfill over REST: candles older than the live start.
        # (At speed > 0 the simulated market starts at the wall clock's current minute.)
        one_minute = httpx.get(f"{url}/candles/AAPL?interval=1m&limit=1", timeout=5).json()
        assert one_minute["candles"][0]["timestamp"] < started_ms - 10 * 60_000
        assert httpx.get(url + "/intervals", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("speedlayer up did not stop on SIGINT") from None
    text = log_path.read_text()
    assert code == 0, text
    assert "bars in" in text and "feed lag" in text, "no throughput/lag log lines"
    # the start-up backfill's progress (stderr is no terminal: log lines), to its end
    # (each of the 20 symbols at least once; a reconnect's gap fetches count too)
    done = re.search(r"backfill: (\d+) of \1 symbols \(100%\), minute bars ([\d,]+), rate "
                     r"limit waits 0, .*done in", text)  # fmt: skip
    assert done and int(done[1]) >= 20 and int(done[2].replace(",", "")) >= 20, text[-3000:]
    assert "Traceback" not in text, text


async def test_up_stops_with_an_error_when_its_feed_fails_for_good(tmp_path: Path) -> None:
    """A part that fails for good (here the feed: the server refuses the key) stops `up` with a
    non-zero exit and the reason, instead of serving on without data
    (docs/design.md#failure-policy)."""
    port = free_port()
    config = SimulatorConfig(host="127.0.0.1", port=0, faults=FaultConfig(auth_fail=True))
    async with PolygonSimulator(config) as sim:
        env = {
            **os.environ,
            "SPEEDLAYER_SOURCE": "polygon",
            "SPEEDLAYER_POLYGON_API_KEY": "refused-key",
            "SPEEDLAYER_POLYGON_WS_URL": sim.ws_url,
            "SPEEDLAYER_POLYGON_REST_URL": sim.rest_url,
            "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "0",
        }
        proc = await asyncio.create_subprocess_exec(
            SPEEDLAYER, "up", "--db", str(tmp_path / "up.db"), "--port", str(port),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = output.decode()
    assert proc.returncode != 0, text
    assert "Polygon rejected the API key" in text, text
    assert "speedlayer up stopped" in text, text
    assert sim.stats.auth_failures >= 1


async def _start_split_up(tmp_path: Path, port: int) -> tuple[asyncio.subprocess.Process, Path]:
    """`speedlayer up --workers 1` on the simulator at 4 simulated minutes a second, ready."""
    log_path = tmp_path / "up.log"
    env = {**os.environ, "SPEEDLAYER_LOG_LEVEL": "info", "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "5"}
    with log_path.open("w") as log:
        proc = await asyncio.create_subprocess_exec(
            SPEEDLAYER, "up", "--workers", "1", "--db", str(tmp_path / "up.db"),
            "--port", str(port), "--symbols", "20", "--speed", "4",
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while True:
            assert proc.returncode is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url + "/readyz", timeout=1)).status_code == 200:
                    return proc, log_path
            assert time.monotonic() < deadline, "never ready\n" + log_path.read_text()
            await asyncio.sleep(0.2)


async def _stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> int:
    if proc.returncode is None:
        proc.send_signal(sig)
    try:
        return await asyncio.wait_for(proc.wait(), 40)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("speedlayer up did not stop") from None


async def test_up_with_workers_serves_the_api_from_its_own_process(tmp_path: Path) -> None:
    """`up --workers 1`: the API in a process of its own, live over the relay, on the market
    clock of the pipeline's simulator (docs/design.md#api-processes)."""
    port = free_port()
    proc, log_path = await _start_split_up(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        text = log_path.read_text()
        api_pid = int(re.search(r"API on http://\S+ \(workers: 1, pid (\d+)\)", text)[1])  # type: ignore[index]
        assert api_pid != proc.pid
        monitor = await WsClient.open(f"ws://127.0.0.1:{port}/ws")
        ack = await monitor.reply(sub(["*"], ["1m"]), ("subscribed", "error"))
        assert ack["type"] == "subscribed" and ack["live"] is True, ack
        live = await monitor.wait_for(lambda ms: [m for m in ms if m["type"] == "candle"], 20)
        await monitor.close()
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            # the simulated market runs 240 times faster than the wall clock: the API process
            # tells the time of the pipeline's clock, not its own
            market_s = int((await client.get("/udf/time")).text)
            assert market_s - time.time() > 60, (market_s, time.time())
            symbol = live[0]["symbol"]
            stored = (await client.get(f"/candles/{symbol}?interval=1m&limit=5")).json()
            assert stored["candles"], stored
            metrics = (await client.get("/metrics")).text
            assert re.search(r"^speedlayer_live_events_total [1-9]", metrics, re.M), metrics
    finally:
        code = await _stop(proc)
    text = log_path.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    assert not (tmp_path / "up.db.relay").exists()  # the relay's socket is removed on exit
    with pytest.raises(ProcessLookupError):
        os.kill(api_pid, 0)  # the API process stopped with it


async def test_up_with_workers_stops_with_an_error_when_its_api_process_dies(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc, log_path = await _start_split_up(tmp_path, port)
    try:
        text = log_path.read_text()
        api_pid = int(re.search(r"\(workers: 1, pid (\d+)\)", text)[1])  # type: ignore[index]
        os.kill(api_pid, signal.SIGKILL)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        await _stop(proc)
    text = log_path.read_text()
    assert code != 0, text
    assert "speedlayer up stopped: the API processes exited with code -9" in text, text


def test_up_with_workers_refuses_a_store_the_processes_cannot_share(tmp_path: Path) -> None:
    result = subprocess.run(
        [SPEEDLAYER, "up", "--workers", "1", "--store", "memory", "--symbols", "5"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--workers needs a store the processes share" in result.stderr, result.stderr
