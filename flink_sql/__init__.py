"""The Flink SQL job: bars from the raw topic or stream in, candles of every interval out.

The SQL lives in the ``.sql`` files next to this module, one source of truth for every
environment; this module renders them for one environment (docs/flink.md):

* ``kafka``: Kafka (self-hosted or Amazon MSK) topics in and out, the bus's topic names;
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
Environment = Literal["kafka", "files"]
ENVIRONMENTS: tuple[Environment, ...] = ("kafka", "files")

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
    # A partition without bars must not hold the watermark (and every closing candle) back.
    "table.exec.source.idle-timeout": "5 s",
}


@dataclass(frozen=True)
class JobOptions:
    """What varies between deployments of the job."""

    environment: Environment = "kafka"
    # How long the newest version of a minute and a bucket's aggregate are kept after their last
    # change: a minute resent later than this is counted as new (docs/flink.md#state).
    state_ttl: str = "2 h"
    parallelism: int = 1
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

    @property
    def needs_connectors(self) -> bool:
        """Whether the job loads connector jars (Kafka; the files environment needs none)."""
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


def fragment(name: str) -> str:
    """A select-list fragment without its leading comment lines."""
    lines = [line for line in read(name).splitlines() if not line.startswith("--")]
    return "\n       ".join(lines)


def statements(script: str) -> list[str]:
    """The statements of a rendered script (each ends with ``;`` at the end of a line)."""
    out = []
    for chunk in script.split(";\n"):
        body = "\n".join(line for line in chunk.splitlines() if not line.startswith("--")).strip()
        if body:
            out.append(body.removesuffix(";"))
    return out


def render(intervals: IntervalSet, options: JobOptions) -> JobSpec:
    """The job for ``intervals`` in ``options.environment``."""
    if options.environment not in ENVIRONMENTS:
        raise ConfigError(f"unknown Flink environment {options.environment!r}")
    for interval in intervals:
        if interval.interval_ms % MINUTE_MS:
            raise ConfigError(f"interval {interval.name} is not a whole number of minutes")
    common: dict[str, object] = {}
    config = {
        **BASE_CONFIG,
        "parallelism.default": str(options.parallelism),
        # Per minute, bucket and candle: kept this long after the last change.
        "table.exec.state.ttl": options.state_ttl,
    }
    env = options.environment
    source_values = {
        "raw_topic": options.topic_prefix + RAW_TOPIC,
        "bootstrap_servers": options.bootstrap_servers,
        "group_id": options.group_id,
        "bounded": "'scan.bounded.mode' = 'latest-offset',\n  " if options.bounded else "",
        "path": Path(options.input_path).resolve().as_uri() if options.input_path else "",
        "output_dir": Path(options.output_dir).resolve().as_uri() if options.output_dir else "",
    }
    script = [Template(read(f"source.{env}.sql")).substitute(source_values)]
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
        }
        values["aggregates"] = fragment("aggregates.sql")
        values["minute"] = Template(fragment("minute.sql")).substitute(values)
        script.append(Template(read("interval.sql")).substitute(values))
        script.append(Template(read(f"sink.{env}.sql")).substitute(values))
        name = interval.name
        inserts.append(f"INSERT INTO candles_{name} SELECT * FROM candles_out_{name}")
    if env == "kafka":
        config["execution.checkpointing.interval"] = options.checkpoint_interval
        config["execution.checkpointing.externalized-checkpoint-retention"] = (
            "RETAIN_ON_CANCELLATION"
        )
        if options.checkpoint_dir:
            config["execution.checkpointing.storage"] = "filesystem"
            config["execution.checkpointing.dir"] = Path(options.checkpoint_dir).resolve().as_uri()
        if options.resume_from:
            config["execution.state-recovery.path"] = Path(options.resume_from).resolve().as_uri()
    return JobSpec(env, config, statements("\n".join(script)), inserts)
