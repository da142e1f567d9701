"""The AWS deployment of speedlayer as one CDK stack (infra/README.md): Polygon -> ``speedlayer
ingest`` on Fargate -> Kinesis ``market-data-raw`` -> the Flink SQL job on Managed Service for
Apache Flink -> Kinesis ``market-data-{interval}`` -> the Lambda sinks -> DynamoDB, read by
``speedlayer api`` on Fargate behind an Application Load Balancer; alarms and a dashboard.

Names come from the project's own code, never retyped: the tables from the DynamoDB store the
services open (``speedlayer.backends.dynamodb_store``), the streams from the Kinesis bus
(``kinesis_bus(...).stream_name``), the handler strings from the handlers' modules, the Flink
runtime and property groups from the application zip ``speedlayer flink package --env kinesis``
builds (``launch.flink_package``), which the stack checks against its own streams. Every option
is a CDK context value (``-c key=value`` or ``cdk.json``), listed in :data:`OPTIONS`.

IAM is least privilege through the constructs' ``grant*`` methods: no wildcard actions, no data
resource granted as ``*`` (the tests check the synthesized template).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kinesisanalyticsv2 as flink
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as sns_subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from flink_sql.job import DEFAULT_SPEC, RUN_OPTIONS_GROUP
from launch import emf
from launch.flink_package import PLACEHOLDER_ACCOUNT, PROPERTIES_FILE, RUNTIME, build_package
from processors import kinesis_to_dynamodb, kinesis_to_kafka
from speedlayer import __version__
from speedlayer.backends import dynamodb_store, kinesis_bus
from speedlayer.bus.base import RAW_TOPIC, candle_topic
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "speedlayer"  # the console script ([project.scripts] in pyproject.toml)
API_PORT = 8000
# Key schemas as the services create them (speedlayer/store/dynamodb.py and kinesis_shards.py;
# the tests compare them with the CreateTable requests the code makes).
CANDLE_KEYS = (("symbol", "S"), ("timestamp", "N"))
CANDLE_TTL_ATTRIBUTE = "ttl"
CHECKPOINT_KEYS = (("lease", "S"), ("shard", "S"))
# Kinesis allows 5 GetRecords calls per second per shard, shared by every reader.
READS_PER_SHARD_S = 5.0


def _default(name: str) -> Any:
    value = Settings.model_fields[name].default
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class StackOptions:
    """The stack's options, one field per CDK context key: the field's name in camelCase
    (``api_min_tasks`` is ``-c apiMinTasks=3``); ``metadata['doc']`` says what it is."""

    stack_name: str = field(default="Speedlayer", metadata={"doc": "the CloudFormation stack"})
    intervals: str = field(
        default=",".join(_default("intervals")),
        metadata={"doc": "candle intervals, as SPEEDLAYER_INTERVALS (1m is implied)"},
    )
    retention: str = field(
        default="", metadata={"doc": "retention overrides, as SPEEDLAYER_RETENTION (e.g. 1m=3d)"}
    )
    table_prefix: str = field(
        default="", metadata={"doc": "prefix of the table names (SPEEDLAYER_DYNAMODB_TABLE_PREFIX)"}
    )
    stream_prefix: str = field(
        default="",
        metadata={"doc": "prefix of the stream names (SPEEDLAYER_KINESIS_STREAM_PREFIX)"},
    )
    checkpoint_table: str = field(
        default=_default("kinesis_checkpoint_table"),
        metadata={"doc": "the Kinesis checkpoint table (SPEEDLAYER_KINESIS_CHECKPOINT_TABLE)"},
    )
    point_in_time_recovery: bool = field(
        default=False, metadata={"doc": "point-in-time recovery on the candle tables"}
    )
    retain_data: bool = field(
        default=True,
        metadata={"doc": "keep the tables and streams when the stack is deleted (false: delete)"},
    )
    stream_mode: str = field(
        default="provisioned", metadata={"doc": "Kinesis capacity: provisioned or on-demand"}
    )
    shards: int = field(
        default=_default("kinesis_shards"), metadata={"doc": "shards per stream (provisioned)"}
    )
    stream_retention_hours: int = field(
        default=24, metadata={"doc": "how long the streams keep records (24 to 8760)"}
    )
    flink_package: str = field(
        default="",
        metadata={
            "doc": "the application zip of `speedlayer flink package --env kinesis`; default: "
            "built at synth time into build/cdk-flink/ (needs `make flink`)"
        },
    )
    flink_parallelism: int = field(
        default=_default("flink_parallelism"), metadata={"doc": "parallelism of the Flink job"}
    )
    flink_parallelism_per_kpu: int = field(
        default=1, metadata={"doc": "parallel tasks per KPU (1 KPU = 1 vCPU, 4 GB)"}
    )
    flink_auto_scaling: bool = field(
        default=False, metadata={"doc": "let the service scale the parallelism"}
    )
    flink_checkpoint_interval_ms: int = field(
        default=60_000, metadata={"doc": "how often the Flink job checkpoints"}
    )
    flink_min_pause_ms: int = field(
        default=5_000, metadata={"doc": "least time between two checkpoints"}
    )
    flink_snapshots: bool = field(
        default=True, metadata={"doc": "snapshots on update and stop (restored on start)"}
    )
    lambda_code: str = field(
        default="build/lambda.zip",
        metadata={"doc": "the Lambda package, a zip or a directory (relative: to the repository)"},
    )
    lambda_batch_size: int = field(default=500, metadata={"doc": "records per invocation"})
    lambda_batching_window_s: int = field(
        default=1, metadata={"doc": "how long a mapping gathers records before invoking"}
    )
    lambda_retry_attempts: int = field(
        default=1000,
        metadata={
            "doc": "retries of a failing batch before it goes to the failure queue (-1: "
            "until the records expire)"
        },
    )
    lambda_parallelization: int = field(
        default=1, metadata={"doc": "concurrent batches per shard (1 to 10)"}
    )
    lambda_memory_mb: int = field(default=512, metadata={"doc": "memory of each Lambda sink"})
    lambda_timeout_s: int = field(default=60, metadata={"doc": "timeout of each Lambda sink"})
    starting_position: str = field(
        default="TRIM_HORIZON",
        metadata={"doc": "where a new mapping starts reading: TRIM_HORIZON or LATEST"},
    )
    write_mode: str = field(
        default=_default("dynamodb_write_mode"),
        metadata={"doc": "batch or conditional (SPEEDLAYER_DYNAMODB_WRITE_MODE)"},
    )
    kafka_sink: bool = field(
        default=False, metadata={"doc": "also deploy the kinesis_to_kafka Lambda"}
    )
    kafka_bootstrap_servers: str = field(
        default="", metadata={"doc": "the brokers of kinesis_to_kafka (required with kafkaSink)"}
    )
    kafka_topic_prefix: str = field(
        default="", metadata={"doc": "prefix of the Kafka topics (SPEEDLAYER_KAFKA_TOPIC_PREFIX)"}
    )
    image: str = field(
        default="", metadata={"doc": "the container image URI; default: imageRepository:imageTag"}
    )
    image_repository: str = field(
        default="speedlayer", metadata={"doc": "an existing ECR repository in the account"}
    )
    image_tag: str = field(default=__version__, metadata={"doc": "the image tag in it"})
    polygon_secret_name: str = field(
        default="speedlayer/polygon-api-key",
        metadata={"doc": "the Secrets Manager secret holding the Polygon key (a plain string)"},
    )
    polygon_market: str = field(
        default=_default("polygon_market"), metadata={"doc": "SPEEDLAYER_POLYGON_MARKET"}
    )
    polygon_symbols: str = field(
        default="*", metadata={"doc": "SPEEDLAYER_POLYGON_SYMBOLS (comma-separated, or *)"}
    )
    api_keys_secret_name: str = field(
        default="",
        metadata={"doc": "a secret holding SPEEDLAYER_API_KEYS (comma-separated); none: open API"},
    )
    nat_gateways: int = field(
        default=0,
        metadata={"doc": "0: tasks in public subnets with public IPs; more: private subnets"},
    )
    api_cpu: int = field(default=512, metadata={"doc": "API task CPU units (1024 = 1 vCPU)"})
    api_memory_mib: int = field(default=1024, metadata={"doc": "API task memory"})
    api_min_tasks: int = field(default=2, metadata={"doc": "API tasks at least"})
    api_max_tasks: int = field(default=4, metadata={"doc": "API tasks at most"})
    api_cpu_target: int = field(default=60, metadata={"doc": "API scaling target: CPU percent"})
    api_requests_per_target: int = field(
        default=1000, metadata={"doc": "API scaling target: requests per task per minute"}
    )
    api_poll_interval_s: float = field(
        default=1.5,
        metadata={"doc": "the API tasks' Kinesis poll pause (SPEEDLAYER_KINESIS_POLL_INTERVAL_S)"},
    )
    ingest_cpu: int = field(default=256, metadata={"doc": "ingest task CPU units"})
    ingest_memory_mib: int = field(default=512, metadata={"doc": "ingest task memory"})
    certificate_arn: str = field(
        default="", metadata={"doc": "an ACM certificate: HTTPS on 443 (else HTTP on 80)"}
    )
    alarm_email: str = field(default="", metadata={"doc": "an address subscribed to the alarms"})
    feed_lag_alarm_s: int = field(
        default=180, metadata={"doc": "alarm when the freshest bar of a minute is older"}
    )
    iterator_age_alarm_s: int = field(
        default=300, metadata={"doc": "alarm when a stream's reader is this far behind"}
    )
    log_retention_days: int = field(default=30, metadata={"doc": "retention of every log group"})
    log_level: str = field(default=_default("log_level"), metadata={"doc": "SPEEDLAYER_LOG_LEVEL"})

    @classmethod
    def from_context(cls, get: Callable[[str], Any]) -> StackOptions:
        """The options from ``get(key)`` (``node.try_get_context``); None keeps the default.
        Values given with ``-c key=value`` are strings and are converted to the field's type."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = get(context_key(item.name))
            if raw is None:
                continue
            values[item.name] = _convert(item.name, str(item.type), raw)
        return cls(**values)


def context_key(name: str) -> str:
    """``api_min_tasks`` -> ``apiMinTasks``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


OPTIONS: tuple[tuple[str, Any, str], ...] = tuple(
    (context_key(f.name), f.default, f.metadata["doc"]) for f in dataclasses.fields(StackOptions)
)


def options_table() -> str:
    """The context options as the Markdown table of infra/README.md (a test keeps it equal)."""
    rows = ["| option | default | what it sets |", "|---|---|---|"]
    for key, default, doc in OPTIONS:
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        rows.append(f"| `{key}` | {f'`{shown}`' if shown else 'none'} | {doc} |")
    return "\n".join(rows) + "\n"


def _convert(name: str, kind: str, raw: Any) -> Any:
    key = context_key(name)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no", ""):
            return False
        raise ConfigError(f"context {key}={raw!r}: expected true or false")
    if kind in ("int", "float"):
        try:
            return int(raw) if kind == "int" else float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"context {key}={raw!r}: expected a number") from None
    return str(raw)


class ContextSettings(Settings):
    """The settings the stack deploys: from the context alone, so the SPEEDLAYER_* variables of
    the shell that synthesizes never leak into the deployment."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def stack_settings(
    options: StackOptions, account: str | None = None, region: str | None = None
) -> Settings:
    given: dict[str, Any] = {
        "intervals": options.intervals,
        "retention": options.retention,
        "dynamodb_table_prefix": options.table_prefix,
        "kinesis_stream_prefix": options.stream_prefix,
        "kinesis_checkpoint_table": options.checkpoint_table,
        "kinesis_shards": options.shards,
        "dynamodb_write_mode": options.write_mode,
        "kafka_topic_prefix": options.kafka_topic_prefix,
        "flink_parallelism": options.flink_parallelism,
        "polygon_market": options.polygon_market,
        "polygon_symbols": options.polygon_symbols,
        "log_level": options.log_level,
    }
    if account:
        given["aws_account_id"] = account
    if region:
        given["aws_region"] = region
    if options.kafka_bootstrap_servers:
        given["kafka_bootstrap_servers"] = options.kafka_bootstrap_servers
    return ContextSettings(**given)


@dataclass(frozen=True)
class Names:
    """What the services call things, from their own code."""

    tables: dict[str, str]  # interval -> candle table
    checkpoint_table: str
    raw_stream: str
    candle_streams: dict[str, str]  # interval -> stream

    @classmethod
    def of(cls, settings: Settings) -> Names:
        store = dynamodb_store(settings, SystemClock())  # builds names only; no client, no I/O
        bus = kinesis_bus(settings)
        return cls(
            tables=dict(store.tables),
            checkpoint_table=settings.kinesis_checkpoint_table,
            raw_stream=bus.stream_name(RAW_TOPIC),
            candle_streams={name: bus.stream_name(candle_topic(name)) for name in bus.intervals},
        )


def handler_name(module: Any) -> str:
    """The handler string of a handler module: ``processors.kinesis_to_dynamodb.handler``."""
    return f"{module.__name__}.{module.handler.__name__}"


def service_environment(settings: Settings) -> dict[str, str]:
    """The SPEEDLAYER_* variables every service and Lambda of the deployment shares (the region
    is added per construct: it is a token)."""
    env = {
        "SPEEDLAYER_INTERVALS": ",".join(settings.interval_set.names),
        "SPEEDLAYER_AWS_CREATE_RESOURCES": "false",
        "SPEEDLAYER_LOG_LEVEL": settings.log_level,
    }
    if settings.retention:
        env["SPEEDLAYER_RETENTION"] = ",".join(f"{k}={v}" for k, v in settings.retention.items())
    if settings.dynamodb_table_prefix:
        env["SPEEDLAYER_DYNAMODB_TABLE_PREFIX"] = settings.dynamodb_table_prefix
    if settings.kinesis_stream_prefix:
        env["SPEEDLAYER_KINESIS_STREAM_PREFIX"] = settings.kinesis_stream_prefix
    return env


# -- the Flink application zip ----------------------------------------------------------------


@dataclass(frozen=True)
class FlinkPackage:
    path: Path
    spec: dict[str, Any]  # job.json
    property_groups: list[dict[str, Any]]  # application-properties.json

    @classmethod
    def read(cls, path: Path) -> FlinkPackage:
        try:
            with zipfile.ZipFile(path) as archive:
                spec = json.loads(archive.read(DEFAULT_SPEC))
                groups = json.loads(archive.read(PROPERTIES_FILE))
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"{path}: not an application zip of `speedlayer flink package` ({exc})"
            ) from exc
        return cls(path, spec, groups)


def check_flink_package(
    package: FlinkPackage, settings: Settings, account: str | None, region: str | None
) -> list[str]:
    """Raise ConfigError unless the zip's job reads and writes this stack's streams (Kinesis
    job, same stream prefix and intervals; same account and region when the stack's are known).
    Returns warnings (what cannot be checked)."""
    spec, where = package.spec, package.path
    kinesis_spec = spec.get("kinesis")
    if not isinstance(kinesis_spec, dict):
        raise ConfigError(
            f"{where}: a Kafka job; build it with `speedlayer flink package --env kinesis`"
        )
    prefix = kinesis_spec.get("stream.prefix", "")
    if prefix != settings.kinesis_stream_prefix:
        raise ConfigError(
            f"{where}: built for stream prefix {prefix!r}, the stack's is "
            f"{settings.kinesis_stream_prefix!r} (SPEEDLAYER_KINESIS_STREAM_PREFIX)"
        )
    expected = [f"INSERT INTO candles_{name} " for name in settings.interval_set.names]
    inserts = spec.get("inserts", [])
    if len(inserts) != len(expected) or not all(
        insert.startswith(start) for insert, start in zip(inserts, expected, strict=False)
    ):
        raise ConfigError(
            f"{where}: its job writes other intervals than the stack's "
            f"({', '.join(settings.interval_set.names)}; SPEEDLAYER_INTERVALS)"
        )
    groups = {group.get("PropertyGroupId"): group for group in package.property_groups}
    run = groups.get(RUN_OPTIONS_GROUP, {}).get("PropertyMap", {})
    if not run.get("python") or not run.get("jarfile"):
        raise ConfigError(f"{where}: no {RUN_OPTIONS_GROUP} property group (python, jarfile)")
    warnings = []
    zip_account, zip_region = kinesis_spec.get("aws.account.id"), kinesis_spec.get("aws.region")
    for what, mine, theirs in (("account", account, zip_account), ("region", region, zip_region)):
        if mine and theirs != mine:
            raise ConfigError(
                f"{where}: its job names the streams of {what} {theirs}, the stack deploys to "
                f"{mine}: rebuild it with SPEEDLAYER_AWS_ACCOUNT_ID and SPEEDLAYER_AWS_REGION"
            )
    if zip_account == PLACEHOLDER_ACCOUNT:
        warnings.append(
            f"{where}: the Flink job names the streams of the placeholder account "
            f"{PLACEHOLDER_ACCOUNT}; synthesize with the target account (credentials, or "
            "-c account=... -c region=...) before deploying"
        )
    elif not account or not region:
        warnings.append(
            f"{where}: the Flink job names the streams of account {zip_account}, region "
            f"{zip_region}: deploy the stack there"
        )
    return warnings


def flink_package(
    options: StackOptions, settings: Settings, account: str | None, region: str | None
) -> tuple[FlinkPackage, list[str]]:
    """The zip from the context (checked), or one built now from the stack's settings."""
    if options.flink_package:
        path = Path(options.flink_package)
        path = path if path.is_absolute() else ROOT / path
    else:
        path = ROOT / "build" / "cdk-flink" / "speedlayer-flink-kinesis.zip"
        build_package(settings, path, "kinesis")
    package = FlinkPackage.read(path)
    return package, check_flink_package(package, settings, account, region)


# -- the stack ----------------------------------------------------------------------------------

_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}


def container_health_check(*args: str) -> ecs.HealthCheck:
    """ECS runs the image's health check only when the task definition names it: the one of the
    Dockerfile (``python -m launch.healthcheck``), with ``args``."""
    return ecs.HealthCheck(
        command=["CMD", "python", "-m", "launch.healthcheck", *args],
        interval=cdk.Duration.seconds(15),
        timeout=cdk.Duration.seconds(5),
        start_period=cdk.Duration.seconds(60),
        retries=3,
    )


class SpeedlayerStack(cdk.Stack):
    """Everything the Flink shape of the deployment needs; see the module docstring."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        options: StackOptions,
        *,
        env: cdk.Environment | None = None,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            env=env,
            description=f"speedlayer {__version__}: real-time OHLCV candles (infra/cdk)",
        )
        self.options = options
        account = None if cdk.Token.is_unresolved(self.account) else self.account
        region = None if cdk.Token.is_unresolved(self.region) else self.region
        self._validate(options)
        self.settings = stack_settings(options, account, region)
        self.names = Names.of(self.settings)
        self.metrics_namespace = f"Speedlayer/{self.stack_name}"
        keep = cdk.RemovalPolicy.RETAIN if options.retain_data else cdk.RemovalPolicy.DESTROY
        if options.log_retention_days not in _RETENTION:
            raise ConfigError(
                f"context logRetentionDays={options.log_retention_days}: one of "
                f"{', '.join(map(str, _RETENTION))}"
            )
        self.log_retention = _RETENTION[options.log_retention_days]

        self.tables = self._tables(keep)
        self.raw_stream, self.candle_streams = self._streams(keep)
        self.alarm_topic = sns.Topic(self, "Alarms", display_name="speedlayer alarms")
        if options.alarm_email:
            self.alarm_topic.add_subscription(
                sns_subscriptions.EmailSubscription(options.alarm_email)
            )
        self.vpc = self._vpc()
        self.flink_app = self._flink(account, region)
        self.failures, self.sinks = self._lambda_sinks()
        self.cluster = ecs.Cluster(self, "Cluster", vpc=self.vpc)
        self.image = self._image()
        self.ingest = self._ingest()
        self.api, self.api_targets, self.load_balancer = self._api()
        self.alarms = self._alarms()
        self.dashboard = self._dashboard()
        self._check_read_budget()

    # -- checks ---------------------------------------------------------------------------------

    @staticmethod
    def _validate(options: StackOptions) -> None:
        if options.stream_mode not in ("provisioned", "on-demand"):
            raise ConfigError(
                f"context streamMode={options.stream_mode!r}: provisioned or on-demand"
            )
        if options.starting_position not in ("TRIM_HORIZON", "LATEST"):
            raise ConfigError(
                f"context startingPosition={options.starting_position!r}: TRIM_HORIZON or LATEST"
            )
        if options.kafka_sink and not options.kafka_bootstrap_servers:
            raise ConfigError("context kafkaSink=true needs kafkaBootstrapServers")
        if not options.api_min_tasks <= options.api_max_tasks:
            raise ConfigError("context apiMinTasks must not exceed apiMaxTasks")

    def _check_read_budget(self) -> None:
        """Warn when the candle streams' readers may exceed Kinesis's 5 reads/s per shard."""
        readers = len(self.sinks) + self.options.api_max_tasks / self.options.api_poll_interval_s
        if readers > READS_PER_SHARD_S:
            cdk.Annotations.of(self).add_warning_v2(
                "speedlayer:kinesis-read-budget",
                f"the candle streams may see {readers:.1f} GetRecords calls/s per shard (limit "
                f"{READS_PER_SHARD_S:g}): raise apiPollIntervalS or lower apiMaxTasks",
            )

    # -- storage --------------------------------------------------------------------------------

    def _tables(self, keep: cdk.RemovalPolicy) -> dict[str, dynamodb.Table]:
        (pk, pk_type), (sk, sk_type) = CANDLE_KEYS
        tables = {}
        for interval, name in self.names.tables.items():
            tables[interval] = dynamodb.Table(
                self,
                f"Candles{interval}",
                table_name=name,
                partition_key=dynamodb.Attribute(name=pk, type=_attribute_type(pk_type)),
                sort_key=dynamodb.Attribute(name=sk, type=_attribute_type(sk_type)),
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                time_to_live_attribute=CANDLE_TTL_ATTRIBUTE,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=self.options.point_in_time_recovery
                ),
                removal_policy=keep,
            )
        (hk, hk_type), (rk, rk_type) = CHECKPOINT_KEYS
        # Used by `speedlayer process`, `sink` and `lambda-run` against this deployment; the
        # Flink shape itself (Managed Flink, event source mappings, broadcast readers) keeps
        # its positions elsewhere, so no role of the stack is granted access to it.
        self.checkpoint_table = dynamodb.Table(
            self,
            "Checkpoints",
            table_name=self.names.checkpoint_table,
            partition_key=dynamodb.Attribute(name=hk, type=_attribute_type(hk_type)),
            sort_key=dynamodb.Attribute(name=rk, type=_attribute_type(rk_type)),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            removal_policy=keep,
        )
        return tables

    def _streams(self, keep: cdk.RemovalPolicy) -> tuple[kinesis.Stream, dict[str, kinesis.Stream]]:
        on_demand = self.options.stream_mode == "on-demand"

        def stream(construct_id: str, name: str) -> kinesis.Stream:
            return kinesis.Stream(
                self,
                construct_id,
                stream_name=name,
                stream_mode=(
                    kinesis.StreamMode.ON_DEMAND if on_demand else kinesis.StreamMode.PROVISIONED
                ),
                shard_count=None if on_demand else self.options.shards,
                encryption=kinesis.StreamEncryption.MANAGED,
                retention_period=cdk.Duration.hours(self.options.stream_retention_hours),
                removal_policy=keep,
            )

        raw = stream("RawStream", self.names.raw_stream)
        candles = {
            interval: stream(f"CandleStream{interval}", name)
            for interval, name in self.names.candle_streams.items()
        }
        return raw, candles

    def _log_group(self, construct_id: str) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            construct_id,
            retention=self.log_retention,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )

    def _vpc(self) -> ec2.Vpc:
        subnets = [
            ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)
        ]
        # Private subnets: the tasks' with NAT gateways; without, only the Kafka sink's (it
        # reaches the brokers in the VPC, Lambda polls Kinesis for it).
        if self.options.nat_gateways > 0:
            private = ec2.SubnetType.PRIVATE_WITH_EGRESS
        else:
            private = ec2.SubnetType.PRIVATE_ISOLATED
        if self.options.nat_gateways > 0 or self.options.kafka_sink:
            subnets.append(
                ec2.SubnetConfiguration(name="private", subnet_type=private, cidr_mask=22)
            )
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=self.options.nat_gateways,
            subnet_configuration=subnets,
            restrict_default_security_group=False,  # no custom resource; nothing uses it
        )
        vpc.add_gateway_endpoint("DynamoDB", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB)
        return vpc

    # -- Managed Flink --------------------------------------------------------------------------

    def _flink(self, account: str | None, region: str | None) -> flink.CfnApplication:
        package, warnings = flink_package(self.options, self.settings, account, region)
        for warning in warnings:
            cdk.Annotations.of(self).add_warning_v2("speedlayer:flink-package", warning)
        code = s3_assets.Asset(self, "FlinkCode", path=str(package.path))
        role = iam.Role(
            self,
            "FlinkRole",
            assumed_by=iam.ServicePrincipal("kinesisanalytics.amazonaws.com"),
            description="the speedlayer Flink job: raw bars in, candles out",
        )
        self.raw_stream.grant_read(role)
        for stream in self.candle_streams.values():
            stream.grant_write(role)
        # The application reads its code, one object: GetObject and GetObjectVersion on its key
        # (an asset's grant_read would grant s3:GetObject*, s3:List* on the whole bucket).
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[code.bucket.arn_for_objects(code.s3_object_key)],
            )
        )
        log_group = self._log_group("FlinkLogs")
        log_stream = logs.LogStream(
            self, "FlinkLogStream", log_group=log_group, log_stream_name="application"
        )
        log_group.grant_write(role)
        log_group.grant(role, "logs:DescribeLogStreams")
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:DescribeLogGroups"],
                resources=[
                    self.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="*",
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        options, cfn = self.options, flink.CfnApplication
        configuration = cfn.ApplicationConfigurationProperty(
            application_code_configuration=cfn.ApplicationCodeConfigurationProperty(
                code_content=cfn.CodeContentProperty(
                    s3_content_location=cfn.S3ContentLocationProperty(
                        bucket_arn=code.bucket.bucket_arn, file_key=code.s3_object_key
                    )
                ),
                code_content_type="ZIPFILE",
            ),
            # The groups the zip says the job reads (application-properties.json).
            environment_properties=cfn.EnvironmentPropertiesProperty(
                property_groups=[
                    cfn.PropertyGroupProperty(
                        property_group_id=group["PropertyGroupId"],
                        property_map=group.get("PropertyMap") or {},
                    )
                    for group in package.property_groups
                ]
            ),
            # What the job leaves to the service: checkpoints, parallelism (docs/flink.md).
            flink_application_configuration=cfn.FlinkApplicationConfigurationProperty(
                checkpoint_configuration=cfn.CheckpointConfigurationProperty(
                    configuration_type="CUSTOM",
                    checkpointing_enabled=True,
                    checkpoint_interval=options.flink_checkpoint_interval_ms,
                    min_pause_between_checkpoints=options.flink_min_pause_ms,
                ),
                parallelism_configuration=cfn.ParallelismConfigurationProperty(
                    configuration_type="CUSTOM",
                    parallelism=options.flink_parallelism,
                    parallelism_per_kpu=options.flink_parallelism_per_kpu,
                    auto_scaling_enabled=options.flink_auto_scaling,
                ),
                monitoring_configuration=cfn.MonitoringConfigurationProperty(
                    configuration_type="CUSTOM", log_level="INFO", metrics_level="APPLICATION"
                ),
            ),
            application_snapshot_configuration=cfn.ApplicationSnapshotConfigurationProperty(
                snapshots_enabled=options.flink_snapshots
            ),
        )
        app = cfn(
            self,
            "FlinkApplication",
            runtime_environment=RUNTIME,
            service_execution_role=role.role_arn,
            application_mode="STREAMING",
            application_description="speedlayer candles: market-data-raw -> market-data-{interval}",
            application_configuration=configuration,
        )
        # The role's policy exists before the service checks the role's access.
        policy = role.node.find_child("DefaultPolicy")
        app.node.add_dependency(policy)
        stream_arn = self.format_arn(
            service="logs",
            resource="log-group",
            resource_name=f"{log_group.log_group_name}:log-stream:{log_stream.log_stream_name}",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        logging_option = flink.CfnApplicationCloudWatchLoggingOption
        logging = logging_option(
            self,
            "FlinkLogging",
            application_name=app.ref,
            cloud_watch_logging_option=logging_option.CloudWatchLoggingOptionProperty(
                log_stream_arn=stream_arn
            ),
        )
        logging.node.add_dependency(policy)
        cdk.CfnOutput(
            self,
            "FlinkApplicationName",
            value=app.ref,
            description="start it once: aws kinesisanalyticsv2 start-application "
            "--application-name <this>",
        )
        return app

    # -- Lambda sinks -------------------------------------------------------------------------

    def _lambda_sinks(self) -> tuple[sqs.Queue, dict[str, lambda_.Function]]:
        options = self.options
        path = Path(options.lambda_code)
        path = path if path.is_absolute() else ROOT / path
        if not path.exists():
            raise ConfigError(
                f"the Lambda package {path} does not exist: build it (make lambda-package) or "
                "name one with -c lambdaCode=PATH (a zip or a directory)"
            )
        code = lambda_.Code.from_asset(str(path))
        failures = sqs.Queue(
            self,
            "SinkFailures",
            retention_period=cdk.Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        retry_s = min(_default("lambda_retry_timeout_s"), options.lambda_timeout_s / 3)
        environment = {
            **service_environment(self.settings),
            "SPEEDLAYER_AWS_REGION": self.region,
            "SPEEDLAYER_LAMBDA_RETRY_TIMEOUT_S": f"{retry_s:g}",
        }
        sinks: dict[str, lambda_.Function] = {}

        def function(
            construct_id: str, module: Any, env: dict[str, str], **extra: Any
        ) -> lambda_.Function:
            fn = lambda_.Function(
                self,
                construct_id,
                runtime=lambda_.Runtime.PYTHON_3_11,
                architecture=lambda_.Architecture.X86_64,
                handler=handler_name(module),
                code=code,
                memory_size=options.lambda_memory_mb,
                timeout=cdk.Duration.seconds(options.lambda_timeout_s),
                environment=env,
                log_group=self._log_group(f"{construct_id}Logs"),
                description=f"speedlayer {module.__name__.rsplit('.', 1)[-1]}: candle streams",
                **extra,
            )
            for stream in self.candle_streams.values():
                fn.add_event_source(
                    event_sources.KinesisEventSource(
                        stream,
                        starting_position=lambda_.StartingPosition[options.starting_position],
                        batch_size=options.lambda_batch_size,
                        max_batching_window=cdk.Duration.seconds(options.lambda_batching_window_s),
                        bisect_batch_on_error=True,
                        report_batch_item_failures=True,
                        retry_attempts=(
                            None
                            if options.lambda_retry_attempts < 0
                            else options.lambda_retry_attempts
                        ),
                        parallelization_factor=options.lambda_parallelization,
                        on_failure=event_sources.SqsDlq(failures),
                    )
                )
            return fn

        writer = function(
            "KinesisToDynamoDB",
            kinesis_to_dynamodb,
            {**environment, "SPEEDLAYER_DYNAMODB_WRITE_MODE": self.settings.dynamodb_write_mode},
        )
        actions = ["dynamodb:BatchWriteItem", "dynamodb:BatchGetItem"]
        if self.settings.dynamodb_write_mode == "conditional":
            actions.append("dynamodb:PutItem")
        for table in self.tables.values():
            table.grant(writer, *actions)
        sinks["kinesis_to_dynamodb"] = writer
        if options.kafka_sink:
            security_group = ec2.SecurityGroup(
                self,
                "KafkaSinkSecurityGroup",
                vpc=self.vpc,
                description="kinesis_to_kafka: to the Kafka brokers",
            )
            kafka_env = {
                **environment,
                "SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap_servers,
            }
            if self.settings.kafka_topic_prefix:
                kafka_env["SPEEDLAYER_KAFKA_TOPIC_PREFIX"] = self.settings.kafka_topic_prefix
            sinks["kinesis_to_kafka"] = function(
                "KinesisToKafka",
                kinesis_to_kafka,
                kafka_env,
                vpc=self.vpc,
                vpc_subnets=ec2.SubnetSelection(subnet_group_name="private"),
                security_groups=[security_group],
            )
        cdk.CfnOutput(
            self,
            "SinkFailureQueue",
            value=failures.queue_url,
            description="batches the Lambda sinks gave up on (shard, sequence range)",
        )
        return failures, sinks

    # -- ECS services -------------------------------------------------------------------------

    def _image(self) -> ecs.ContainerImage:
        if self.options.image:
            return ecs.ContainerImage.from_registry(self.options.image)
        repository = ecr.Repository.from_repository_name(
            self, "Repository", self.options.image_repository
        )
        return ecs.ContainerImage.from_ecr_repository(repository, self.options.image_tag)

    def _task_subnets(self) -> ec2.SubnetSelection:
        if self.options.nat_gateways > 0:
            return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)

    def _container_environment(self, **extra: str) -> dict[str, str]:
        return {**service_environment(self.settings), "SPEEDLAYER_AWS_REGION": self.region, **extra}

    def _ingest(self) -> ecs.FargateService:
        options = self.options
        task = ecs.FargateTaskDefinition(
            self, "IngestTask", cpu=options.ingest_cpu, memory_limit_mib=options.ingest_memory_mib
        )
        secret = secretsmanager.Secret.from_secret_name_v2(
            self, "PolygonKey", options.polygon_secret_name
        )
        task.add_container(
            "ingest",
            image=self.image,
            entry_point=[COMMAND],
            command=["ingest", "--bus", "kinesis", "--source", "polygon"],
            environment=self._container_environment(
                SPEEDLAYER_POLYGON_MARKET=self.settings.polygon_market,
                SPEEDLAYER_POLYGON_SYMBOLS=",".join(self.settings.polygon_symbols),
                SPEEDLAYER_METRICS_NAMESPACE=self.metrics_namespace,
            ),
            secrets={"POLYGON_API_KEY": ecs.Secret.from_secrets_manager(secret)},
            # The image's health file (SPEEDLAYER_HEALTH_FILE), rewritten by ingest every 5 s.
            health_check=container_health_check(),
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="ingest", log_group=self._log_group("IngestLogs")
            ),
            linux_parameters=ecs.LinuxParameters(self, "IngestInit", init_process_enabled=True),
            stop_timeout=cdk.Duration.seconds(30),
        )
        self.raw_stream.grant_write(task.task_role)
        security_group = ec2.SecurityGroup(
            self, "IngestSecurityGroup", vpc=self.vpc, description="speedlayer ingest: no inbound"
        )
        # One connection per Polygon key: the old task stops before the new one starts.
        return ecs.FargateService(
            self,
            "Ingest",
            cluster=self.cluster,
            task_definition=task,
            desired_count=1,
            min_healthy_percent=0,
            max_healthy_percent=100,
            assign_public_ip=options.nat_gateways == 0,
            vpc_subnets=self._task_subnets(),
            security_groups=[security_group],
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
        )

    def _api(
        self,
    ) -> tuple[ecs.FargateService, elbv2.ApplicationTargetGroup, elbv2.ApplicationLoadBalancer]:
        options = self.options
        task = ecs.FargateTaskDefinition(
            self, "ApiTask", cpu=options.api_cpu, memory_limit_mib=options.api_memory_mib
        )
        secrets = {}
        if options.api_keys_secret_name:
            keys = secretsmanager.Secret.from_secret_name_v2(
                self, "ApiKeys", options.api_keys_secret_name
            )
            secrets["SPEEDLAYER_API_KEYS"] = ecs.Secret.from_secrets_manager(keys)
        task.add_container(
            "api",
            image=self.image,
            entry_point=[COMMAND],
            command=[
                "api",
                "--bus",
                "kinesis",
                "--store",
                "dynamodb",
                "--host",
                "0.0.0.0",
                "--port",
                str(API_PORT),
            ],
            environment=self._container_environment(
                SPEEDLAYER_KINESIS_POLL_INTERVAL_S=f"{options.api_poll_interval_s:g}"
            ),
            secrets=secrets,
            port_mappings=[ecs.PortMapping(container_port=API_PORT)],
            health_check=container_health_check("--url", f"http://127.0.0.1:{API_PORT}/readyz"),
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="api", log_group=self._log_group("ApiLogs")
            ),
            linux_parameters=ecs.LinuxParameters(self, "ApiInit", init_process_enabled=True),
            stop_timeout=cdk.Duration.seconds(30),
        )
        for table in self.tables.values():
            table.grant_read_data(task.task_role)
        for stream in self.candle_streams.values():
            stream.grant_read(task.task_role)
        service = ecs.FargateService(
            self,
            "Api",
            cluster=self.cluster,
            task_definition=task,
            desired_count=options.api_min_tasks,
            min_healthy_percent=100,
            max_healthy_percent=200,
            assign_public_ip=options.nat_gateways == 0,
            vpc_subnets=self._task_subnets(),
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            health_check_grace_period=cdk.Duration.seconds(60),
        )
        balancer = elbv2.ApplicationLoadBalancer(
            self, "LoadBalancer", vpc=self.vpc, internet_facing=True
        )
        if options.certificate_arn:
            listener = balancer.add_listener(
                "Https",
                port=443,
                certificates=[elbv2.ListenerCertificate.from_arn(options.certificate_arn)],
            )
            balancer.add_redirect(source_port=80, target_port=443)
        else:
            listener = balancer.add_listener("Http", port=80)
        # WebSocket and SSE go through the ALB as they are (HTTP/1.1 upgrade, streamed body).
        targets = listener.add_targets(
            "Api",
            port=API_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[service.load_balancer_target(container_name="api", container_port=API_PORT)],
            health_check=elbv2.HealthCheck(
                path="/readyz",
                healthy_http_codes="200",
                interval=cdk.Duration.seconds(15),
                timeout=cdk.Duration.seconds(5),
                healthy_threshold_count=2,
                unhealthy_threshold_count=3,
            ),
            deregistration_delay=cdk.Duration.seconds(30),
        )
        scaling = service.auto_scale_task_count(
            min_capacity=options.api_min_tasks, max_capacity=options.api_max_tasks
        )
        scaling.scale_on_cpu_utilization("Cpu", target_utilization_percent=options.api_cpu_target)
        scaling.scale_on_request_count(
            "Requests", requests_per_target=options.api_requests_per_target, target_group=targets
        )
        scheme = "https" if options.certificate_arn else "http"
        cdk.CfnOutput(self, "ApiUrl", value=f"{scheme}://{balancer.load_balancer_dns_name}")
        return service, targets, balancer

    # -- alarms and the dashboard -----------------------------------------------------------------

    def _alarm(self, construct_id: str, **props: Any) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(self, construct_id, **props)
        alarm.add_alarm_action(cw_actions.SnsAction(self.alarm_topic))
        return alarm

    @property
    def feed_lag_metric(self) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace=self.metrics_namespace,
            metric_name=emf.FEED_LAG,
            dimensions_map={emf.SERVICE_DIMENSION: emf.INGEST},
            statistic="Minimum",
            period=cdk.Duration.minutes(1),
        )

    def _streams_metric(
        self, label: str, metric: Callable[[kinesis.Stream], cloudwatch.Metric]
    ) -> cloudwatch.MathExpression:
        streams = [self.raw_stream, *self.candle_streams.values()]
        using = {f"s{i}": metric(stream) for i, stream in enumerate(streams)}
        return cloudwatch.MathExpression(
            expression=f"MAX([{', '.join(using)}])",
            using_metrics=using,
            label=label,
            period=cdk.Duration.minutes(1),
        )

    def _alarms(self) -> dict[str, cloudwatch.Alarm]:
        options = self.options
        alarms: dict[str, cloudwatch.Alarm] = {}
        alarms["feed_lag"] = self._alarm(
            "FeedLagAlarm",
            alarm_description=(
                f"the newest Polygon bar is older than {options.feed_lag_alarm_s} s for 3 "
                "minutes, or ingest reports nothing (outside the market's hours this is "
                "expected for stocks)"
            ),
            metric=self.feed_lag_metric,
            threshold=options.feed_lag_alarm_s,
            evaluation_periods=3,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        alarms["iterator_age"] = self._alarm(
            "StreamIteratorAgeAlarm",
            alarm_description="a reader of a stream (the Flink job, a Lambda sink's mapping, "
            f"the API) is more than {options.iterator_age_alarm_s} s behind",
            metric=self._streams_metric(
                "max GetRecords.IteratorAgeMilliseconds",
                lambda s: s.metric_get_records_iterator_age_milliseconds(statistic="Maximum"),
            ),
            threshold=options.iterator_age_alarm_s * 1000,
            evaluation_periods=5,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        for name, fn in self.sinks.items():
            key = "".join(part.title() for part in name.split("_"))
            alarms[f"{name}_iterator_age"] = self._alarm(
                f"{key}IteratorAgeAlarm",
                alarm_description=f"{name}: its mappings are more than "
                f"{options.iterator_age_alarm_s} s behind the candle streams",
                metric=fn.metric(
                    "IteratorAge", statistic="Maximum", period=cdk.Duration.minutes(1)
                ),
                threshold=options.iterator_age_alarm_s * 1000,
                evaluation_periods=5,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            alarms[f"{name}_errors"] = self._alarm(
                f"{key}ErrorsAlarm",
                alarm_description=f"{name}: invocations failed (function errors; reported "
                "records are retried without one)",
                metric=fn.metric_errors(period=cdk.Duration.minutes(5), statistic="Sum"),
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        for kind in ("Write", "Read"):
            using = {
                f"t{i}": cloudwatch.Metric(
                    namespace="AWS/DynamoDB",
                    metric_name=f"{kind}ThrottleEvents",
                    dimensions_map={"TableName": table.table_name},
                    statistic="Sum",
                    period=cdk.Duration.minutes(5),
                )
                for i, table in enumerate(self.tables.values())
            }
            alarms[f"dynamodb_{kind.lower()}_throttles"] = self._alarm(
                f"DynamoDB{kind}ThrottlesAlarm",
                alarm_description=f"DynamoDB throttled {kind.lower()}s on the candle tables",
                metric=cloudwatch.MathExpression(
                    expression=" + ".join(f"FILL({k}, 0)" for k in using),
                    using_metrics=using,
                    label=f"{kind}ThrottleEvents, all candle tables",
                    period=cdk.Duration.minutes(5),
                ),
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        alarms["flink_downtime"] = self._alarm(
            "FlinkDowntimeAlarm",
            alarm_description="the Flink job is not running (restarting or failed)",
            metric=self.flink_metric("downtime", "Maximum"),
            threshold=0,
            evaluation_periods=5,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarms["sink_failures"] = self._alarm(
            "SinkFailuresAlarm",
            alarm_description="a Lambda sink gave up on a batch: its shard and sequence range "
            "are in the failure queue",
            metric=self.failures.metric_approximate_number_of_messages_visible(
                period=cdk.Duration.minutes(5), statistic="Maximum"
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarms["api_healthy"] = self._alarm(
            "ApiHealthyAlarm",
            alarm_description="no API task passes the load balancer's /readyz check",
            metric=self.api_targets.metrics.healthy_host_count(
                period=cdk.Duration.minutes(1), statistic="Minimum"
            ),
            threshold=1,
            evaluation_periods=3,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        return alarms

    def flink_metric(self, name: str, statistic: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace="AWS/KinesisAnalytics",
            metric_name=name,
            dimensions_map={"Application": self.flink_app.ref},
            statistic=statistic,
            period=cdk.Duration.minutes(1),
        )

    def _dashboard(self) -> cloudwatch.Dashboard:
        minute = cdk.Duration.minutes(1)
        streams = {"raw": self.raw_stream, **self.candle_streams}

        def graph(
            title: str, metrics: list[cloudwatch.IMetric], **extra: Any
        ) -> cloudwatch.GraphWidget:
            return cloudwatch.GraphWidget(title=title, left=metrics, width=8, height=6, **extra)

        widgets: list[cloudwatch.IWidget] = [
            graph("Feed lag (s, freshest per minute)", [self.feed_lag_metric]),
            graph(
                "Bars published / rejected per minute",
                [
                    cloudwatch.Metric(
                        namespace=self.metrics_namespace,
                        metric_name=name,
                        dimensions_map={emf.SERVICE_DIMENSION: emf.INGEST},
                        statistic="Sum",
                        period=minute,
                    )
                    for name in (emf.BARS_PUBLISHED, emf.BARS_REJECTED)
                ],
            ),
            graph(
                "Records into the streams per minute",
                [
                    s.metric_incoming_records(period=minute, statistic="Sum", label=k)
                    for k, s in streams.items()
                ],
            ),
            graph(
                "Stream readers' iterator age (ms)",
                [
                    s.metric_get_records_iterator_age_milliseconds(
                        period=minute, statistic="Maximum", label=k
                    )
                    for k, s in streams.items()
                ],
            ),
            graph(
                "Flink job",
                [
                    self.flink_metric("downtime", "Maximum"),
                    self.flink_metric("numberOfFailedCheckpoints", "Sum"),
                    self.flink_metric("lastCheckpointDuration", "Maximum"),
                ],
            ),
            graph(
                "Flink resources",
                [
                    self.flink_metric("cpuUtilization", "Average"),
                    self.flink_metric("heapMemoryUtilization", "Average"),
                    self.flink_metric("KPUs", "Maximum"),
                ],
            ),
        ]
        for name, fn in self.sinks.items():
            widgets.append(
                graph(
                    f"Lambda {name}",
                    [
                        fn.metric_invocations(period=minute),
                        fn.metric_errors(period=minute),
                        fn.metric_throttles(period=minute),
                    ],
                    right=[fn.metric("IteratorAge", statistic="Maximum", period=minute)],
                )
            )
        widgets += [
            graph(
                "DynamoDB write units per minute",
                [
                    t.metric_consumed_write_capacity_units(period=minute, statistic="Sum", label=k)
                    for k, t in self.tables.items()
                ],
            ),
            graph(
                "API requests and target latency",
                [self.load_balancer.metrics.request_count(period=minute)],
                right=[self.load_balancer.metrics.target_response_time(period=minute)],
            ),
            graph(
                "API: healthy tasks, CPU",
                [self.api_targets.metrics.healthy_host_count(period=minute, statistic="Minimum")],
                right=[self.api.metric_cpu_utilization(period=minute)],
            ),
        ]
        dashboard = cloudwatch.Dashboard(self, "Dashboard")
        dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(
                title="Alarms", alarms=list(self.alarms.values()), width=24, height=3
            )
        )
        for start in range(0, len(widgets), 3):
            dashboard.add_widgets(*widgets[start : start + 3])
        cdk.CfnOutput(self, "DashboardName", value=dashboard.dashboard_name)
        return dashboard


def _attribute_type(kind: str) -> dynamodb.AttributeType:
    return {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER}[kind]


def build(app: cdk.App, environ: Mapping[str, str]) -> SpeedlayerStack:
    """The stack of the app's context; ``environ``: where CDK_DEFAULT_ACCOUNT/REGION come from
    (the CLI sets them from the credentials it has; without any the stack is env-agnostic)."""
    options = StackOptions.from_context(app.node.try_get_context)
    account = app.node.try_get_context("account") or environ.get("CDK_DEFAULT_ACCOUNT")
    region = app.node.try_get_context("region") or environ.get("CDK_DEFAULT_REGION")
    env = cdk.Environment(account=account, region=region) if account and region else None
    return SpeedlayerStack(app, options.stack_name, options, env=env)
