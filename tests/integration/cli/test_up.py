"""`speedlayer up` end to end: one process with the simulator feed, resampler, store and API."""

from __future__ import annotations

import asyncio
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
