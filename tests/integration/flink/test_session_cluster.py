"""The Flink job the way the compose stack runs it (docker-compose.yml, profile kafka), without
Docker: a Flink 2.2.1 session cluster (a JobManager and a TaskManager of the distribution the
apache-flink wheel ships, the connector and function jars in its lib/, as in
infra/flink/Dockerfile), the job rendered by `speedlayer flink plan --sql-only --env kafka
--cluster` and submitted by infra/flink/submit-job.sh with Flink's SQL client, a real broker.
Candles come out; a second submission is skipped; after a cancel the job resumes from its
newest checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launch.flink import newest_checkpoint
from speedlayer.bus.base import RAW_TOPIC, candle_topic
from speedlayer.bus.kafka import KafkaBus
from tests.bus_helpers import bars, read_kafka_topic
from tests.conftest import ROOT, free_port, require, run_cli
from tests.flink_helpers import stop_group

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

PYFLINK = next((ROOT / ".flink-venv" / "lib").glob("python3*/site-packages/pyflink"), None)
SUBMIT = ROOT / "infra" / "flink" / "submit-job.sh"
SYMBOLS = ("AAA", "BBB", "CCC")
MINUTES = range(6)


def flink_home(tmp_path: Path, rest_port: int, rpc_port: int) -> Path:
    """A Flink distribution: the wheel's scripts and jars, plus lib/ as in the image."""
    assert PYFLINK is not None
    home = tmp_path / "flink-home"
    shutil.copytree(PYFLINK / "bin", home / "bin")
    shutil.copytree(PYFLINK / "conf", home / "conf")
    for name, jars in {
        "lib": [*(PYFLINK / "lib").glob("*.jar"), *(ROOT / ".flink/lib").glob("*kafka*.jar"),
                ROOT / ".flink/lib/speedlayer-flink-udf.jar"],
        "opt": [*(PYFLINK / "opt").glob("*.jar"), *(ROOT / ".flink/opt").glob("*.jar")],
    }.items():  # fmt: skip
        (home / name).mkdir()
        for jar in jars:
            (home / name / jar.name).symlink_to(jar)
    (home / "log").mkdir()
    loopback = {
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": str(rpc_port),
        "jobmanager.bind-host": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": str(rest_port),
        "taskmanager.numberOfTaskSlots": "2",
        "jobmanager.memory.process.size": "1024m",
        "taskmanager.memory.process.size": "1536m",
        "io.tmp.dirs": str(tmp_path / "flink-tmp"),
    }
    (tmp_path / "flink-tmp").mkdir()
    subprocess.run(
        ["bash", str(home / "bin/config-parser-utils.sh"), str(home / "conf"), str(home / "bin"),
         str(home / "lib"), *(f"-D{key}={value}" for key, value in loopback.items())],
        check=True, capture_output=True,
    )  # fmt: skip
    return home


def rest(url: str, method: str = "GET") -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def jobs(rest_url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = rest(f"{rest_url}/jobs/overview")["jobs"]
    return found


def wait_for(predicate: Any, what: str, within_s: float) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with_value = predicate()
        if with_value:
            return with_value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def session_cluster(flink_ready: None, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    require(PYFLINK is not None, "no apache-flink in .flink-venv: run `make flink`")
    require(
        any((ROOT / ".flink/opt").glob("flink-sql-gateway-*.jar")),
        "no SQL gateway jar in .flink/opt (Flink's SQL client needs it): run `make flink`",
    )
    rest_port, rpc_port = free_port(), free_port()
    home = flink_home(tmp_path, rest_port, rpc_port)
    env = {**os.environ, "FLINK_LOG_DIR": str(home / "log")}
    env.pop("FLINK_HOME", None)
    processes = [
        subprocess.Popen(
            ["bash", str(home / "bin" / f"{role}.sh"), "start-foreground"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for role in ("jobmanager", "taskmanager")
    ]
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:

        def registered() -> bool:
            try:
                return bool(rest(f"{rest_url}/overview")["taskmanagers"] >= 1)
            except OSError:
                return False

        wait_for(registered, "the TaskManager to register", 120)
        yield home, rest_url
    finally:
        for job in _running(rest_url):
            rest(f"{rest_url}/jobs/{job['jid']}?mode=cancel", "PATCH")
        for process in reversed(processes):
            stop_group(process)


def _running(rest_url: str) -> list[dict[str, Any]]:
    try:
        return [job for job in jobs(rest_url) if job["state"] == "RUNNING"]
    except OSError:
        return []


TERMINAL = {"FINISHED", "CANCELED", "FAILED"}


def _states(rest_url: str) -> set[str]:
    return {job["state"] for job in jobs(rest_url)}


def submit(home: Path, rest_url: str, job_sql: Path, checkpoints: Path) -> str:
    proc = subprocess.run(
        ["bash", str(SUBMIT)],
        env={**os.environ, "FLINK_HOME": str(home), "FLINK_LOG_DIR": str(home / "log"),
             "JOB_SQL": str(job_sql), "CHECKPOINT_DIR": str(checkpoints),
             "FLINK_REST_URL": rest_url},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_compose_stacks_submission_on_a_session_cluster(
    session_cluster: tuple[Path, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    home, rest_url = session_cluster
    prefix = f"session-{uuid.uuid4().hex[:8]}-"
    checkpoints = tmp_path / "checkpoints"
    env = {
        "SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SPEEDLAYER_KAFKA_TOPIC_PREFIX": prefix,
        "SPEEDLAYER_RETENTION": "*=100y",
        "SPEEDLAYER_FLINK_CHECKPOINT_DIR": str(checkpoints),
        "SPEEDLAYER_FLINK_CHECKPOINT_INTERVAL": "2 s",
    }
    job_sql = tmp_path / "job.sql"
    job_sql.write_text(
        run_cli("flink", "plan", "--sql-only", "--env", "kafka", "--cluster", env=env).stdout
    )
    sent = bars(SYMBOLS, MINUTES)

    async def publish() -> None:
        async with KafkaBus(kafka_bootstrap, topic_prefix=prefix) as bus:
            await bus.ensure()  # the raw topic and the candle topics, as the services make them
            await bus.publish(RAW_TOPIC, sent)

    asyncio.run(publish())
    assert "submitting speedlayer-candles" in submit(home, rest_url, job_sql, checkpoints)
    [job] = wait_for(lambda: _running(rest_url), "the job to run", 60)
    assert job["name"] == "speedlayer-candles"

    records = asyncio.run(
        read_kafka_topic(kafka_bootstrap, prefix + candle_topic("1m"), len(sent), within_s=120)
    )
    candles = {}
    for record in records:
        value = json.loads(record.value)
        candles[(value["symbol"], value["timestamp"])] = value
    assert set(candles) == {(bar.symbol, bar.t) for bar in sent}
    for bar in sent:
        candle = candles[(bar.symbol, bar.t)]
        assert (candle["open"], candle["high"], candle["low"], candle["close"]) == (
            bar.o, bar.h, bar.l, bar.c
        )  # fmt: skip
        assert candle["volume"] == bar.v and candle["bars"] == 1

    # Again while it runs (a second `docker compose up`): nothing is submitted.
    assert "already running" in submit(home, rest_url, job_sql, checkpoints)
    assert len(_running(rest_url)) == 1

    # Cancelled (the JobManager forgot it): submitted again, from the newest checkpoint.
    wait_for(lambda: newest_checkpoint(checkpoints), "a completed checkpoint", 60)
    rest(f"{rest_url}/jobs/{job['jid']}?mode=cancel", "PATCH")
    wait_for(lambda: _states(rest_url) <= TERMINAL, "the job to be cancelled", 60)
    newest = newest_checkpoint(checkpoints)
    assert newest is not None
    out = submit(home, rest_url, job_sql, checkpoints)
    assert f"resuming speedlayer-candles from {newest}" in out
    [resumed] = wait_for(lambda: _running(rest_url), "the resumed job to run", 60)
    restored = wait_for(
        lambda: (
            rest(f"{rest_url}/jobs/{resumed['jid']}/checkpoints").get("latest", {}).get("restored")
        ),
        "the restore to be reported",
        60,
    )
    assert restored["external_path"].rstrip("/").endswith(str(newest.relative_to(checkpoints)))
