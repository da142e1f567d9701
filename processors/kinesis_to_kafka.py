"""Lambda: candle records from a Kinesis stream forwarded to Kafka (``market-data-{interval}``).

Each candle goes to the topic of its interval with key = symbol (one symbol's candles stay in one
partition, in shard order), through the Kafka bus's idempotent producer (``acks=all``). Records
that fail are retried (per key, from the first failed record on, so order holds) until the
retry budget is spent; then every record from the first one still failing is reported with the
partial batch response, and Lambda resumes the shard there. ``ttl`` is set from event time, as
in :mod:`processors.kinesis_to_dynamodb`; malformed records are counted and skipped.

Delivery is at least once: a retried batch can forward a candle again; consumers de-duplicate
with ``(symbol, interval, timestamp, revision)``.

Entry point: ``processors.kinesis_to_kafka.handler`` (configuration from the function's
environment: ``SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS``, ``SPEEDLAYER_KAFKA_TOPIC_PREFIX``,
``SPEEDLAYER_INTERVALS``, ``SPEEDLAYER_RETENTION``, ``SPEEDLAYER_AWS_CREATE_RESOURCES`` for the
topics). :class:`KafkaForwarder` is the async core; ``async_handler`` the same entry point on the
caller's event loop, and ``aclose`` the close of its producer (the local runner uses both).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from processors.kinesis_events import (
    BatchHandler,
    LambdaHost,
    attach_async_entry,
    decode_candles,
    remaining_s,
)
from speedlayer.backends import kafka_bus
from speedlayer.bus.base import candle_topic
from speedlayer.bus.kafka import KafkaBus, Record
from speedlayer.bus.wire import encode_item
from speedlayer.config import Settings
from speedlayer.errors import BusError
from speedlayer.intervals import IntervalSet

log = logging.getLogger(__name__)


class KafkaForwarder(BatchHandler):
    """The async core: one Kinesis event in, the partial batch response out."""

    name = "kinesis_to_kafka"

    def __init__(
        self, bus: KafkaBus, intervals: IntervalSet, *, retry_timeout_s: float | None = None
    ) -> None:
        super().__init__()
        self.bus = bus
        self.intervals = intervals
        self.retry_timeout_s = retry_timeout_s
        self.candles_sent = 0

    async def handle(
        self, event: Mapping[str, Any], time_left_s: float | None = None
    ) -> dict[str, Any]:
        """Forward one event; retries stop at ``retry_timeout_s`` or ``time_left_s``."""
        began = time.perf_counter()
        self.invocations += 1
        batch = decode_candles(event, self.intervals)
        first_failed: int | None = None
        if batch.items:
            topics = sorted({candle_topic(c.interval) for _, c in batch.items})
            records: list[Record] = [
                (self.bus.topic_name(candle_topic(c.interval)), c.symbol.encode(), encode_item(c))
                for _, c in batch.items
            ]
            try:
                if self.bus.create_topics:
                    await self.bus.ensure_topics(topics)
                budget = [t for t in (self.retry_timeout_s, time_left_s) if t is not None]
                errors = await self.bus.deliver(records, min(budget) if budget else None)
            except BusError as exc:
                log.warning("Kafka unavailable: %s", exc)
                errors = [exc] * len(records)
            for (index, _), error in zip(batch.items, errors, strict=True):
                if error is not None:
                    first_failed = index
                    log.warning("Kafka delivery failed at record %s: %r",
                                batch.records[index].sequence, error)  # fmt: skip
                    break
            self.candles_sent += sum(1 for e in errors if e is None)
        return self.respond(batch, first_failed, began)


async def _build() -> KafkaForwarder:
    settings = Settings()
    bus = kafka_bus(settings, retry_timeout_s=settings.lambda_retry_timeout_s)
    await bus.start()
    return KafkaForwarder(bus, settings.interval_set)


async def _stop(forwarder: KafkaForwarder) -> None:
    await forwarder.bus.stop()


_HOST: LambdaHost[KafkaForwarder] = LambdaHost(_build, _stop)


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """The AWS Lambda entry point."""
    return _HOST.run(lambda forwarder: forwarder.handle(event, remaining_s(context)))


async def async_handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """``handler`` on the caller's event loop (the local runner: shards and streams at once)."""
    return await _HOST.invoke(lambda forwarder: forwarder.handle(event, remaining_s(context)))


async def aclose() -> None:
    """Close the environment's producer (the local runner, at its end)."""
    await _HOST.aclose()


def reset() -> None:
    """Drop the environment's producer and loop (tests; a new configuration is read next time)."""
    _HOST.close()


attach_async_entry(handler, async_handler, aclose)
