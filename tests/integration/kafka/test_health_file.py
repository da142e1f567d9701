"""The workers' container health check on real services: `speedlayer ingest` and `speedlayer
sink` over a real broker keep their health file (SPEEDLAYER_HEALTH_FILE) fresh and empty of
problems, so `python -m launch.healthcheck` (the image's HEALTHCHECK) says healthy; when they
stop, the file goes with them and the check says why it fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.conftest import SPEEDLAYER, stop_by_sigterm


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launch.healthcheck"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_ingest_and_sink_report_their_health(kafka_bootstrap: str, tmp_path: Path) -> None:
    base = {
        **os.environ,
        "SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SPEEDLAYER_KAFKA_TOPIC_PREFIX": f"health-{uuid.uuid4().hex[:8]}-",
        "SPEEDLAYER_LOG_LEVEL": "warning",
    }
    services = {
        "ingest": ["ingest", "--bus", "kafka", "--symbols", "3"],
        "sink": ["sink", "--bus", "kafka", "--db", str(tmp_path / "candles.db")],
    }
    running = {}
    envs = {}
    for name, args in services.items():
        envs[name] = {**base, "SPEEDLAYER_HEALTH_FILE": str(tmp_path / f"{name}.json")}
        log = (tmp_path / f"{name}.log").open("wb")
        running[name] = subprocess.Popen(
            [SPEEDLAYER, *args], env=envs[name], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        for name, proc in running.items():
            deadline = time.monotonic() + 60
            while True:
                check = healthcheck(envs[name])
                if check.returncode == 0 or time.monotonic() > deadline:
                    break
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
                time.sleep(0.5)
            assert (check.returncode, check.stdout) == (0, "healthy\n"), check.stdout
    finally:
        codes = {
            name: stop_by_sigterm(proc, (tmp_path / f"{name}.log").read_text)
            for name, proc in running.items()
        }
    assert codes == {"ingest": 0, "sink": 0}
    for name in services:
        assert not (tmp_path / f"{name}.json").exists(), f"{name} removed its health file"
        # Nothing left to read: the check asks the (absent) API instead, and fails.
        assert healthcheck(envs[name]).returncode == 1
