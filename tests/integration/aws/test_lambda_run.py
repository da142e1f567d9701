"""`speedlayer lambda-run` as a real process, against kinesalite, dynalite and a Kafka broker.

What the local event-source-mapping runner must do beyond moving records (test_lambdas.py):

* each handler keeps its own checkpoints: ``processors.kinesis_to_kafka:handler`` run after
  ``processors.kinesis_to_dynamodb:handler`` on the same stream still processes every record
  (the default lease names module and function), and ``--consumer`` names a fresh mapping;
* several ``--stream`` flags work, through the handler's async twin on the runner's loop, and a
  plain synchronous handler is called one invocation at a time across every stream;
* missing credentials stop the runner (and every AWS service) at once with a message naming the
  settings, instead of retrying the batch forever;
* the runner reads the services' settings: the per-service endpoints, the stream and table
  prefixes, the checkpoint table, ``SPEEDLAYER_AWS_CREATE_RESOURCES``;
* it exits without asyncio's complaints: every client of the handler is closed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import threading
import time
import uuid
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from processors.lambda_runner import serve
from speedlayer.bus.base import candle_topic
from speedlayer.bus.kinesis import KinesisBus
from speedlayer.bus.wire import decode_item
from speedlayer.models import Candle
from tests.bus_helpers import read_kafka_topic
from tests.conftest import free_port, run_cli
from tests.integration.aws.test_lambdas import latest, new_store, stored, updates

pytestmark = [pytest.mark.timeout(180)]

NOISE = ("Unclosed", "Task was destroyed", "never awaited", "Traceback", "already running")
STATS = re.compile(r"<- (\S+): RunnerStats\((.*)\)")


def no_aws_environment() -> dict[str, str]:
    """The test's environment without any AWS credential, profile or endpoint setting."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and not key.startswith("SPEEDLAYER_")
    }
    env.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws/credentials",
        AWS_CONFIG_FILE="/nonexistent/aws/config",
        AWS_EC2_METADATA_DISABLED="true",  # no wait for an instance role
        SPEEDLAYER_LOG_LEVEL="info",
    )
    return env


class Emulators:
    """Per-test names over the session's emulators and broker, and the environment giving them
    to `speedlayer lambda-run` the way the services get them: per-service endpoints (no
    SPEEDLAYER_AWS_ENDPOINT_URL), prefixes, a checkpoint table of its own, no AWS credentials."""

    def __init__(self, kinesalite_url: str, dynalite_url: str, kafka: str = "") -> None:
        self.kinesalite_url = kinesalite_url
        self.dynalite_url = dynalite_url
        tag = uuid.uuid4().hex[:10]
        self.stream_prefix = f"r{tag}-"
        self.table_prefix = f"r{tag}_"
        self.topic_prefix = f"r{tag}."
        self.checkpoint_table = f"r{tag}_checkpoints"
        self.env = {
            **no_aws_environment(),
            "SPEEDLAYER_KINESIS_ENDPOINT_URL": kinesalite_url,
            "SPEEDLAYER_DYNAMODB_ENDPOINT_URL": dynalite_url,
            "SPEEDLAYER_KINESIS_STREAM_PREFIX": self.stream_prefix,
            "SPEEDLAYER_DYNAMODB_TABLE_PREFIX": self.table_prefix,
            "SPEEDLAYER_KINESIS_CHECKPOINT_TABLE": self.checkpoint_table,
            "SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS": kafka,
            "SPEEDLAYER_KAFKA_TOPIC_PREFIX": self.topic_prefix,
            "SPEEDLAYER_AWS_CREATE_RESOURCES": "true",
            "SPEEDLAYER_INTERVALS": "15m,1h",
        }

    def publish(self, candles: list[Candle]) -> None:
        async def go() -> None:
            async with KinesisBus(
                endpoint_url=self.kinesalite_url, dynamodb_endpoint_url=self.dynalite_url,
                stream_prefix=self.stream_prefix, shard_count=2, intervals=["15m", "1h"],
            ) as bus:  # fmt: skip
                topics = sorted({candle_topic(c.interval) for c in candles})
                await bus.ensure_streams(topics)
                for topic in topics:
                    batch = [c for c in candles if candle_topic(c.interval) == topic]
                    for start in range(0, len(batch), 200):
                        await bus.publish(topic, batch[start : start + 200])

        asyncio.run(go())

    def lambda_run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`speedlayer lambda-run ARGS --until-idle`; it must end well within the timeout."""
        return run_cli(
            "lambda-run", *args, "--until-idle", "--batch-size", "50",
            env={**self.env, **env}, check=False, timeout=120,
        )  # fmt: skip

    def leases(self, table: str | None = None) -> dict[str, dict[str, str]]:
        """Lease -> shard -> checkpoint in the checkpoint table."""
        ddb = boto3.client(
            "dynamodb", endpoint_url=self.dynalite_url, region_name="us-east-1",
            aws_access_key_id="local", aws_secret_access_key="local",
        )  # fmt: skip
        out: dict[str, dict[str, str]] = {}
        for item in ddb.scan(TableName=table or self.checkpoint_table)["Items"]:
            out.setdefault(item["lease"]["S"], {})[item["shard"]["S"]] = item["sequence"]["S"]
        return out

    def stored(self, want: dict[Any, Candle]) -> dict[Any, Candle]:
        async def go() -> dict[Any, Candle]:
            async with new_store(
                self.dynalite_url, prefix=self.table_prefix, create_tables=False
            ) as store:
                return await stored(store, want)

        return asyncio.run(go())

    def kafka_topic(self, topic: str, n: int) -> list[Any]:
        bootstrap = self.env["SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS"]
        return asyncio.run(read_kafka_topic(bootstrap, self.topic_prefix + topic, n, 30))


def stats(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """Stream -> the runner's final counters, from its last log line per stream."""
    out: dict[str, dict[str, int]] = {}
    for stream, fields in STATS.findall(proc.stderr):
        out[stream] = {k: int(v) for k, v in (f.split("=") for f in fields.split(", "))}
    return out


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_quiet(*procs: subprocess.CompletedProcess[str]) -> None:
    """None of asyncio's complaints about unclosed clients or tasks, no traceback."""
    for proc in procs:
        noise = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
        assert not noise, "\n".join(noise[:20])


def key(c: Candle) -> tuple[str, str, int, int]:
    return (c.interval, c.symbol, c.timestamp, c.revision)


@pytest.fixture
def emulators(kinesalite_url: str, dynalite_url: str, kafka_bootstrap: str) -> Emulators:
    return Emulators(kinesalite_url, dynalite_url, kafka_bootstrap)


def test_each_handler_keeps_its_own_checkpoints(emulators: Emulators) -> None:
    """Both handlers, by module:function, one after the other on one stream: each processes
    every record. ``--consumer`` starts a mapping of its own, from the oldest record."""
    sent = updates([f"S{i:03d}" for i in range(60)], "15m", buckets=3, revisions=3)  # 540
    emulators.publish(sent)
    stream = emulators.stream_prefix + "market-data-15m"
    to_ddb = emulators.lambda_run("processors.kinesis_to_dynamodb:handler", "--stream", stream)
    assert_ok(to_ddb)
    to_kafka = emulators.lambda_run("processors.kinesis_to_kafka:handler", "--stream", stream)
    assert_ok(to_kafka)
    for proc in (to_ddb, to_kafka):
        assert stats(proc)[stream]["records"] == len(sent), proc.stderr[-2000:]
    want = latest(sent)
    assert emulators.stored(want) == want
    got = emulators.kafka_topic("market-data-15m", len(sent))
    assert {key(c) for c in sent} <= {key(item) for item in _items(got)}
    leases = emulators.leases()
    assert set(leases) == {
        f"lambda:processors.kinesis_to_dynamodb:handler/{stream}",
        f"lambda:processors.kinesis_to_kafka:handler/{stream}",
    }
    # The short name is the same handler: it resumes the same checkpoints (nothing left).
    again = emulators.lambda_run("kinesis_to_kafka", "--stream", stream)
    assert_ok(again)
    assert stats(again)[stream]["records"] == 0
    replay = emulators.lambda_run("kinesis_to_kafka", "--stream", stream, "--consumer", "replay")
    assert_ok(replay)
    assert stats(replay)[stream]["records"] == len(sent)
    assert f"lambda:replay/{stream}" in emulators.leases()
    assert_quiet(to_ddb, to_kafka, again, replay)


def _items(records: list[Any]) -> list[Candle]:
    items = [decode_item(r.value) for r in records]
    candles = [i for i in items if isinstance(i, Candle)]
    assert len(candles) == len(items)
    return candles


def test_several_streams_are_mapped_at_once(emulators: Emulators) -> None:
    """docs/aws.md's own example: kinesis_to_kafka on two streams, no function error."""
    sent = updates([f"S{i:03d}" for i in range(30)], "15m", 2, 3) + updates(
        [f"H{i:03d}" for i in range(30)], "1h", 2, 3
    )
    emulators.publish(sent)
    streams = [emulators.stream_prefix + f"market-data-{interval}" for interval in ("15m", "1h")]
    proc = emulators.lambda_run("kinesis_to_kafka", "--stream", streams[0], "--stream", streams[1])
    assert_ok(proc)
    counters = stats(proc)
    for interval, stream in zip(("15m", "1h"), streams, strict=True):
        mine = [c for c in sent if c.interval == interval]
        assert counters[stream]["records"] == len(mine), proc.stderr[-2000:]
        assert counters[stream]["function_errors"] == 0, proc.stderr[-2000:]
        got = emulators.kafka_topic(f"market-data-{interval}", len(mine))
        assert {key(c) for c in mine} <= {key(item) for item in _items(got)}
    assert_quiet(proc)


# A plain synchronous handler (any module:function): one execution environment, so one call at
# a time even with several streams.
CALLS: list[int] = []
_ACTIVE = [0]
_MAX_ACTIVE = [0]
_GUARD = threading.Lock()


def recording_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with _GUARD:
        _ACTIVE[0] += 1
        _MAX_ACTIVE[0] = max(_MAX_ACTIVE[0], _ACTIVE[0])
    try:
        time.sleep(0.02)
        CALLS.append(len(event["Records"]))
        assert context.function_name
        return {"batchItemFailures": []}
    finally:
        with _GUARD:
            _ACTIVE[0] -= 1


async def test_a_sync_handler_on_several_streams_runs_one_call_at_a_time(
    emulators: Emulators,
) -> None:
    sent = updates([f"S{i:03d}" for i in range(20)], "15m", 2, 2) + updates(
        [f"H{i:03d}" for i in range(20)], "1h", 2, 2
    )
    await asyncio.to_thread(emulators.publish, sent)
    CALLS.clear()
    _MAX_ACTIVE[0] = 0
    results = await serve(
        f"{__name__}:recording_handler",
        [emulators.stream_prefix + "market-data-15m", emulators.stream_prefix + "market-data-1h"],
        kinesis_endpoint_url=emulators.kinesalite_url,
        dynamodb_endpoint_url=emulators.dynalite_url,
        until_idle=True,
        batch_size=10,
        poll_interval_s=0.05,
    )
    assert sum(CALLS) == len(sent) == sum(r.records for r in results)
    assert all(r.function_errors == 0 for r in results)
    assert _MAX_ACTIVE[0] == 1  # never two calls at once, across shards and streams


@pytest.mark.parametrize("runner_endpoints", [False, True], ids=["nothing", "runner-only"])
def test_missing_credentials_stop_the_runner_at_once(
    kinesalite_url: str, dynalite_url: str, runner_endpoints: bool
) -> None:
    """No credentials and no endpoint: the runner (nothing set), or the handler (the runner's
    own endpoints given by flags) fails at once, naming the settings, instead of retrying."""
    extra: list[str] = []
    if runner_endpoints:
        emulators = Emulators(kinesalite_url, dynalite_url)
        emulators.publish(updates(["A", "B"], "15m", 1, 1))
        extra = [
            "--kinesis-endpoint-url", kinesalite_url, "--dynamodb-endpoint-url", dynalite_url,
        ]  # fmt: skip
        stream = emulators.stream_prefix + "market-data-15m"
    else:
        stream = "market-data-15m"
    began = time.monotonic()
    proc = run_cli(
        "lambda-run", "kinesis_to_dynamodb", "--stream", stream, "--until-idle", *extra,
        env=no_aws_environment(), check=False, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert elapsed < 30
    assert "no AWS credentials" in proc.stderr, proc.stderr[-2000:]
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE" in proc.stderr
    assert "SPEEDLAYER_DYNAMODB_ENDPOINT_URL" in proc.stderr
    assert "at AWS itself" in proc.stderr
    assert "function error" not in proc.stderr  # not retried
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr[-2000:]


@pytest.mark.parametrize(
    "command",
    [
        ["process", "--bus", "kinesis", "--store", "dynamodb"],
        ["ingest", "--bus", "kinesis", "--symbols", "3", "--speed", "60"],
        ["api", "--bus", "kinesis", "--store", "dynamodb", "--port", "0"],
    ],
    ids=["process", "ingest", "api"],
)
@pytest.mark.parametrize("create", ["true", "false"])
def test_services_without_credentials_stop_with_the_message(
    command: list[str], create: str
) -> None:
    """The services fail the same way, also when they create nothing at start (the first
    request would be the first call to AWS): never a retry until a deadline."""
    if command[0] == "api":
        command = [*command[:-1], str(free_port())]
    env = {**no_aws_environment(), "SPEEDLAYER_AWS_CREATE_RESOURCES": create}
    began = time.monotonic()
    proc = run_cli(*command, env=env, check=False, timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - began < 30
    assert "no AWS credentials for" in proc.stderr, proc.stderr[-2000:]
    assert "SPEEDLAYER_AWS_ENDPOINT_URL" in proc.stderr


def test_lambda_run_reads_the_services_settings(emulators: Emulators) -> None:
    """Only the per-service endpoints (no SPEEDLAYER_AWS_ENDPOINT_URL), the stream prefix
    (``--stream`` names the stream as the services do), the table prefix and the checkpoint
    table: the runner and the handler both use them."""
    sent = updates([f"P{i:03d}" for i in range(25)], "15m", 2, 2)
    emulators.publish(sent)
    proc = emulators.lambda_run("kinesis_to_dynamodb", "--stream", "market-data-15m")
    assert_ok(proc)
    stream = emulators.stream_prefix + "market-data-15m"
    assert stats(proc)[stream]["records"] == len(sent)
    want = latest(sent)
    assert emulators.stored(want) == want  # in the prefixed tables
    assert set(emulators.leases()) == {f"lambda:processors.kinesis_to_dynamodb:handler/{stream}"}

    # SPEEDLAYER_AWS_CREATE_RESOURCES=false: infrastructure code owns the checkpoint table, so
    # a missing one is an error, not created behind its back.
    missing = f"{emulators.table_prefix}missing_checkpoints"
    off = emulators.lambda_run(
        "kinesis_to_dynamodb", "--stream", "market-data-15m",
        SPEEDLAYER_AWS_CREATE_RESOURCES="false", SPEEDLAYER_KINESIS_CHECKPOINT_TABLE=missing,
    )  # fmt: skip
    assert off.returncode != 0
    assert missing in off.stderr, off.stderr[-2000:]
    ddb = boto3.client(
        "dynamodb", endpoint_url=emulators.dynalite_url, region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
    )  # fmt: skip
    with pytest.raises(ddb.exceptions.ResourceNotFoundException):
        ddb.describe_table(TableName=missing)


@pytest.mark.parametrize("handler", ["kinesis_to_dynamodb", "kinesis_to_kafka"])
def test_lambda_run_exits_without_unclosed_clients(emulators: Emulators, handler: str) -> None:
    emulators.publish(updates([f"S{i:03d}" for i in range(10)], "15m", 1, 2))
    stream = emulators.stream_prefix + "market-data-15m"
    proc = emulators.lambda_run(handler, "--stream", stream)
    assert_ok(proc)
    assert stats(proc)[stream]["records"] == 20
    assert_quiet(proc)
