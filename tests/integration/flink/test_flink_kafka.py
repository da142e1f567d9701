"""The Flink job over a real Kafka broker: bars on the raw topic -> the job -> candle topics ->
`speedlayer sink` -> SQLite, equal to the embedded resampler on the same arrivals; and the job
killed mid-stream, resumed from its checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from launch.flink import newest_checkpoint
from speedlayer.bus.base import RAW_TOPIC
from speedlayer.bus.kafka import KafkaBus
from speedlayer.clock import SystemClock
from speedlayer.models import Bar, Candle
from speedlayer.store.sqlite import SQLiteStore
from tests.conftest import SPEEDLAYER, run_cli
from tests.flink_helpers import (
    FLINK_ENV,
    INTERVALS,
    CandleKey,
    adversarial,
    differences,
    embedded_candles,
    final_at,
    real_bars,
    stop_group,
)

pytestmark = pytest.mark.timeout(900)

MINUTES = 300


def kafka_env(bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """Settings of the job and the sink: a topic prefix of their own, checkpoints in tmp_path."""
    return {
        **os.environ,
        **FLINK_ENV,
        "SPEEDLAYER_BUS": "kafka",
        "SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SPEEDLAYER_KAFKA_TOPIC_PREFIX": f"flink-{uuid.uuid4().hex[:8]}-",
        "SPEEDLAYER_FLINK_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }


async def publish(env: dict[str, str], arrivals: list[Bar], batch: int = 250) -> None:
    bootstrap, prefix = (
        env["SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS"],
        env["SPEEDLAYER_KAFKA_TOPIC_PREFIX"],
    )
    async with KafkaBus(bootstrap, topic_prefix=prefix) as bus:
        await bus.ensure()
        for i in range(0, len(arrivals), batch):
            await bus.publish(RAW_TOPIC, arrivals[i : i + batch])


async def stored(db: Path, symbols: set[str]) -> dict[CandleKey, Candle]:
    out: dict[CandleKey, Candle] = {}
    async with SQLiteStore(db, INTERVALS, SystemClock()) as store:
        for interval in INTERVALS:
            for symbol in sorted(symbols):
                for candle in await store.query(symbol, interval):
                    out[(symbol, interval.name, candle.timestamp)] = candle
    return out


class Sink:
    """`speedlayer sink` into a SQLite file, as a subprocess."""

    def __init__(self, db: Path, env: dict[str, str]) -> None:
        self.db = db
        self.proc = subprocess.Popen([SPEEDLAYER, "sink", "--db", str(db)], env=env)

    async def wait_for(
        self, want: dict[CandleKey, Candle], within_s: float = 120
    ) -> dict[CandleKey, Candle]:
        """The stored candles once they equal ``want`` (or what is stored at the deadline)."""
        symbols = {key[0] for key in want}
        got: dict[CandleKey, Candle] = {}
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"speedlayer sink exited with {self.proc.returncode}"
            got = await stored(self.db, symbols)
            if len(got) >= len(want) and not differences(got, want):
                break
            await asyncio.sleep(1)
        return got

    async def wait_for_count(self, keys: set[CandleKey], within_s: float = 180) -> None:
        """Until every key in ``keys`` is stored (whatever its values)."""
        symbols = {key[0] for key in keys}
        deadline = time.monotonic() + within_s
        while not keys <= (await stored(self.db, symbols)).keys():
            assert time.monotonic() < deadline, "the sink did not store the candles in time"
            assert self.proc.poll() is None, f"speedlayer sink exited with {self.proc.returncode}"
            await asyncio.sleep(1)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=30)


def start_job(
    env: dict[str, str], work_dir: Path, environment: str = "kafka", log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`speedlayer flink run` (unbounded) in a process group of its own: the CLI, PyFlink and
    the mini-cluster's JVM die together with ``os.killpg``. Output to ``log`` if given."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("ab")) if log is not None else None
        return subprocess.Popen(
            [SPEEDLAYER, "flink", "run", "--env", environment, "--work-dir", str(work_dir)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )


async def test_flink_job_over_kafka_and_the_sink_store_the_embedded_candles(
    tmp_path: Path, realbars: Path, flink_ready: None, kafka_bootstrap: str
) -> None:
    env = kafka_env(kafka_bootstrap, tmp_path)
    arrivals = adversarial(real_bars(realbars, MINUTES))
    await publish(env, arrivals)
    # The job reads the raw topic to the offsets present at its start, then finishes.
    await asyncio.to_thread(
        run_cli, "flink", "run", "--env", "kafka", "--bounded",
        "--work-dir", str(tmp_path / "work"), env=env, timeout=800,
    )  # fmt: skip
    sink = Sink(tmp_path / "flink.db", env)
    try:
        got = await sink.wait_for(embedded_candles(arrivals))
    finally:
        code = sink.stop()
    assert differences(got, embedded_candles(arrivals)) == []
    assert code == 0


async def test_flink_job_killed_mid_stream_resumes_from_its_checkpoint(
    tmp_path: Path, realbars: Path, flink_ready: None, kafka_bootstrap: str
) -> None:
    env = {**kafka_env(kafka_bootstrap, tmp_path), "SPEEDLAYER_FLINK_CHECKPOINT_INTERVAL": "2 s"}
    arrivals = adversarial(real_bars(realbars, MINUTES))
    half = len(arrivals) // 2
    # The job runs on: its watermark stops at the newest minute, which closes the buckets
    # ending there and no later one.
    want = final_at(embedded_candles(arrivals), max(bar.t for bar in arrivals))
    await publish(env, arrivals[:half])
    sink = Sink(tmp_path / "flink.db", env)
    job = start_job(env, tmp_path / "work1")
    try:
        # Killed (the whole process tree, no chance to clean up) once the first half is
        # processed and checkpointed.
        await sink.wait_for_count(
            {(bar.symbol, "1m", bar.t) for bar in arrivals[: half // 2]}, within_s=180
        )
        checkpoints = Path(env["SPEEDLAYER_FLINK_CHECKPOINT_DIR"])
        first = newest_checkpoint(checkpoints)
        for _ in range(60):  # and one more checkpoint after that, within 30 s
            if newest_checkpoint(checkpoints) not in (None, first):
                break
            await asyncio.sleep(0.5)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
        resume_from = newest_checkpoint(checkpoints)
        assert resume_from is not None

        await publish(env, arrivals[half:])
        job = start_job(env, tmp_path / "work2")
        got = await sink.wait_for(want, within_s=240)
        spec = json.loads((tmp_path / "work2" / "job.json").read_text())
        assert spec["config"]["execution.state-recovery.path"] == resume_from.as_uri()
    finally:
        stop_group(job)
        code = sink.stop()
    # Nothing lost, nothing counted twice: every candle as if the job had never stopped.
    diffs = differences(got, want)
    assert not diffs, "\n".join(diffs)
    assert code == 0
