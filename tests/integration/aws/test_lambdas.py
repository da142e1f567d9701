"""The Kinesis Lambda handlers and the local event-source-mapping runner, over real sockets.

Handlers get Kinesis events shaped as AWS sends them and write to dynalite / a real Kafka broker.
Faults AWS produces and the emulators do not (UnprocessedItems, throttling, failing requests) are
injected on the handlers' own clients with botocore event hooks; Kafka failures are injected at
the producer. The runner moves candles from kinesalite streams into DynamoDB and Kafka, also
when killed with SIGKILL mid-stream and restarted.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import boto3  # type: ignore[import-untyped]
import msgspec
import pytest
from aiokafka.errors import KafkaConnectionError, RecordTooLargeError

import processors.kinesis_to_dynamodb as to_dynamodb
from processors.kinesis_events import decode_candles
from processors.kinesis_to_dynamodb import DynamoDBWriter
from processors.kinesis_to_kafka import KafkaForwarder
from processors.lambda_runner import LambdaRunner, build_event, first_failure
from speedlayer.bus.base import candle_topic
from speedlayer.bus.kafka import KafkaBus
from speedlayer.bus.kinesis import KinesisBus
from speedlayer.bus.wire import decode_item, encode_item
from speedlayer.clock import ManualClock
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import Bar, Candle
from speedlayer.store.dynamodb import DynamoDBStore
from tests.aws_hooks import (
    Counter,
    FirstCalls,
    NthCall,
    error_response,
    ok_response,
    request_body,
)
from tests.bus_helpers import read_kafka_topic
from tests.conftest import SPEEDLAYER

INTERVALS = IntervalSet(DEFAULT_INTERVALS)
IV = {iv.name: iv for iv in INTERVALS}
T0 = 1_704_196_800_000  # 2024-01-02T12:00Z, on a bucket boundary of every interval
NOW = T0 + 3_600_000
SEQ0 = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
Key = tuple[str, str, int]


# -- test data ----------------------------------------------------------------------------------


def candle(symbol: str, interval: str, bucket: int, revision: int) -> Candle:
    """A candle update; ``ttl`` deliberately wrong (the handlers must set it from event time)."""
    ts = T0 + bucket * IV[interval].interval_ms
    price = 100.0 + bucket + revision / 8
    return Candle(
        symbol, interval, ts, price, price + 1.5, price - 1.25, price + 0.5, 100.0 * revision,
        price + 0.1 if revision % 2 else None, 10 * revision, revision, revision >= 3, revision, 1,
    )  # fmt: skip


def updates(
    symbols: Sequence[str], interval: str = "15m", buckets: int = 2, revisions: int = 3
) -> list[Candle]:
    """Candle updates in publication order: bucket by bucket, revision by revision."""
    return [
        candle(s, interval, b, r)
        for b in range(buckets)
        for r in range(1, revisions + 1)
        for s in symbols
    ]


def latest(candles: Iterable[Candle]) -> dict[Key, Candle]:
    """What a store must hold: the highest revision per key, with ttl from event time."""
    out: dict[Key, Candle] = {}
    for c in candles:
        key = (c.interval, c.symbol, c.timestamp)
        if key not in out or c.revision >= out[key].revision:
            out[key] = msgspec.structs.replace(c, ttl=IV[c.interval].ttl(c.timestamp))
    return out


def aws_event(
    payloads: Sequence[bytes | str],
    *,
    stream: str = "market-data-15m",
    shard: str = "shardId-000000000000",
    first_seq: int = SEQ0,
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A Kinesis event as Lambda delivers it (a str payload is put in ``data`` as is)."""
    records = []
    for i, payload in enumerate(payloads):
        seq = str(first_seq + i * 1_000_000_000)
        data = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": keys[i] if keys else "AAPL",
                    "sequenceNumber": seq,
                    "data": data,
                    "approximateArrivalTimestamp": 1704206400.123 + i / 1000,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard}:{seq}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-kinesis-role",
                "awsRegion": "us-east-1",
                "eventSourceARN": f"arn:aws:kinesis:us-east-1:123456789012:stream/{stream}",
            }
        )
    return {"Records": records}


def candle_event(candles: Sequence[Candle], **kw: Any) -> dict[str, Any]:
    return aws_event([encode_item(c) for c in candles], keys=[c.symbol for c in candles], **kw)


def sequences(event: dict[str, Any]) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for r in event["Records"]]


def failures(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


# -- fixtures -----------------------------------------------------------------------------------


def new_store(dynalite_url: str, prefix: str | None = None, **kw: Any) -> DynamoDBStore:
    return DynamoDBStore(
        INTERVALS,
        ManualClock(NOW),
        endpoint_url=dynalite_url,
        table_prefix=prefix or f"l{uuid.uuid4().hex[:12]}_",
        retry_timeout_s=kw.pop("retry_timeout_s", 10),
        **kw,
    )


@pytest.fixture
async def store(dynalite_url: str) -> AsyncIterator[DynamoDBStore]:
    async with new_store(dynalite_url) as s:
        yield s


async def stored(store: DynamoDBStore, keys: Iterable[Key]) -> dict[Key, Candle]:
    by_interval: dict[str, list[tuple[str, int]]] = {}
    for interval, symbol, ts in keys:
        by_interval.setdefault(interval, []).append((symbol, ts))
    out: dict[Key, Candle] = {}
    for interval, pairs in by_interval.items():
        found = await store.get_candles(IV[interval], pairs)
        out.update({(interval, s, t): c for (s, t), c in found.items()})
    return out


@pytest.fixture
async def kafka(kafka_bootstrap: str) -> AsyncIterator[KafkaBus]:
    async with KafkaBus(
        kafka_bootstrap, topic_prefix=f"l{uuid.uuid4().hex[:10]}.", retry_timeout_s=10
    ) as bus:
        yield bus


async def read_topic(bus: KafkaBus, topic: str, n: int, within_s: float = 30) -> list[Any]:
    """Every record of a topic from the beginning, as (key, item), until ``n`` were read."""
    records = await read_kafka_topic(bus.bootstrap_servers, bus.topic_name(topic), n, within_s)
    return [(r.key.decode(), decode_item(r.value)) for r in records]


# -- the shared event decoding ------------------------------------------------------------------


def test_decoding_counts_and_skips_malformed_records() -> None:
    good = [candle("AAPL", "15m", 0, 1), candle("MSFT", "1h", 1, 2)]
    odd: list[bytes | str] = [
        "%%% not base64 %%%",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b'{"type":"trade","p":1}').decode(),
        encode_item(Bar("AAPL", T0, 1, 2, 0.5, 1.5, 10)),  # a bar on a candle stream
        encode_item(msgspec.structs.replace(good[0], interval="7m")),  # not configured
        encode_item(msgspec.structs.replace(good[0], timestamp=T0 + 60_000)),  # off-boundary
        encode_item(msgspec.structs.replace(good[0], symbol="bad symbol!")),
        b'{"type":"candle","symbol":"AAPL"}',  # fields missing
    ]
    event = aws_event([encode_item(good[0]), *odd, encode_item(good[1])])
    event["Records"].insert(3, {"kinesis": {"data": "e30="}})  # no sequence number
    batch = decode_candles(event, INTERVALS)
    assert [c for _, c in batch.items] == list(latest(good).values())  # ttl from event time
    assert [i for i, _ in batch.items] == [0, len(odd) + 1]
    assert batch.skipped == {
        "bad_base64": 1, "undecodable": 3, "not_a_candle": 1, "unknown_interval": 1,
        "not_on_bucket_boundary": 1, "bad_symbol": 1, "no_sequence_number": 1,
    }  # fmt: skip
    assert decode_candles({}, INTERVALS).records == []
    assert decode_candles({"Records": "x"}, INTERVALS).skipped == {"bad_event": 1}


def test_ttl_comes_from_event_time_not_the_wall_clock() -> None:
    old = candle("AAPL", "15m", 0, 1)  # 2024: replayed history
    (item,) = decode_candles(candle_event([old]), INTERVALS).items
    assert item[1].ttl == (T0 + 15 * 60_000) // 1000 + 30 * 86_400
    (item,) = decode_candles(candle_event([candle("AAPL", "4h", 0, 1)]), INTERVALS).items
    assert item[1].ttl == (T0 - T0 % (4 * 3_600_000) + 4 * 3_600_000) // 1000 + 90 * 86_400


def test_runner_reads_partial_batch_responses_like_lambda() -> None:
    seqs = ["10", "20", "30"]
    assert first_failure(None, seqs) is None
    assert first_failure({"batchItemFailures": []}, seqs) is None
    assert first_failure({"batchItemFailures": [{"itemIdentifier": "30"},
                                                {"itemIdentifier": "20"}]}, seqs) == 1  # fmt: skip
    assert first_failure({"batchItemFailures": [{"itemIdentifier": "99"}]}, seqs) == 0
    assert first_failure({"batchItemFailures": [{"itemIdentifier": ""}]}, seqs) == 0
    assert first_failure({"batchItemFailures": "all"}, seqs) == 0


def test_runner_builds_events_as_aws_does() -> None:
    from datetime import UTC, datetime

    records = [
        {
            "SequenceNumber": "495903",
            "PartitionKey": "AAPL",
            "Data": b'{"type":"candle"}',
            "ApproximateArrivalTimestamp": datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
        }
    ]
    arn = "arn:aws:kinesis:us-east-1:000000000000:stream/s"
    event = build_event(
        records, shard_id="shardId-000000000001", stream_arn=arn, region="us-east-1"
    )
    (record,) = event["Records"]
    assert record["kinesis"] == {
        "kinesisSchemaVersion": "1.0",
        "partitionKey": "AAPL",
        "sequenceNumber": "495903",
        "data": base64.b64encode(b'{"type":"candle"}').decode(),
        "approximateArrivalTimestamp": 1704205800.0,
    }
    assert record["eventID"] == "shardId-000000000001:495903"
    assert record["eventSource"] == "aws:kinesis" and record["eventSourceARN"] == arn
    assert record["eventName"] == "aws:kinesis:record" and record["awsRegion"] == "us-east-1"


# -- kinesis_to_dynamodb ------------------------------------------------------------------------


async def test_dynamodb_handler_writes_the_latest_revision_with_event_time_ttl(
    store: DynamoDBStore,
) -> None:
    symbols = [f"S{i:03d}" for i in range(40)]
    sent = updates(symbols, "15m", buckets=2, revisions=3) + updates(symbols[:10], "1h", 1, 2)
    writes, reads = Counter(), Counter()
    store.client.meta.events.register("before-call.dynamodb.BatchWriteItem", writes)
    store.client.meta.events.register("before-call.dynamodb.BatchGetItem", reads)
    writer = DynamoDBWriter(store)
    response = await writer.handle(candle_event(sent))
    assert response == {"batchItemFailures": []}
    assert writes.calls == 4  # 90 unique keys in 25s; the 3 revisions of a key are one write
    assert reads.calls == 2  # the revision guard reads the unknown keys once, per table
    want = latest(sent)
    assert await stored(store, want) == want
    assert writer.candles_written == len(want) == 90


async def test_dynamodb_handler_never_replaces_a_newer_revision(store: DynamoDBStore) -> None:
    """A redelivered older batch (a retry after a restart) does not roll candles back."""
    newer = updates(["A", "B"], revisions=3)
    older = [c for c in newer if c.revision == 1]
    await DynamoDBWriter(store).handle(candle_event(newer))
    async with new_store(store.endpoint_url or "", prefix=_prefix(store)) as fresh:
        response = await DynamoDBWriter(fresh).handle(candle_event(older))
        assert response == {"batchItemFailures": []}
        assert fresh.stale_skipped == len(older)
    want = latest(newer)
    assert await stored(store, want) == want


def _prefix(store: DynamoDBStore) -> str:
    table = store.tables["15m"]
    return table[: table.index("speed_layer_ohlcv_")]


async def test_dynamodb_handler_skips_malformed_records(store: DynamoDBStore) -> None:
    good = updates(["A", "B", "C"], revisions=2)
    payloads: list[bytes | str] = [encode_item(c) for c in good]
    payloads[2:2] = [b"garbage", "!!!", encode_item(Bar("A", T0, 1, 2, 0.5, 1.5, 10))]
    writer = DynamoDBWriter(store)
    assert await writer.handle(aws_event(payloads)) == {"batchItemFailures": []}
    assert writer.skipped == 3
    want = latest(good)
    assert await stored(store, want) == want


class PartlyUnprocessed:
    """The first ``n`` BatchWriteItem calls reach dynalite (which writes everything), then the
    response claims the second half of the request as UnprocessedItems."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        self.calls += 1
        if self.calls <= self.n:
            context["claim"] = request_body(params)["RequestItems"]

    def after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        items = context.get("claim")
        if isinstance(items, dict):
            flat = [(t, r) for t, requests in items.items() for r in requests]
            claimed: dict[str, list[Any]] = {}
            for table, request in flat[len(flat) // 2 :]:
                claimed.setdefault(table, []).append(request)
            parsed["UnprocessedItems"] = claimed


@pytest.mark.parametrize(
    "fault", ["unprocessed", "partly", "ProvisionedThroughputExceededException",
              "ThrottlingException", "RequestLimitExceeded"]
)  # fmt: skip
async def test_dynamodb_handler_loses_nothing_to_unprocessed_items_and_throttling(
    store: DynamoDBStore, fault: str
) -> None:
    events = store.client.meta.events
    calls = Counter()
    events.register("before-call.dynamodb.BatchWriteItem", calls)
    if fault == "partly":
        partly = PartlyUnprocessed(4)
        events.register("before-call.dynamodb.BatchWriteItem", partly.before)
        events.register("after-call.dynamodb.BatchWriteItem", partly.after)
    elif fault == "unprocessed":
        everything = FirstCalls(
            4, lambda p: ok_response({"UnprocessedItems": request_body(p)["RequestItems"]})
        )
        events.register("before-call.dynamodb.BatchWriteItem", everything)
    else:
        throttle = FirstCalls(4, lambda p: error_response(fault))
        events.register("before-call.dynamodb.BatchWriteItem", throttle)
        events.register("before-call.dynamodb.BatchGetItem", FirstCalls(2, throttle.respond))
    sent = updates([f"S{i:02d}" for i in range(50)], revisions=2)  # 100 keys: 4 requests
    writer = DynamoDBWriter(store)
    assert await writer.handle(candle_event(sent)) == {"batchItemFailures": []}
    assert calls.calls == 4 + 4  # each injected fault cost one more request, nothing else
    want = latest(sent)
    assert await stored(store, want) == want


async def test_dynamodb_handler_reports_exactly_the_records_from_the_first_failed_write(
    store: DynamoDBStore,
) -> None:
    """Groups of 25 candles (one BatchWriteItem each); the third request fails for good (a
    non-retryable error): the response names every record from that group's first record on,
    in shard order; redelivering just those (as Lambda does) completes the table."""
    sent = [candle(f"S{i:03d}", "15m", 0, 1) for i in range(100)]  # 100 keys, one record each
    event = candle_event(sent)
    hook = NthCall(3, lambda p: error_response("ValidationException", status=400))
    store.client.meta.events.register("before-call.dynamodb.BatchWriteItem", hook)
    writer = DynamoDBWriter(store, group_size=25)
    response = await writer.handle(event)
    assert failures(response) == sequences(event)[50:]
    want = latest(sent)
    got = await stored(store, want)
    assert set(got) == {(c.interval, c.symbol, c.timestamp) for c in sent[:50]}
    store.client.meta.events.unregister("before-call.dynamodb.BatchWriteItem", hook)
    retry = {"Records": [r for r in event["Records"] if r["kinesis"]["sequenceNumber"]
                         in set(failures(response))]}  # fmt: skip
    assert await writer.handle(retry) == {"batchItemFailures": []}
    assert await stored(store, want) == want


def test_dynamodb_entry_point_reuses_its_clients(
    dynalite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``handler(event, context)`` as AWS calls it: settings from the environment, clients built
    at the first invocation and reused by the next ones."""
    prefix = f"e{uuid.uuid4().hex[:12]}_"
    monkeypatch.setenv("SPEEDLAYER_AWS_ENDPOINT_URL", dynalite_url)
    monkeypatch.setenv("SPEEDLAYER_DYNAMODB_TABLE_PREFIX", prefix)
    monkeypatch.setenv("SPEEDLAYER_AWS_CREATE_RESOURCES", "true")
    monkeypatch.setenv("SPEEDLAYER_INTERVALS", "15m,1h")
    sent = updates(["A", "B"], revisions=2)
    try:
        assert to_dynamodb.handler(candle_event(sent[:2]), None) == {"batchItemFailures": []}
        first = to_dynamodb._HOST._resource
        assert to_dynamodb.handler(candle_event(sent[2:]), None) == {"batchItemFailures": []}
        assert to_dynamodb._HOST._resource is first  # a warm invocation: same clients
    finally:
        to_dynamodb.reset()

    async def check() -> None:
        async with new_store(dynalite_url, prefix=prefix, create_tables=False) as s:
            want = latest(sent)
            assert await stored(s, want) == want

    asyncio.run(check())


def test_dynamodb_entry_point_takes_every_store_setting_of_the_services(
    dynalite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler reads the services' own settings: the DynamoDB endpoint override (not only
    the shared AWS one) and the write mode."""
    prefix = f"w{uuid.uuid4().hex[:12]}_"
    monkeypatch.setenv("SPEEDLAYER_AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("SPEEDLAYER_DYNAMODB_ENDPOINT_URL", dynalite_url)
    monkeypatch.setenv("SPEEDLAYER_DYNAMODB_TABLE_PREFIX", prefix)
    monkeypatch.setenv("SPEEDLAYER_DYNAMODB_WRITE_MODE", "conditional")
    monkeypatch.setenv("SPEEDLAYER_INTERVALS", "15m,1h")
    sent = updates(["A"], revisions=2)
    try:
        assert to_dynamodb.handler(candle_event(sent), None) == {"batchItemFailures": []}
        writer = to_dynamodb._HOST._resource
        assert writer is not None
        assert writer.store.write_mode == "conditional"
        assert writer.store.endpoint_url == dynalite_url
    finally:
        to_dynamodb.reset()


# -- kinesis_to_kafka ---------------------------------------------------------------------------


async def test_kafka_handler_forwards_candles_to_interval_topics(kafka: KafkaBus) -> None:
    sent = updates(["A", "B", "C"], "15m", revisions=3) + updates(["A"], "1h", 1, 2)
    forwarder = KafkaForwarder(kafka, INTERVALS)
    event = candle_event(sent)
    event["Records"].insert(1, aws_event([b"junk"], first_seq=SEQ0 + 7)["Records"][0])
    assert await forwarder.handle(event) == {"batchItemFailures": []}
    assert forwarder.skipped == 1
    fixed = [msgspec.structs.replace(c, ttl=IV[c.interval].ttl(c.timestamp)) for c in sent]
    for interval in ["15m", "1h"]:
        want = [c for c in fixed if c.interval == interval]
        got = await read_topic(kafka, candle_topic(interval), len(want))
        assert all(key == item.symbol for key, item in got)
        for symbol in {c.symbol for c in want}:  # per symbol: exactly the updates, in order
            assert [i for _, i in got if i.symbol == symbol] == [
                c for c in want if c.symbol == symbol
            ]


def _failing_sends(bus: KafkaBus, monkeypatch: pytest.MonkeyPatch, bad: set[bytes],
                   error: Exception, times: int | None) -> list[int]:  # fmt: skip
    """Make the producer fail the records of ``bad`` keys (the first ``times`` attempts)."""
    producer = bus.producer
    original = producer.send
    failed = [0]

    async def send(topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> Any:
        if key in bad and (times is None or failed[0] < times):
            failed[0] += 1
            future = asyncio.get_running_loop().create_future()
            future.set_exception(error)
            return future
        return await original(topic, value, key=key, **kw)

    monkeypatch.setattr(producer, "send", send)
    return failed


async def test_kafka_handler_retries_broker_errors_and_loses_nothing(
    kafka: KafkaBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = updates(["A", "B", "C", "D"], revisions=3)
    failed = _failing_sends(kafka, monkeypatch, {b"B", b"D"}, KafkaConnectionError("down"), 5)
    forwarder = KafkaForwarder(kafka, INTERVALS)
    assert await forwarder.handle(candle_event(sent)) == {"batchItemFailures": []}
    assert failed[0] == 5 and kafka.records_retried > 0
    got = await read_topic(kafka, "market-data-15m", len(sent))
    fixed = [msgspec.structs.replace(c, ttl=IV[c.interval].ttl(c.timestamp)) for c in sent]
    # Every update arrives (a resent run may repeat some), and the last one of each candle in
    # its partition is its latest revision: what consumers de-duplicating by revision rely on.
    assert {msgspec.json.encode(i) for _, i in got} == {msgspec.json.encode(c) for c in fixed}
    last: dict[Key, Candle] = {}
    for _, c in got:
        last[(c.interval, c.symbol, c.timestamp)] = c
    assert last == latest(sent)


@pytest.mark.parametrize("error", [KafkaConnectionError("down"), RecordTooLargeError()])
async def test_kafka_handler_reports_the_records_from_the_first_failure(
    kafka: KafkaBus, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """A key that keeps failing (past the retry budget, or not retryable at all): every record
    from its first one on is reported, in shard order."""
    sent = updates(["A", "B", "C"], revisions=2)
    _failing_sends(kafka, monkeypatch, {b"B"}, error, None)
    forwarder = KafkaForwarder(kafka, INTERVALS, retry_timeout_s=0.5)
    event = candle_event(sent)
    response = await forwarder.handle(event)
    first_b = next(i for i, c in enumerate(sent) if c.symbol == "B")
    assert failures(response) == sequences(event)[first_b:]


# -- the local runner ---------------------------------------------------------------------------


@pytest.fixture
async def kinesis(kinesalite_url: str, dynalite_url: str) -> AsyncIterator[KinesisBus]:
    async with KinesisBus(
        endpoint_url=kinesalite_url,
        dynamodb_endpoint_url=dynalite_url,
        stream_prefix=f"r{uuid.uuid4().hex[:10]}-",
        shard_count=2,
        intervals=["15m"],
    ) as bus:
        await bus.ensure_streams([candle_topic("15m")])
        yield bus


def new_runner(handler: Any, bus: KinesisBus, **kw: Any) -> LambdaRunner:
    return LambdaRunner(
        handler,
        bus.stream_name(candle_topic("15m")),
        function_name=kw.pop("function_name", "test"),
        kinesis_endpoint_url=bus.endpoint_url,
        dynamodb_endpoint_url=bus.dynamodb_endpoint_url,
        poll_interval_s=0.05,
        shard_refresh_s=0.5,
        retry_initial_s=0.02,
        **kw,
    )


async def until_idle(runner: LambdaRunner, within_s: float = 60) -> None:
    await asyncio.wait_for(runner.wait_idle(), within_s)


async def test_runner_moves_a_stream_into_dynamodb_and_kafka(
    kinesis: KinesisBus, store: DynamoDBStore, kafka: KafkaBus
) -> None:
    sent = updates([f"S{i:03d}" for i in range(60)], buckets=3, revisions=3)  # 540 updates
    for start in range(0, len(sent), 120):
        await kinesis.publish(candle_topic("15m"), sent[start : start + 120])
    # The third BatchWriteItem fails for good once: the runner must resume at the failed records.
    hook = NthCall(3, lambda p: error_response("ValidationException", status=400))
    store.client.meta.events.register("before-call.dynamodb.BatchWriteItem", hook)
    writer = DynamoDBWriter(store, group_size=25)
    forwarder = KafkaForwarder(kafka, INTERVALS)
    async with (
        new_runner(writer.handle, kinesis, batch_size=100, function_name="ddb") as to_ddb,
        new_runner(forwarder.handle, kinesis, batch_size=100, function_name="kafka") as to_kafka,
    ):
        await until_idle(to_ddb)
        await until_idle(to_kafka)
    assert to_ddb.stats.partial_failures == 1 and to_ddb.stats.records_retried > 0
    assert to_ddb.stats.function_errors == 0 and to_kafka.stats.partial_failures == 0
    want = latest(sent)
    assert await stored(store, want) == want
    got = await read_topic(kafka, "market-data-15m", len(sent))
    last: dict[Key, Candle] = {}
    for _, c in got:  # the topic in partition order: the last update per key must be the latest
        last[(c.interval, c.symbol, c.timestamp)] = c
    assert last == want


async def test_runner_retries_function_errors_and_bisects(
    kinesalite_url: str, dynalite_url: str
) -> None:
    sent = updates([f"S{i}" for i in range(8)], buckets=1, revisions=2)  # 16 records
    async with KinesisBus(
        endpoint_url=kinesalite_url, dynamodb_endpoint_url=dynalite_url,
        stream_prefix=f"b{uuid.uuid4().hex[:10]}-", shard_count=1, intervals=["15m"],
    ) as kinesis:  # fmt: skip
        await kinesis.ensure_streams([candle_topic("15m")])
        await kinesis.publish(candle_topic("15m"), sent)
        await _bisect(kinesis, sent)


async def _bisect(kinesis: KinesisBus, sent: list[Candle]) -> None:
    seen: list[int] = []
    done: list[Candle] = []

    async def flaky(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(len(event["Records"]))
        if len(seen) <= 3:
            raise RuntimeError("boom")  # a function error: the whole batch again, halved
        done.extend(c for _, c in decode_candles(event, INTERVALS).items)
        return {"batchItemFailures": []}

    async with new_runner(flaky, kinesis, batch_size=100, bisect_on_error=True) as runner:
        await until_idle(runner)
    assert runner.stats.function_errors == 3
    assert seen[:4] == [16, 8, 4, 2]  # the batch is halved on each function error
    assert sorted(msgspec.json.encode(c) for c in done) == sorted(
        msgspec.json.encode(msgspec.structs.replace(c, ttl=IV["15m"].ttl(c.timestamp)))
        for c in sent
    )  # every record once: nothing lost, nothing doubled


async def test_runner_resumes_from_its_checkpoint(kinesis: KinesisBus) -> None:
    first, second = updates(["A", "B"], buckets=1), updates(["A", "B"], buckets=2)[6:]
    await kinesis.publish(candle_topic("15m"), first)
    got: list[str] = []

    async def record(event: dict[str, Any]) -> None:
        got.extend(sequences(event))

    async with new_runner(record, kinesis, function_name="resume") as runner:
        await until_idle(runner)
    assert len(got) == len(first)
    await kinesis.publish(candle_topic("15m"), second)
    async with new_runner(record, kinesis, function_name="resume") as runner:
        await until_idle(runner)
    assert len(got) == len(first) + len(second) == len(set(got))  # nothing twice, none lost


def test_killed_runner_resumes_and_converges(
    kinesalite_url: str, dynalite_url: str, tmp_path: Any
) -> None:
    """`speedlayer lambda-run kinesis_to_dynamodb` (the real entry point, configured by its
    environment) is killed with SIGKILL mid-stream, more records arrive, and a restarted runner
    catches up: the table equals the input's latest revisions."""
    prefix = f"k{uuid.uuid4().hex[:10]}-"
    table_prefix = prefix.replace("-", "_")
    stream = prefix + "market-data-15m"
    phase1 = updates([f"S{i:03d}" for i in range(100)], buckets=2, revisions=4)  # 800
    phase2 = updates([f"S{i:03d}" for i in range(100)], buckets=3, revisions=4)[600:]  # 600

    async def publish(candles: list[Candle]) -> dict[str, str]:
        """Publish; return the last sequence number of each shard."""
        async with KinesisBus(
            endpoint_url=kinesalite_url, dynamodb_endpoint_url=dynalite_url,
            stream_prefix=prefix, shard_count=2, intervals=["15m"],
        ) as bus:  # fmt: skip
            await bus.ensure_streams([candle_topic("15m")])
            for start in range(0, len(candles), 200):
                await bus.publish(candle_topic("15m"), candles[start : start + 200])
            ends: dict[str, str] = {}
            for shard in (await bus.kinesis.list_shards(StreamName=stream))["Shards"]:
                it = (await bus.kinesis.get_shard_iterator(
                    StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                ))["ShardIterator"]  # fmt: skip
                while records := (resp := await bus.kinesis.get_records(ShardIterator=it))[
                    "Records"
                ]:
                    ends[shard["ShardId"]] = records[-1]["SequenceNumber"]
                    it = resp["NextShardIterator"]
            return ends

    ddb = boto3.client(
        "dynamodb", endpoint_url=dynalite_url, region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
    )  # fmt: skip

    def checkpoints() -> dict[str, str]:
        """The runner's checkpoints, read the way it writes them (a quick synchronous query)."""
        try:
            page = ddb.query(
                TableName="speedlayer_checkpoints",
                KeyConditionExpression="#l = :l",
                ExpressionAttributeNames={"#l": "lease"},
                ExpressionAttributeValues={
                    ":l": {"S": f"lambda:processors.kinesis_to_dynamodb:handler/{stream}"}
                },
                ConsistentRead=True,
            )
        except ddb.exceptions.ResourceNotFoundException:
            return {}
        return {item["shard"]["S"]: item["sequence"]["S"] for item in page["Items"]}

    ends1 = asyncio.run(publish(phase1))
    env = {
        **os.environ,
        "SPEEDLAYER_AWS_ENDPOINT_URL": dynalite_url,
        "SPEEDLAYER_DYNAMODB_TABLE_PREFIX": table_prefix,
        "SPEEDLAYER_AWS_CREATE_RESOURCES": "true",
        "SPEEDLAYER_INTERVALS": "15m",
        "SPEEDLAYER_LOG_LEVEL": "warning",
    }
    command = [
        SPEEDLAYER, "lambda-run", "kinesis_to_dynamodb", "--stream", stream,
        "--batch-size", "20", "--kinesis-endpoint-url", kinesalite_url,
        "--dynamodb-endpoint-url", dynalite_url,
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 60
        while not checkpoints():
            assert proc.poll() is None, "the runner exited"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    at_kill = checkpoints()
    assert any(int(at_kill.get(shard, "0")) < int(end) for shard, end in ends1.items())  # mid-way
    asyncio.run(publish(phase2))
    done = subprocess.run([*command, "--until-idle"], env=env, timeout=120, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    after = checkpoints()
    assert after != at_kill and set(after) >= set(at_kill)

    async def check() -> None:
        async with new_store(dynalite_url, prefix=table_prefix, create_tables=False) as s:
            want = latest(phase1 + phase2)
            assert await stored(s, want) == want

    asyncio.run(check())


# -- throughput (printed; the numbers go to the docs) -------------------------------------------


async def test_handler_throughput_is_reported(store: DynamoDBStore, kafka: KafkaBus) -> None:
    symbols = [f"T{i:04d}" for i in range(1000)]
    events = [
        candle_event([candle(s, "15m", b, 1) for s in symbols], first_seq=SEQ0 + b * 10**12)
        for b in range(5)
    ]  # 5 events of 1,000 distinct candles
    total = sum(len(e["Records"]) for e in events)
    writes, reads = Counter(), Counter()
    store.client.meta.events.register("before-call.dynamodb.BatchWriteItem", writes)
    store.client.meta.events.register("before-call.dynamodb.BatchGetItem", reads)
    writer = DynamoDBWriter(store)
    began = time.perf_counter()
    for event in events:
        assert await writer.handle(event) == {"batchItemFailures": []}
    ddb_s = time.perf_counter() - began
    forwarder = KafkaForwarder(kafka, INTERVALS)
    await forwarder.handle(candle_event([candle("warm", "15m", 0, 1)]))
    began = time.perf_counter()
    for event in events:
        assert await forwarder.handle(event) == {"batchItemFailures": []}
    kafka_s = time.perf_counter() - began
    print(
        f"\n[lambda] kinesis_to_dynamodb {total / ddb_s:,.0f} candles/s into dynalite "
        f"({writes.calls * 1000 / total:.0f} BatchWriteItem + {reads.calls * 1000 / total:.0f} "
        f"BatchGetItem requests per 1,000 candles); kinesis_to_kafka {total / kafka_s:,.0f} "
        f"candles/s"
    )
    assert writes.calls == total // 25
