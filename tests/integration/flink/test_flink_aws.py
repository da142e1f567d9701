"""The AWS shape of the Flink job, locally: the same job with the Kinesis DDL.

    bars on kinesalite's raw stream -> `speedlayer flink run --env kinesis` (Flink's Kinesis SQL
    connector) -> the Kinesis candle streams -> `speedlayer lambda-run kinesis_to_dynamodb`
    -> dynalite -> `speedlayer api --store dynamodb` (REST)

gives the embedded resampler's candles for the same adversarial arrivals (late, superseded and
duplicated bars), apart from revisions and the newest buckets, which stay forming while the
watermark stands at the newest minute (docs/flink.md)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from speedlayer.bus.base import RAW_TOPIC
from speedlayer.models import Bar, Candle
from speedlayer.store.dynamodb import DynamoDBStore
from tests.conftest import ROOT, ApiServer, require, run_cli
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
from tests.integration.aws.test_aws_path import Aws, Service, api_candles, aws, services
from tests.integration.flink.test_flink_kafka import start_job

__all__ = ["aws", "services"]  # the fixtures
pytestmark = pytest.mark.timeout(600)

MINUTES = 120


async def stored(store: DynamoDBStore, symbols: set[str]) -> dict[CandleKey, Candle]:
    out: dict[CandleKey, Candle] = {}
    for interval in INTERVALS:
        for symbol in sorted(symbols):
            for candle in await store.query(symbol, interval):
                out[(symbol, interval.name, candle.timestamp)] = candle
    return out


async def publish(aws: Aws, arrivals: list[Bar], batch: int = 250) -> None:
    async with aws.bus() as bus:
        for i in range(0, len(arrivals), batch):
            await bus.publish(RAW_TOPIC, arrivals[i : i + batch])


async def test_flink_job_on_kinesis_through_the_lambda_sink_gives_the_embedded_candles(
    tmp_path: Path, realbars: Path, flink_ready: None, aws: Aws, services: list[Service]
) -> None:
    require(
        any((ROOT / ".flink" / "lib").glob("*kinesis*.jar")),
        "no Kinesis connector jar in .flink/lib: see FLINK_KINESIS_JAR in the Makefile",
    )
    env = {**aws.env, **FLINK_ENV, "SPEEDLAYER_FLINK_CHECKPOINT_DIR": str(tmp_path / "chk")}
    run_cli("init-aws", env=env)
    arrivals = adversarial(real_bars(realbars, MINUTES))
    symbols = {bar.symbol for bar in arrivals}
    want = final_at(embedded_candles(arrivals), max(bar.t for bar in arrivals))
    await publish(aws, arrivals)

    job = start_job({**os.environ, **env}, tmp_path / "work", "kinesis", tmp_path / "flink.log")
    streams = [f"{aws.env['SPEEDLAYER_KINESIS_STREAM_PREFIX']}market-data-{iv.name}"
               for iv in INTERVALS]  # fmt: skip
    lambda_args = ["lambda-run", "kinesis_to_dynamodb", "--batch-size", "500"]
    lambda_args += [arg for stream in streams for arg in ("--stream", stream)]
    sink = Service("lambda", lambda_args, env, tmp_path).start()
    services.append(sink)
    started = time.monotonic()
    got: dict[CandleKey, Candle] = {}
    try:
        async with aws.store() as store:
            deadline = started + 300
            while time.monotonic() < deadline:
                assert job.poll() is None, (tmp_path / "flink.log").read_text()[-5000:]
                sink.alive()
                got = await stored(store, symbols)
                if len(got) >= len(want) and not differences(got, want):
                    break
                await asyncio.sleep(2)
        took = time.monotonic() - started
        api = ApiServer(tmp_path / "unused.db", {**env, "SPEEDLAYER_STORE": "dynamodb"})
        try:
            await asyncio.to_thread(api.start)
            rest = await asyncio.to_thread(api_candles, api.url, sorted(symbols))
        finally:
            api.stop()
    finally:
        stop_group(job)
    diffs = differences(got, want)
    assert not diffs, "\n".join(diffs[:50])
    assert sink.stop() == 0
    assert "Traceback" not in sink.text(), sink.text()

    # REST from DynamoDB serves exactly the stored candles.
    for (symbol, name), rows in rest.items():
        mine = sorted((c for k, c in got.items() if k[0] == symbol and k[1] == name),
                      key=lambda c: c.timestamp)  # fmt: skip
        assert [row["timestamp"] for row in rows] == [c.timestamp for c in mine]
        for row, candle in zip(rows, mine, strict=True):
            assert row["close"] == candle.close and row["revision"] == candle.revision
            assert row["final"] == candle.final and row["volume"] == candle.volume
    finals = sum(c.final for c in got.values())
    print(f"\n[flink on kinesis] {len(arrivals)} arrivals, {len(symbols)} symbols, "
          f"{MINUTES} min: {len(got)} candles ({finals} final) in DynamoDB "
          f"{took:.0f} s after the job started")  # fmt: skip
    assert finals
