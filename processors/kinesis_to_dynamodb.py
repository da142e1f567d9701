"""Lambda: candle records from a Kinesis stream (``market-data-{interval}``) into DynamoDB.

The Kinesis -> DynamoDB handler of docs/design.md#lambda-path:

* ``ttl`` comes from event time: the candle's bucket start + interval + the interval's retention
  (``Interval.ttl``), never the wall clock at write time, so replayed history expires on the
  same schedule as live data;
* writes are batched: keys are de-duplicated per invocation (the highest revision wins) and
  written through the DynamoDB store's BatchWriteItem path (25 items per request, several in
  flight, UnprocessedItems and throttling retried with backoff, the store's revision guard so an
  older revision never replaces a newer one);
* failures are reported with the partial batch response: the candles are written in groups in
  shard order; at the first group that cannot be written, every record from that group's first
  record on is reported (Lambda resumes the shard there and keeps what came before). Malformed
  records are counted and skipped (see :mod:`processors.kinesis_events`).

Entry point: ``processors.kinesis_to_dynamodb.handler``, configured by the same ``SPEEDLAYER_*``
settings as the services (``speedlayer.config.Settings``: intervals, retention, the table prefix,
endpoints, region, ``SPEEDLAYER_DYNAMODB_WRITE_MODE``, ``SPEEDLAYER_AWS_CREATE_RESOURCES``, which
a deployment sets to false) and ``SPEEDLAYER_LAMBDA_RETRY_TIMEOUT_S``.
:class:`DynamoDBWriter` is the async core; ``async_handler`` the same entry point on the caller's
event loop, and ``aclose`` the close of its clients (the local runner uses both).
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
    latest_per_key,
)
from speedlayer.backends import dynamodb_store
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.errors import StoreError
from speedlayer.retry import is_permanent
from speedlayer.store.dynamodb import DynamoDBStore

log = logging.getLogger(__name__)

GROUP_SIZE = 200  # candles per store call: 8 BatchWriteItem requests of 25 in flight


class DynamoDBWriter(BatchHandler):
    """The async core: one Kinesis event in, the partial batch response out."""

    name = "kinesis_to_dynamodb"

    def __init__(self, store: DynamoDBStore, *, group_size: int = GROUP_SIZE) -> None:
        super().__init__()
        self.store = store
        self.group_size = group_size
        self.candles_written = 0

    async def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        began = time.perf_counter()
        self.invocations += 1
        batch = decode_candles(event, self.store.intervals)
        writes = latest_per_key(batch.items)
        first_failed: int | None = None
        for start in range(0, len(writes), self.group_size):
            group = writes[start : start + self.group_size]
            try:
                await self.store.upsert([candle for _, candle in group])
            except StoreError as exc:
                if is_permanent(exc):  # the configuration: a function error, not the records'
                    raise
                first_failed = group[0][0]
                log.warning("DynamoDB write failed at record %s: %s",
                            batch.records[first_failed].sequence, exc)  # fmt: skip
                break
            self.candles_written += len(group)
        return self.respond(batch, first_failed, began)


async def _build() -> DynamoDBWriter:
    settings = Settings()
    store = dynamodb_store(settings, SystemClock(), retry_timeout_s=settings.lambda_retry_timeout_s)
    await store.start()
    return DynamoDBWriter(store)


async def _stop(writer: DynamoDBWriter) -> None:
    await writer.store.stop()


_HOST: LambdaHost[DynamoDBWriter] = LambdaHost(_build, _stop)


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """The AWS Lambda entry point."""
    return _HOST.run(lambda writer: writer.handle(event))


async def async_handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """``handler`` on the caller's event loop (the local runner: shards and streams at once)."""
    return await _HOST.invoke(lambda writer: writer.handle(event))


async def aclose() -> None:
    """Close the environment's clients (the local runner, at its end)."""
    await _HOST.aclose()


def reset() -> None:
    """Drop the environment's clients and loop (tests; a new configuration is read next time)."""
    _HOST.close()


attach_async_entry(handler, async_handler, aclose)
