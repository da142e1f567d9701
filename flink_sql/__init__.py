"""The Flink SQL job: bars from the raw topic or stream in, candles of every interval out.

The SQL lives in the ``.sql`` files next to this module, one source of truth for every
environment; this module renders them for one environment (docs/flink.md):

* ``kafka``: Kafka (self-hosted or Amazon MSK) topics in and out, the bus's topic names;
* ``kinesis``: Kinesis streams in and out (Amazon Managed Service for Apache Flink), the bus's
  stream names;
* ``files``: a JSON-lines file of bar records in, a directory of changelog files per interval
  out (development and tests).

The result is a :class:`JobSpec`, which ``flink_sql/job.py`` (run by the Flink virtualenv's
Python, see ``make flink``) executes. This module imports only the core, so the composition
layer can render and print a job without Flink installed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Literal

from speedlayer.bus.base import RAW_TOPIC, candle_topic
from speedlayer.errors import ConfigError
from speedlayer.intervals import MINUTE_MS, IntervalSet

SQL_DIR = Path(__file__).resolve().parent
JOB_SCRIPT = SQL_DIR / "job.py"
Environment = Literal["kafka", "kinesis", "files"]
ENVIRONMENTS: tuple[Environment, ...] = ("kafka", "kinesis", "files")
# Environments that run until cancelled, checkpointing their state (the files one is a batch).
STREAMING: tuple[Environment, ...] = ("kafka", "kinesis")

# Flink settings every environment uses (docs/flink.md#settings).
BASE_CONFIG: dict[str, str] = {
    "pipeline.name": "speedlayer-candles",
    # Buckets align to the epoch in UTC whatever the machine's zone (docs/design.md).
    "table.local-time-zone": "UTC",
    # Updates are written as their new value, keyed by symbol (sink.kafka.sql).
    "table.exec.sink.upsert-materialize": "NONE",
    # No mini-batches: their processing-time assigner replaces the event-time watermark that
    # `final` is computed from (bars.sql) in the updating branch.
    "table.exec.mini-batch.enabled": "false",
}


@dataclass(frozen=True)
class JobOptions:
    """What varies between deployments of the job."""

    environment: Environment = "kafka"
    # How long the newest version of a minute and a bucket's aggregate are kept after their last
    # change: a minute resent later than this is counted as new (docs/flink.md#state).
    state_ttl: str = "2 h"
    parallelism: int = 1
    # A source split without bars for this long no longer holds the watermark (and every
    # closing candle) back. Short timeouts let a reader that is merely starved under load count
    # as idle: the watermark then moves on without it, and a bucket all of whose bars it
    # delivers afterwards is never closed by the window (docs/flink.md#finality).
    idle_timeout: str = "60 s"
    checkpoint_interval: str = "10 s"
    # Where checkpoints go (kept when the job is cancelled), and the one to resume from.
    checkpoint_dir: str = ""
    resume_from: str = ""
    # kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    group_id: str = "speedlayer-flink"
    # Stop at the newest offsets present when the job starts (a bounded run, for tests and
    # backfills); otherwise the job runs until it is cancelled.
    bounded: bool = False
    # kinesis: the streams' region, account and name prefix (their ARNs), and an emulator's
    # endpoint (kinesalite), which the connector then uses with placeholder credentials
    aws_region: str = "us-east-1"
    aws_account_id: str = "000000000000"
    stream_prefix: str = ""
    kinesis_endpoint: str = ""
    # files
    input_path: str = ""
    output_dir: str = ""


@dataclass
class JobSpec:
    """A rendered job: Flink settings, the DDL and views, and what to run."""

    environment: Environment
    config: dict[str, str]
    statements: list[str]
    inserts: list[str] = field(default_factory=list)
    # JVM options a local run needs (the runner passes them to the mini-cluster's JVM).
    jvm_options: list[str] = field(default_factory=list)

    @property
    def needs_connectors(self) -> bool:
        """Whether the job loads connector jars (Kafka, Kinesis; the files environment needs
        none). Every environment loads the jar of the job's functions (functions.sql)."""
        return self.environment != "files"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def sql(self) -> str:
        """The whole job as one SQL script (``speedlayer flink plan``)."""
        parts = [f"SET '{key}' = '{value}';" for key, value in self.config.items()]
        parts += [f"{statement};" for statement in self.statements]
        if self.inserts:
            parts.append(
                "EXECUTE STATEMENT SET BEGIN\n"
                + "\n".join(f"{insert};" for insert in self.inserts)
                + "\nEND;"
            )
        return "\n\n".join(parts) + "\n"


def read(name: str) -> str:
    return (SQL_DIR / name).read_text()


def statements(script: str) -> list[str]:
    """The statements of a rendered script (each ends with ``;`` at the end of a line)."""
    out = []
    for chunk in script.split(";\n"):
        body = "\n".join(line for line in chunk.splitlines() if not line.startswith("--")).strip()
        if body:
            out.append(body.removesuffix(";"))
    return out


def stream_arn(options: JobOptions, name: str) -> str:
    """The ARN of the Kinesis stream ``name`` (before the prefix)."""
    return (
        f"arn:aws:kinesis:{options.aws_region}:{options.aws_account_id}:stream/"
        f"{options.stream_prefix}{name}"
    )


def _table_options(pairs: dict[str, str]) -> str:
    """Table options to put before the last one of a WITH clause."""
    return "".join(f"'{key}' = '{value}',\n  " for key, value in pairs.items())


def kinesis_options(options: JobOptions) -> tuple[dict[str, str], dict[str, str]]:
    """The AWS options of every Kinesis table, and those only sinks take. Against an emulator:
    its endpoint, placeholder credentials, and HTTP/1.1 for the sink (kinesalite speaks no
    HTTP/2); on AWS the default credential chain (the application's role)."""
    common = {"aws.region": options.aws_region}
    sink: dict[str, str] = {}
    if options.kinesis_endpoint:
        common |= {
            "aws.endpoint": options.kinesis_endpoint,
            "aws.credentials.provider": "BASIC",
            "aws.credentials.basic.accesskeyid": "local",
            "aws.credentials.basic.secretkey": "local",
        }
        sink["sink.http-client.protocol.version"] = "HTTP1_1"
    return common, sink


def render(intervals: IntervalSet, options: JobOptions) -> JobSpec:
    """The job for ``intervals`` in ``options.environment``."""
    if options.environment not in ENVIRONMENTS:
        raise ConfigError(f"unknown Flink environment {options.environment!r}")
    for interval in intervals:
        if interval.interval_ms % MINUTE_MS:
            raise ConfigError(f"interval {interval.name} is not a whole number of minutes")
        if not interval.utc_aligned:
            raise ConfigError(
                f"interval {interval.name} is exchange-aligned (SPEEDLAYER_CANDLE_ALIGNMENT="
                "exchange): the Flink job computes UTC-aligned candles only; run the resampler "
                "(`speedlayer process` / `up`) for exchange-time candles"
            )
    common: dict[str, object] = {}
    config = {
        **BASE_CONFIG,
        "parallelism.default": str(options.parallelism),
        # Per minute, bucket and candle: kept this long after the last change.
        "table.exec.state.ttl": options.state_ttl,
        "table.exec.source.idle-timeout": options.idle_timeout,
    }
    env = options.environment
    aws_common, aws_sink = kinesis_options(options)
    source_values = {
        "raw_topic": options.topic_prefix + RAW_TOPIC,
        "raw_stream_arn": stream_arn(options, RAW_TOPIC),
        "aws_options": _table_options(aws_common),
        "bootstrap_servers": options.bootstrap_servers,
        "group_id": options.group_id,
        "bounded": "'scan.bounded.mode' = 'latest-offset',\n  " if options.bounded else "",
        "path": Path(options.input_path).resolve().as_uri() if options.input_path else "",
        "output_dir": Path(options.output_dir).resolve().as_uri() if options.output_dir else "",
    }
    script = [read("functions.sql"), Template(read(f"source.{env}.sql")).substitute(source_values)]
    script.append(Template(read("bars.sql")).substitute(common))
    inserts = []
    for interval in intervals:
        values = {
            **common,
            "name": interval.name,
            "interval_ms": interval.interval_ms,
            "minutes": interval.interval_ms // MINUTE_MS,
            "retention_s": interval.retention_s,
            "topic": options.topic_prefix + candle_topic(interval.name),
            "bootstrap_servers": options.bootstrap_servers,
            "output_dir": source_values["output_dir"],
            "stream_arn": stream_arn(options, candle_topic(interval.name)),
            "aws_options": source_values["aws_options"],
            "sink_options": _table_options(aws_sink),
        }
        script.append(Template(read("interval.sql")).substitute(values))
        script.append(Template(read(f"sink.{env}.sql")).substitute(values))
        name = interval.name
        inserts.append(f"INSERT INTO candles_{name} SELECT * FROM candles_out_{name}")
    if env in STREAMING:
        config["execution.checkpointing.interval"] = options.checkpoint_interval
        config["execution.checkpointing.externalized-checkpoint-retention"] = (
            "RETAIN_ON_CANCELLATION"
        )
        if options.checkpoint_dir:
            config["execution.checkpointing.storage"] = "filesystem"
            config["execution.checkpointing.dir"] = Path(options.checkpoint_dir).resolve().as_uri()
        if options.resume_from:
            config["execution.state-recovery.path"] = Path(options.resume_from).resolve().as_uri()
    spec = JobSpec(env, config, statements("\n".join(script)), inserts)
    if env == "kinesis" and options.kinesis_endpoint:
        # kinesalite answers JSON only; the AWS SDK asks for CBOR unless told not to.
        spec.jvm_options.append("-Daws.cborEnabled=false")
    return spec
