"""Settings, validated once at start: flags > ``SPEEDLAYER_*`` environment variables > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from speedlayer.exchange_time import (
    DEFAULT_ANCHOR,
    DEFAULT_CALENDAR,
    DEFAULT_ZONE,
    ExchangeTime,
    parse_anchor,
)
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet, parse_duration_s

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SPEEDLAYER_", extra="ignore", populate_by_name=True
    )

    db: Path = Field(Path("data/speedlayer.db"), description="SQLite database file")
    intervals: Annotated[list[str], NoDecode] = Field(
        list(DEFAULT_INTERVALS),
        description="candle intervals, e.g. 1m,5m,15m,1h,1d (1m is implied)",
    )
    retention: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="retention overrides, e.g. '1m=3d,4h=365d' or '*=10y' for every interval",
    )
    candle_alignment: Literal["utc", "exchange"] = Field(
        "utc",
        description="utc: buckets are multiples of the interval since the epoch; exchange: "
        "intervals of 1h or more on the exchange's clock anchored at the session open, and 1d "
        "the exchange's regular session (stocks, options, indices; crypto and forex stay UTC)",
    )
    exchange_timezone: str = Field(
        DEFAULT_ZONE, description="the exchange's time zone (exchange alignment)"
    )
    exchange_calendar: str = Field(
        DEFAULT_CALENDAR,
        description="the exchange_calendars calendar of the session 1d interval, e.g. XNYS",
    )
    session_anchor: str = Field(
        DEFAULT_ANCHOR, description="local time the exchange-aligned hour buckets start from"
    )
    grace_ms: int = Field(10_000, ge=0, description="a candle is final this long after its end")
    lateness_ms: int = Field(
        15 * 60_000, ge=0, description="keep final buckets in memory this long for late bars"
    )
    host: str = Field("127.0.0.1", description="address the API listens on (0.0.0.0: every one)")
    port: int = Field(8000, ge=0, le=65535, description="port the API listens on")
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="bars per replay batch")
    max_page: int = Field(10_000, ge=1, description="largest page of candles one request returns")
    page_cache_mb: float = Field(
        32.0,
        ge=0,
        description="memory for recently served pages of GET /candles/{symbol}, served again "
        "until any write to the store (0: none)",
    )
    purge_interval_s: float = Field(
        3600.0, gt=0, description="how often expired candles are purged"
    )
    memory_trim_s: float = Field(
        60.0,
        ge=0,
        description="how often the API gives freed heap pages back to the OS after bursts of "
        "live clients (glibc malloc_trim; 0: never)",
    )
    log_level: str = Field("info", description="debug, info, warning, error or critical (any case)")
    stats_interval_s: float = Field(
        5.0, gt=0, description="how often throughput and lag are logged"
    )
    metrics_namespace: str = Field(
        "",
        pattern=r"^[A-Za-z0-9 ._#:/-]{0,255}$",
        description="`speedlayer ingest`: if set, also write feed lag and bar counts every stats "
        "interval as CloudWatch embedded metric format lines on stdout, in this namespace "
        "(launch/emf.py; the AWS stack sets it)",
    )
    health_file: Path | None = Field(
        None,
        description="a file that `ingest`, `process` and `sink` rewrite every 5 s with the "
        "problems their parts report (JSON), for a container's health check "
        "(`python -m launch.healthcheck`; the image sets /tmp/speedlayer-health.json)",
    )
    lambda_retry_timeout_s: float = Field(
        20.0, gt=0, description="how long one Lambda invocation retries a write (below its timeout)"
    )
    write_retry_deadline_s: float = Field(
        300.0,
        gt=0,
        description="how long a store write or bus publish that keeps failing is retried (the "
        "service is unready meanwhile) before the service stops with an error, uncommitted",
    )

    # API security and live-feed limits.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="if set, every route but /healthz and /readyz needs one of these keys "
        "(header X-API-Key, or ?api_key= for browsers' WebSocket/EventSource)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS, e.g. https://dash.example"
    )
    live_max_connections: int = Field(1000, ge=1, description="WebSocket + SSE connections")
    live_max_subscriptions: int = Field(200, ge=1, description="symbol x interval pairs per client")
    live_max_message_bytes: int = Field(65_536, ge=256, description="largest client message")
    live_queue_messages: int = Field(1000, ge=1, description="per-client queue; full = dropped")
    live_max_wildcards: int = Field(10, ge=0, description="all-symbol subscriptions per process")
    live_max_snapshot: int = Field(1000, ge=0, description="largest snapshot per pair")
    sse_replay_events: int = Field(100_000, ge=0, description="events kept for Last-Event-ID")
    sse_heartbeat_s: float = Field(15.0, gt=0, description="SSE comment line when idle")
    sse_send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="an SSE stream whose writes stay blocked this long (the client reads "
        "nothing) is closed, without an error event: none can be written any more",
    )

    # Live feed: the simulator (default) or Polygon when a key is configured.
    source: Literal["auto", "simulator", "polygon"] = Field(
        "auto", description="auto = polygon when POLYGON_API_KEY is set, else the simulator"
    )
    polygon_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("POLYGON_API_KEY", "SPEEDLAYER_POLYGON_API_KEY"),
        description="Polygon (Massive) API key: live bars and the start-up backfill",
    )
    polygon_ws_url: str = Field(
        "wss://socket.massive.com", description="Polygon WebSocket base URL (the market is added)"
    )
    polygon_rest_url: str = Field(
        "https://api.massive.com", description="Polygon REST base URL (the start-up backfill)"
    )
    polygon_market: Literal["stocks", "crypto", "forex", "options", "indices"] = Field(
        "stocks", description="Polygon market whose minute aggregates are subscribed"
    )
    polygon_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="tickers to subscribe, or * for all"
    )
    backfill_lookback_min: int = Field(60, ge=0, description="history fetched at start-up")
    sim_symbols: int = Field(100, ge=1, le=20_000, description="simulated symbols")
    sim_speed: float = Field(0.0, ge=0, description="simulated minutes per second; 0 = real time")
    sim_history_min: int = Field(
        120, ge=0, le=100_000, description="simulated minutes before start, served by REST"
    )
    sim_replay: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="files the simulator replays instead of synthetic data"
    )
    sim_port: int = Field(0, ge=0, le=65535, description="simulator port (0: any free port)")

    # Distributed backends (AWS or the local emulators; see `make aws-local`).
    store: Literal["sqlite", "dynamodb", "memory"] = Field(
        "sqlite", description="candle store backend (memory: nothing kept after exit)"
    )
    bus: Literal["memory", "kinesis", "kafka", "relay"] = Field(
        "memory",
        description="bus backend (relay: the API processes of `speedlayer up --workers N`, which "
        "read the pipeline's in-process bus over relay_socket)",
    )
    relay_socket: Path | None = Field(
        None,
        description="the Unix socket on which `speedlayer up --workers N` serves its bus to its "
        "API processes (default: the SQLite file's path + '.relay')",
    )
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka brokers for the Kafka bus, host:port[,host:port...]"
    )
    kafka_topic_prefix: str = Field("", description="prefix of the Kafka topic names")
    aws_endpoint_url: str | None = Field(
        None, description="AWS endpoint override, e.g. http://127.0.0.1:4567 for dynalite"
    )
    aws_region: str = Field("us-east-1", description="AWS region of every AWS client")
    aws_account_id: str = Field(
        "000000000000", description="account of the Kinesis stream ARNs the Flink job names"
    )
    dynamodb_endpoint_url: str | None = Field(
        None, description="DynamoDB endpoint (default: aws_endpoint_url, else AWS itself)"
    )
    kinesis_endpoint_url: str | None = Field(
        None, description="Kinesis endpoint (default: aws_endpoint_url, else AWS itself)"
    )
    aws_create_resources: bool = Field(
        True,
        description="create missing tables, streams and topics at start (off: infrastructure "
        "code owns them, as on AWS)",
    )
    dynamodb_table_prefix: str = Field("", description="prefix of the candle table names")
    # The Flink SQL job (flink_sql/, docs/flink.md).
    flink_python: str = Field(
        "", description="Python of the Flink virtualenv (default: the repository's .flink-venv)"
    )
    flink_lib_dir: str = Field(
        "", description="connector jars for the Flink job (default: the repository's .flink/lib)"
    )
    flink_state_ttl: str = Field(
        "2 h",
        description="Flink state kept per minute and bucket after its last change: a minute "
        "resent later than this is not recognised as a resend",
    )
    flink_parallelism: int = Field(1, ge=1, description="parallelism of the Flink job")
    flink_heap: str = Field(
        "768m",
        pattern=r"^[1-9][0-9]*[kKmMgG]$",
        description="heap of the local mini-cluster's JVM (`speedlayer flink run`), as for -Xmx: "
        "the job's state lives in it (docs/flink.md#state)",
    )
    flink_idle_timeout: str = Field(
        "60 s",
        description="how long a Kafka partition or Kinesis shard without bars holds the Flink "
        "job's watermark back (Flink duration)",
    )
    flink_checkpoint_interval: str = Field(
        "10 s", description="how often the Flink job checkpoints (Flink duration, e.g. 30 s)"
    )
    flink_checkpoint_dir: str = Field(
        "data/flink-checkpoints",
        description="checkpoints of `speedlayer flink run`; a new run resumes from the newest",
    )
    dynamodb_write_mode: Literal["batch", "conditional"] = Field(
        "batch",
        description="batch: BatchWriteItem, one writer per table; conditional: one conditional "
        "PutItem per candle, for writers that may race",
    )
    kinesis_stream_prefix: str = Field("", description="prefix of the Kinesis stream names")
    kinesis_shards: int = Field(1, ge=1, description="shards of the streams created")
    kinesis_checkpoint_table: str = Field(
        "speedlayer_checkpoints", description="DynamoDB table of Kinesis consumer checkpoints"
    )
    kinesis_poll_interval_s: float = Field(
        0.2, gt=0, description="GetRecords pause on an idle shard (AWS: 5 reads/s per shard)"
    )
    process_consumer: str = Field(
        "speedlayer-processor", description="durable consumer name of `speedlayer process`"
    )
    sink_consumer: str = Field(
        "speedlayer-sink", description="durable consumer name of `speedlayer sink`"
    )

    _interval_set: IntervalSet = PrivateAttr()

    @field_validator(
        "intervals", "polygon_symbols", "sim_replay", "api_keys", "cors_origins", mode="before"
    )
    @classmethod
    def _parse_lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level {value!r}: expected one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("retention", mode="before")
    @classmethod
    def _parse_retention(cls, value: Any) -> Any:
        if isinstance(value, str | list | tuple):
            pairs = _split(value) if isinstance(value, str) else list(value)
            parsed = {}
            for pair in pairs:
                key, sep, duration = str(pair).partition("=")
                if not sep:
                    raise ValueError(f"retention {pair!r}: expected INTERVAL=DURATION, e.g. 1m=7d")
                parsed[key.strip()] = duration.strip()
            return parsed
        return value

    @model_validator(mode="after")
    def _build_intervals(self) -> Settings:
        for duration in self.retention.values():
            parse_duration_s(duration)
        exchange = None
        if self.candle_alignment == "exchange":
            if self.polygon_market in ("crypto", "forex"):
                raise ValueError(
                    f"candle alignment 'exchange' is for exchange-traded markets; "
                    f"{self.polygon_market} trades around the clock and stays on UTC"
                )
            exchange = ExchangeTime(
                self.exchange_timezone, parse_anchor(self.session_anchor), self.exchange_calendar
            )
        self._interval_set = IntervalSet(self.intervals, dict(self.retention), exchange)
        return self

    @property
    def interval_set(self) -> IntervalSet:
        return self._interval_set

    @property
    def relay_path(self) -> Path:
        return self.relay_socket or Path(f"{self.db}.relay")

    @property
    def live_source(self) -> Literal["simulator", "polygon"]:
        if self.source == "auto":
            key = self.polygon_api_key.get_secret_value() if self.polygon_api_key else ""
            return "polygon" if key.strip() else "simulator"
        return self.source
