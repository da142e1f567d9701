"""The Flink job over a real Kafka broker: bars on the raw topic -> the job -> candle topics ->
`speedlayer sink` -> SQLite, equal to the embedded resampler on the same arrivals."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

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
    real_bars,
)

pytestmark = pytest.mark.timeout(900)

MINUTES = 300


async def publish(bootstrap: str, prefix: str, arrivals: list[Bar], batch: int = 250) -> None:
    async with KafkaBus(bootstrap, topic_prefix=prefix) as bus:
        await bus.ensure()
        for i in range(0, len(arrivals), batch):
            await bus.publish(RAW_TOPIC, arrivals[i : i + batch])


async def stored(db: Path, symbols: set[str]) -> dict[CandleKey, Candle]:
    async with SQLiteStore(db, INTERVALS, SystemClock()) as store:
        out: dict[CandleKey, Candle] = {}
        for interval in INTERVALS:
            for symbol in sorted(symbols):
                for candle in await store.query(symbol, interval):
                    out[(symbol, interval.name, candle.timestamp)] = candle
        return out


async def test_flink_job_over_kafka_and_the_sink_store_the_embedded_candles(
    tmp_path: Path, realbars: Path, flink_ready: None, kafka_bootstrap: str
) -> None:
    prefix = f"flink-{uuid.uuid4().hex[:8]}-"
    env = {
        **FLINK_ENV,
        "SPEEDLAYER_BUS": "kafka",
        "SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SPEEDLAYER_KAFKA_TOPIC_PREFIX": prefix,
        "SPEEDLAYER_FLINK_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }
    arrivals = adversarial(real_bars(realbars, MINUTES))
    await publish(kafka_bootstrap, prefix, arrivals)
    # The job reads the raw topic to the offsets present at its start, then finishes.
    await asyncio.to_thread(
        run_cli, "flink", "run", "--env", "kafka", "--bounded",
        "--work-dir", str(tmp_path / "work"), env=env, timeout=800,
    )  # fmt: skip

    db = tmp_path / "flink.db"
    sink = await asyncio.create_subprocess_exec(
        SPEEDLAYER, "sink", "--db", str(db), env={**os.environ, **env}
    )
    want = embedded_candles(arrivals)
    symbols = {bar.symbol for bar in arrivals}
    got: dict[CandleKey, Candle] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert sink.returncode is None, f"speedlayer sink exited with {sink.returncode}"
            if db.exists():
                got = await stored(db, symbols)
                if len(got) >= len(want) and not differences(got, want):
                    break
            await asyncio.sleep(1)
    finally:
        sink.terminate()
        code = await asyncio.wait_for(sink.wait(), 30)
    assert differences(got, want) == []
    assert code == 0
