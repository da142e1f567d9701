"""The store and the bus that the settings select, opened and closed as async context managers.

``open_store(settings, clock)`` gives ``SQLiteStore`` (``store=sqlite``, the default),
``DynamoDBStore`` (``dynamodb``) or ``MemoryStore`` (``memory``); ``open_bus(settings)`` gives
``MemoryBus`` (``bus=memory``), ``KinesisBus`` (``kinesis``), ``KafkaBus`` (``kafka``) or
``RelayBus`` (``relay``: another process's in-process bus, speedlayer/bus/relay.py). Backend
modules are imported only when selected. ``init_aws(settings)`` creates everything the AWS path
needs, idempotently: the candle tables with TTL, the checkpoint table and the streams.

Endpoints: ``dynamodb_endpoint_url`` / ``kinesis_endpoint_url``, else ``aws_endpoint_url``, else
AWS itself (the SDK's own resolution, including ``AWS_ENDPOINT_URL_DYNAMODB`` and friends);
region ``aws_region``; credentials from the usual AWS chain (dummy ones against an emulator).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from speedlayer.bus.base import Bus, InitialPosition
from speedlayer.clock import Clock
from speedlayer.config import Settings
from speedlayer.errors import ConfigError
from speedlayer.store.base import Store

if TYPE_CHECKING:
    from speedlayer.bus.kafka import KafkaBus
    from speedlayer.bus.kinesis import KinesisBus
    from speedlayer.store.dynamodb import DynamoDBStore


def dynamodb_endpoint(settings: Settings) -> str | None:
    return settings.dynamodb_endpoint_url or settings.aws_endpoint_url


def kinesis_endpoint(settings: Settings) -> str | None:
    return settings.kinesis_endpoint_url or settings.aws_endpoint_url


def dynamodb_store(
    settings: Settings, clock: Clock, *, retry_timeout_s: float = 60.0
) -> DynamoDBStore:
    """The DynamoDB store of the settings; ``retry_timeout_s`` bounds its retries (the Lambda
    handlers keep it below the function's timeout)."""
    from speedlayer.store.dynamodb import DynamoDBStore

    return DynamoDBStore(
        settings.interval_set,
        clock,
        endpoint_url=dynamodb_endpoint(settings),
        region=settings.aws_region,
        table_prefix=settings.dynamodb_table_prefix,
        create_tables=settings.aws_create_resources,
        write_mode=settings.dynamodb_write_mode,
        retry_timeout_s=retry_timeout_s,
    )


def kafka_bus(
    settings: Settings,
    initial_position: InitialPosition = "LATEST",
    *,
    retry_timeout_s: float = 60.0,
) -> KafkaBus:
    """The Kafka bus of the settings; ``retry_timeout_s`` also bounds each request."""
    try:
        from speedlayer.bus.kafka import KafkaBus
    except ImportError as exc:  # the Kafka backend or aiokafka is not installed
        raise ConfigError(f"the Kafka bus is not available: {exc}") from exc
    return KafkaBus(
        settings.kafka_bootstrap_servers,
        topic_prefix=settings.kafka_topic_prefix,
        intervals=settings.interval_set.names,
        initial_position=initial_position,
        create_topics=settings.aws_create_resources,
        retry_timeout_s=retry_timeout_s,
        request_timeout_ms=int(min(30.0, retry_timeout_s) * 1000),
    )


def kinesis_bus(settings: Settings, initial_position: InitialPosition = "LATEST") -> KinesisBus:
    from speedlayer.bus.kinesis import KinesisBus

    return KinesisBus(
        endpoint_url=kinesis_endpoint(settings),
        dynamodb_endpoint_url=dynamodb_endpoint(settings),
        region=settings.aws_region,
        stream_prefix=settings.kinesis_stream_prefix,
        shard_count=settings.kinesis_shards,
        intervals=[interval.name for interval in settings.interval_set],
        checkpoint_table=settings.kinesis_checkpoint_table,
        poll_interval_s=settings.kinesis_poll_interval_s,
        initial_position=initial_position,
        create_checkpoint_table=settings.aws_create_resources,
    )


def make_store(settings: Settings, clock: Clock) -> Store:
    """The configured store, not started (no I/O)."""
    if settings.store == "sqlite":
        from speedlayer.store.sqlite import SQLiteStore

        return SQLiteStore(settings.db, settings.interval_set, clock)
    if settings.store == "memory":
        from speedlayer.store.memory import MemoryStore

        return MemoryStore(settings.interval_set, clock)
    if settings.store == "dynamodb":
        return dynamodb_store(settings, clock)
    raise ConfigError(f"unknown store {settings.store!r}")


def make_bus(settings: Settings, *, initial_position: InitialPosition = "LATEST") -> Bus:
    """The configured bus, not started (no I/O). ``initial_position`` is where a consumer with
    no stored position starts on buses that keep positions (Kinesis, Kafka)."""
    if settings.bus == "memory":
        from speedlayer.bus.memory import MemoryBus

        return MemoryBus()
    if settings.bus == "kinesis":
        return kinesis_bus(settings, initial_position)
    if settings.bus == "kafka":
        return kafka_bus(settings, initial_position)
    if settings.bus == "relay":
        from speedlayer.bus.relay import RelayBus

        try:
            return RelayBus(settings.relay_path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    raise ConfigError(f"unknown bus {settings.bus!r}")


@contextlib.asynccontextmanager
async def open_store(settings: Settings, clock: Clock) -> AsyncIterator[Store]:
    async with make_store(settings, clock) as store:
        yield store


@contextlib.asynccontextmanager
async def open_bus(
    settings: Settings, *, initial_position: InitialPosition = "LATEST"
) -> AsyncIterator[Bus]:
    """The configured bus, started; Kinesis streams are created first unless
    ``aws_create_resources`` is off."""
    async with make_bus(settings, initial_position=initial_position) as bus:
        if settings.aws_create_resources:
            await bus.ensure()
        yield bus


@dataclass
class AwsResources:
    """What ``init_aws`` found or created."""

    tables: dict[str, str] = field(default_factory=dict)  # candle table -> TTL state
    checkpoint_table: str = ""
    streams: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"table {name}: ready, TTL on 'ttl' {state}" for name, state in self.tables.items()]
        out.append(f"table {self.checkpoint_table}: ready (Kinesis consumer checkpoints)")
        out += [f"stream {name}: ACTIVE" for name in self.streams]
        return out


async def init_aws(
    settings: Settings, clock: Clock, progress: Callable[[str, int, int], None] | None = None
) -> AwsResources:
    """Create the candle tables (on-demand, TTL on ``ttl``), the checkpoint table and the raw and
    candle streams if they are missing, and wait until all are ACTIVE (idempotent).

    ``progress(step, resources ready, resources in all)`` is called as each step begins and
    once all are ready."""
    from speedlayer.bus.base import RAW_TOPIC, candle_topic

    done = AwsResources()
    store = dynamodb_store(settings, clock)
    store.create_tables = False
    bus = kinesis_bus(settings)
    bus.create_checkpoint_table = True
    topics = [RAW_TOPIC, *(candle_topic(name) for name in bus.intervals)]
    total = len(store.tables) + 1 + len(topics)
    report = progress or (lambda step, ready, total: None)
    report(f"{len(store.tables)} candle tables", 0, total)
    async with store:
        done.tables = await store.ensure_tables()
    report("the checkpoint table", len(done.tables), total)
    async with bus:
        done.checkpoint_table = bus.checkpoint_table
        report(f"{len(topics)} Kinesis streams", len(done.tables) + 1, total)
        await bus.ensure_streams(topics)
        done.streams = [bus.stream_name(topic) for topic in topics]
    report("ready", total, total)
    return done
