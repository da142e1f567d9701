"""DynamoDBStore against dynalite: what the shared Store contract (test_store.py) does not cover.

Exact numbers, the reserved word ``timestamp``, both write modes (BatchWriteItem with the store's
own revision guard, conditional PutItem) and their write order, retries of UnprocessedItems,
UnprocessedKeys and throttling (injected with botocore event hooks, since no emulator ever
throttles), the TTL set-up function, data kept by a dynalite restarted on its --path directory,
and measured rates (printed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.exceptions import ClientError

import speedlayer.store.dynamodb as dynamodb_module
from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.errors import StoreError
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import Bar, Candle
from speedlayer.store.dynamodb import (
    WRITE_MODES,
    DynamoDBStore,
    WriteMode,
    candle_to_item,
    encode_number,
)
from tests.aws_hooks import (
    Counter,
    FirstCalls,
    PartlyUnprocessed,
    error_response,
    ok_response,
    request_body,
)
from tests.conftest import dynalite_command, free_port, run_cli, start_emulator, stop_process

INTERVALS = IntervalSet(DEFAULT_INTERVALS)
T0 = 1_704_206_220_000  # 2024-01-02T14:37Z
NOW = T0 + 3_600_000
THROTTLES = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
]


def candle(symbol: str, interval: str, ts: int, **kw: object) -> Candle:
    fields: dict[str, object] = dict(
        symbol=symbol, interval=interval, timestamp=ts, open=100.0, high=101.5, low=99.75,
        close=100.5, volume=1000.0, vwap=100.2, trades=10, bars=1, final=True, revision=1,
        ttl=NOW // 1000 + 86_400,
    )  # fmt: skip
    fields.update(kw)
    return Candle(**fields)  # type: ignore[arg-type]


def new_store(url: str, clock: ManualClock | None = None, **kw: object) -> DynamoDBStore:
    return DynamoDBStore(
        INTERVALS,
        clock or ManualClock(NOW),
        endpoint_url=url,
        table_prefix=f"d{uuid.uuid4().hex[:12]}_",
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(dynalite_url: str) -> AsyncIterator[DynamoDBStore]:
    async with new_store(dynalite_url, retry_timeout_s=10) as s:
        yield s
        await s.delete_tables()


@pytest.fixture(params=WRITE_MODES)
async def any_store(
    dynalite_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[DynamoDBStore]:
    async with new_store(dynalite_url, retry_timeout_s=10, write_mode=request.param) as s:
        yield s
        await s.delete_tables()


AWKWARD = [0.1 + 0.2, 1e-7, 123456.789012345, 1 / 3, 2.0**-40, 9007199254740993.0, 5e-324 * 1e200]


async def test_numbers_round_trip_exactly(store: DynamoDBStore) -> None:
    written = [
        candle("X", "1m", T0 + i * 60_000, open=x, high=x * 3, low=x / 7, close=x, volume=x,
               vwap=x * 1.1, trades=2**53 + i)
        for i, x in enumerate(AWKWARD)
    ]  # fmt: skip
    await store.upsert(written)
    got = await store.query("X", INTERVALS.get("1m"))
    assert got == written
    for w, g in zip(written, got, strict=True):
        assert (g.open, g.high, g.low, g.vwap) == (w.open, w.high, w.low, w.vwap)  # bit-exact
    assert encode_number(0.1 + 0.2) == "0.30000000000000004"
    assert candle_to_item(written[1])["open"] == {"N": "1E-7"}


async def test_reserved_word_timestamp_must_be_aliased(store: DynamoDBStore) -> None:
    table = store.tables["5m"]
    await store.upsert([candle("AAPL", "5m", T0 - T0 % 300_000 + i * 300_000) for i in range(5)])
    with pytest.raises(ClientError, match="reserved keyword"):
        await store.client.query(
            TableName=table,
            KeyConditionExpression="symbol = :s AND timestamp > :a",
            ExpressionAttributeValues={":s": {"S": "AAPL"}, ":a": {"N": "0"}},
        )
    got = await store.query("AAPL", INTERVALS.get("5m"), start_ms=T0, end_ms=T0 + 900_000)
    assert len(got) == 3 and got == sorted(got, key=lambda c: c.timestamp)


async def test_errors_are_mapped_to_store_error(any_store: DynamoDBStore) -> None:
    bad = candle("X", "1m", T0, open=1e-200)  # outside DynamoDB's number range
    op = "put_item" if any_store.write_mode == "conditional" else "BatchWriteItem"
    with pytest.raises(StoreError, match=op) as info:
        await any_store.upsert([bad])
    assert isinstance(info.value.__cause__, ClientError)


def test_write_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="write_mode"):
        DynamoDBStore(INTERVALS, ManualClock(NOW), write_mode="blind")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", THROTTLES)
async def test_throttled_puts_are_retried_and_nothing_is_lost(dynalite_url: str, code: str) -> None:
    async with new_store(dynalite_url, retry_timeout_s=10, write_mode="conditional") as store:
        hook = FirstCalls(30, lambda params: error_response(code))
        store.client.meta.events.register("before-call.dynamodb.PutItem", hook)
        written = [candle(f"S{i}", "1m", T0) for i in range(40)]
        assert await store.upsert(written) == 40
        assert hook.calls == 70
        got = await store.get_candles(INTERVALS.get("1m"), [(c.symbol, T0) for c in written])
        assert got == {(c.symbol, T0): c for c in written}
        await store.delete_tables()


def _mixed_candles(n_symbols: int, revision: int = 1) -> list[Candle]:
    """Candles of every interval, bucket-aligned, for ``n_symbols`` symbols."""
    out = []
    for iv in INTERVALS:
        start = T0 - T0 % iv.interval_ms
        out += [
            candle(f"M{i:03}", iv.name, start, revision=revision, close=100.0 + revision)
            for i in range(n_symbols)
        ]
    return out


@pytest.mark.parametrize("fault", ["unprocessed", "partly", *THROTTLES])
async def test_batch_upsert_retries_unprocessed_items_and_throttling(
    store: DynamoDBStore, fault: str
) -> None:
    """The default write path: injected UnprocessedItems (all of a request, or the second half of
    one the emulator did write) and throttling of BatchWriteItem and of the revision read
    (BatchGetItem) lose nothing."""
    events = store.client.meta.events
    calls = Counter()  # registered first: it sees every call, the injected ones too
    events.register("before-call.dynamodb.BatchWriteItem", calls)
    if fault == "partly":
        partly = PartlyUnprocessed(5)
        events.register("before-call.dynamodb.BatchWriteItem", partly.before)
        events.register("after-call.dynamodb.BatchWriteItem", partly.after)
    else:
        respond = _unprocessed_all if fault == "unprocessed" else lambda p: error_response(fault)
        writes = FirstCalls(5, respond)
        events.register("before-call.dynamodb.BatchWriteItem", writes)
        reads = FirstCalls(2, lambda p: error_response(fault) if fault in THROTTLES else None)
        events.register("before-call.dynamodb.BatchGetItem", reads)
    written = _mixed_candles(30)  # 6 x 30 other candles (8 requests), then 30 1m (2 requests)
    assert await store.upsert(written) == len(written)
    assert calls.calls == 10 + 5  # each injected fault cost exactly one more request
    for iv in INTERVALS:
        start = T0 - T0 % iv.interval_ms
        want = {(c.symbol, c.timestamp): c for c in written if c.interval == iv.name}
        assert await store.get_candles(iv, [(s, start) for s, _ in want]) == want, iv.name


async def test_batch_mode_never_replaces_a_higher_revision_from_another_instance(
    dynalite_url: str,
) -> None:
    """The revision guard reads the stored revisions of keys it has not seen (a restarted writer),
    once per key: later revisions of the same candles are cache hits."""
    prefix = f"g{uuid.uuid4().hex[:12]}_"
    first = DynamoDBStore(INTERVALS, ManualClock(NOW), endpoint_url=dynalite_url,
                          table_prefix=prefix)  # fmt: skip
    async with first:
        assert await first.upsert(_mixed_candles(20, revision=5)) == 140
    second = DynamoDBStore(INTERVALS, ManualClock(NOW), endpoint_url=dynalite_url,
                           table_prefix=prefix)  # fmt: skip
    async with second:
        reads = Counter()
        second.client.meta.events.register("before-call.dynamodb.BatchGetItem", reads)
        assert await second.upsert(_mixed_candles(20, revision=3)) == 0  # all stale
        assert second.stale_skipped == 140 and second.revision_reads == 140
        assert reads.calls == 7  # one BatchGetItem per table (20 keys each)
        assert await second.upsert(_mixed_candles(20, revision=5)) == 140  # equal replaces
        assert await second.upsert(_mixed_candles(20, revision=6)) == 140
        assert reads.calls == 7 and second.revision_reads == 140  # no more reads
        got = await second.query("M000", INTERVALS.get("4h"))
        assert [(c.revision, c.close) for c in got] == [(6, 106.0)]
        await second.delete_tables()


@pytest.mark.parametrize("mode", WRITE_MODES)
async def test_the_minute_table_is_written_last(dynalite_url: str, mode: WriteMode) -> None:
    """A write that fails in the middle never leaves a 1-minute bar stored without the candles
    derived from it: every other table's items are written before the first 1-minute item."""
    async with new_store(dynalite_url, retry_timeout_s=0.5, write_mode=mode) as store:
        tables: list[str] = []
        op = "BatchWriteItem" if mode == "batch" else "PutItem"

        def record(params: dict[str, object], **_: object) -> object:
            body = request_body(params)
            names = list(body["RequestItems"]) if mode == "batch" else [body["TableName"]]
            tables.extend(names)
            if store.tables["1m"] in names:
                return error_response("ValidationException", "the 1-minute write fails")
            return None

        store.client.meta.events.register(f"before-call.dynamodb.{op}", record)
        written = _mixed_candles(30)
        with pytest.raises(StoreError):
            await store.upsert(written)
        first_minute = tables.index(store.tables["1m"])
        assert store.tables["1m"] not in tables[:first_minute]
        assert set(tables[:first_minute]) == {store.tables[iv.name] for iv in INTERVALS} - {
            store.tables["1m"]
        }
        store.client.meta.events.unregister(f"before-call.dynamodb.{op}", record)
        for iv in INTERVALS:  # everything but the 1-minute table is complete
            start = T0 - T0 % iv.interval_ms
            got = await store.get_candles(iv, [(f"M{i:03}", start) for i in range(30)])
            assert len(got) == (0 if iv.name == "1m" else 30), iv.name
        await store.delete_tables()


def _unprocessed_all(params: dict[str, object]) -> object:
    return ok_response({"UnprocessedItems": request_body(params)["RequestItems"]})


@pytest.mark.parametrize("fault", ["unprocessed", *THROTTLES])
async def test_batch_write_retries_unprocessed_items_and_throttling(
    store: DynamoDBStore, fault: str
) -> None:
    """BatchWriteItem (purge of expired items): the first calls process nothing at all."""
    now_s = NOW // 1000
    dead = [candle(f"D{i:03}", iv, T0, ttl=now_s - 1) for i in range(60) for iv in ("1m", "4h")]
    alive = [candle(f"A{i:03}", "1m", T0) for i in range(10)]
    await store.upsert(dead + alive)
    respond = _unprocessed_all if fault == "unprocessed" else lambda p: error_response(fault)
    hook = FirstCalls(4, respond)
    store.client.meta.events.register("before-call.dynamodb.BatchWriteItem", hook)
    assert await store.purge_expired() == len(dead)
    assert hook.calls == 4 + 5  # 120 deletes = 5 batches of <= 25, each eventually written
    for iv in ("1m", "4h"):
        keys = [(c.symbol, T0) for c in dead + alive]
        assert set(await store.get_candles(INTERVALS.get(iv), keys)) == (
            {(c.symbol, T0) for c in alive} if iv == "1m" else set()
        )


async def test_batch_write_gives_up_after_the_deadline(dynalite_url: str) -> None:
    async with new_store(dynalite_url, retry_timeout_s=0.5) as store:
        await store.upsert([candle("D", "1m", T0, ttl=1)])
        store.client.meta.events.register(
            "before-call.dynamodb.BatchWriteItem", FirstCalls(10**6, _unprocessed_all)
        )
        started = time.monotonic()
        with pytest.raises(StoreError, match="unprocessed"):
            await store.purge_expired()
        assert time.monotonic() - started < 5


async def test_batch_get_retries_unprocessed_keys(store: DynamoDBStore) -> None:
    written = [candle(f"K{i:03}", "15m", T0 - T0 % 900_000) for i in range(150)]
    await store.upsert(written)

    def unprocessed(params: dict[str, object]) -> object:
        return ok_response(
            {"Responses": {}, "UnprocessedKeys": request_body(params)["RequestItems"]}
        )

    hook = FirstCalls(2, unprocessed)
    store.client.meta.events.register("before-call.dynamodb.BatchGetItem", hook)
    keys = [(c.symbol, c.timestamp) for c in written]
    assert await store.get_candles(INTERVALS.get("15m"), keys) == {
        (c.symbol, c.timestamp): c for c in written
    }
    assert hook.calls == 4  # 2 chunks (100 + 50), each answered "unprocessed" once


# -- TTL set-up -----------------------------------------------------------------------------------


async def test_ttl_setup_tolerates_dynalite_only_with_an_endpoint(
    dynalite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with new_store(dynalite_url) as store:  # dynalite: no UpdateTimeToLive
        assert await store.ensure_ttl(store.tables["1m"]) == "unsupported"
        await store.delete_tables()
    # the same emulator reached without endpoint_url (the service-specific environment variable)
    # is treated as AWS: a missing TTL operation is an error there
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynalite_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    aws_like = DynamoDBStore(INTERVALS, ManualClock(NOW), table_prefix=f"x{uuid.uuid4().hex[:8]}_")
    with pytest.raises(StoreError, match="cannot enable TTL"):
        await aws_like.start()
    assert os.environ["AWS_ENDPOINT_URL_DYNAMODB"] == dynalite_url


async def test_ttl_setup_describes_first_and_accepts_already_enabled(
    store: DynamoDBStore,
) -> None:
    table = store.tables["1h"]
    events = store.client.meta.events
    updates = Counter()
    enabled = FirstCalls(
        1,
        lambda p: ok_response(
            {"TimeToLiveDescription": {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}}
        ),
    )
    events.register("before-call.dynamodb.DescribeTimeToLive", enabled)
    events.register("before-call.dynamodb.UpdateTimeToLive", updates)
    assert await store.ensure_ttl(table) == "enabled"
    assert updates.calls == 0  # already enabled: no update
    already = FirstCalls(
        1, lambda p: error_response("ValidationException", "TimeToLive is already enabled")
    )
    events.register("before-call.dynamodb.UpdateTimeToLive", already)
    assert await store.ensure_ttl(table) == "enabled"
    assert already.calls == 1
    other = FirstCalls(
        1,
        lambda p: ok_response(
            {"TimeToLiveDescription": {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires"}}
        ),
    )
    events.register("before-call.dynamodb.DescribeTimeToLive", other)
    with pytest.raises(StoreError, match="expires"):
        await store.ensure_ttl(table)


# -- persistence ----------------------------------------------------------------------------------


async def test_dynalite_with_path_keeps_data_across_kill_9(tmp_path: Path) -> None:
    """Default dynalite timings here (tables CREATING for 500 ms): the wait-for-ACTIVE path runs."""
    port = free_port()
    command = dynalite_command(port, "--path", str(tmp_path / "ddb"))
    url = f"http://127.0.0.1:{port}"
    start = T0 - T0 % 14_400_000
    written = [candle(s, iv, start, revision=3) for s in ("A", "B") for iv in ("1m", "4h")]
    proc = start_emulator(command, port)
    try:
        store = DynamoDBStore(INTERVALS, ManualClock(NOW), endpoint_url=url, retry_timeout_s=5)
        async with store:
            await store.upsert(written)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            with pytest.raises(StoreError):
                await store.ping()
            proc = start_emulator(command, port)
            await store.ping()  # the same client works again
            for iv in ("1m", "4h"):
                assert await store.query("A", INTERVALS.get(iv)) == [
                    c for c in written if c.symbol == "A" and c.interval == iv
                ]
            assert await store.symbols() == ["A", "B"]
            assert await store.upsert([candle("A", "1m", written[0].timestamp, revision=2)]) == 0
    finally:
        stop_process(proc)


async def test_symbols_written_by_another_process_appear(
    dynalite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader (the API) that knows no symbol scans again soon; one that knows some, within
    ``SYMBOLS_SCAN_EVERY_S``."""
    monkeypatch.setattr(dynamodb_module, "SYMBOLS_RESCAN_EMPTY_S", 2.0)
    monkeypatch.setattr(dynamodb_module, "SYMBOLS_SCAN_EVERY_S", 3600.0)
    writer = new_store(dynalite_url)
    async with writer:
        reader = DynamoDBStore(
            INTERVALS, ManualClock(NOW), endpoint_url=dynalite_url, table_prefix=writer.table_prefix
        )
        async with reader:
            assert await reader.symbols() == []
            await writer.upsert([candle("A", "1m", T0)])
            assert await reader.symbols() == []  # scanned under 2 s ago
            await asyncio.sleep(2.1)
            assert await reader.symbols() == ["A"]
            await writer.upsert([candle("B", "1m", T0)])
            await asyncio.sleep(2.1)
            assert await reader.symbols() == ["A"]  # not empty: the next Scan is an hour away
        await writer.delete_tables()


# -- measured (printed, not asserted) -------------------------------------------------------------


@pytest.mark.parametrize("mode", WRITE_MODES)
async def test_measure_rates_on_dynalite(
    dynalite_url: str, capsys: pytest.CaptureFixture[str], mode: WriteMode
) -> None:
    async with new_store(dynalite_url, write_mode=mode) as store:
        n = 2500
        candles = [candle(f"S{i % 50:02}", "1m", T0 + (i // 50) * 60_000) for i in range(n)]
        started = time.perf_counter()
        assert await store.upsert(candles) == n
        write_s = time.perf_counter() - started
        minute = INTERVALS.get("1m")
        queries = 100
        started = time.perf_counter()
        for q in range(queries):
            got = await store.query(f"S{q % 50:02}", minute, start_ms=T0, limit=40)
            assert len(got) == 40
        query_s = time.perf_counter() - started
        await store.delete_tables()

    # requests per 1,000 input bars through the pipeline (40 symbols x 10 minutes, scaled;
    # bench/dynamodb.py measures it on real bars and on a wide market)
    width = 40
    bars = [
        Bar(f"P{s:03}", T0 + m * 60_000, 10.0, 11.0, 9.0, 10.5, 100.0)
        for m in range(10)
        for s in range(width)
    ]
    counts: dict[str, dict[str, int]] = {}
    for run in ("live", "replay"):
        clock = ManualClock(T0)
        async with new_store(dynalite_url, clock, write_mode=mode) as s2:
            hooks = {op: Counter() for op in ("PutItem", "BatchWriteItem", "BatchGetItem")}
            for op, hook in hooks.items():
                s2.client.meta.events.register(f"before-call.dynamodb.{op}", hook)
            pipeline = CandlePipeline(Resampler(INTERVALS, clock), s2)
            if run == "live":  # one batch per minute, finalized as the clock passes
                for m in range(10):
                    clock.set(T0 + m * 60_000 + 61_000)
                    await pipeline.tick()
                    await pipeline.handle(bars[m * width : (m + 1) * width])
            else:  # replay/backfill: one batch
                await pipeline.handle(bars)
            per_k = 1000 / len(bars)
            counts[run] = {op: round(hook.calls * per_k) for op, hook in hooks.items()}
            counts[run]["candles"] = round(pipeline.stats.rows_written * per_k)
            await s2.delete_tables()
    with capsys.disabled():
        print(
            f"\n[dynalite] {mode} upsert: {n / write_s:,.0f} candles/s; 40-candle range query: "
            f"{queries / query_s:,.0f} queries/s\n[dynalite] {mode}: requests per 1,000 bars "
            f"(7 intervals): live, 1 batch/minute {counts['live']}; replay, 1 batch "
            f"{counts['replay']}"
        )
    if mode == "batch":
        assert counts["replay"]["PutItem"] == 0 and counts["replay"]["BatchWriteItem"] > 0
    else:
        assert counts["replay"]["BatchWriteItem"] == 0 and counts["replay"]["PutItem"] > 0


def test_node_is_available() -> None:
    assert subprocess.run(["node", "--version"], capture_output=True).returncode == 0


# -- Read-only commands ---------------------------------------------------------------------------


def test_a_query_creates_no_table_and_names_the_missing_one(dynalite_url: str) -> None:
    """`speedlayer candles --store dynamodb` only reads: on an account without the tables it
    fails at once, naming the table, the endpoint and the command that creates them."""
    prefix = f"q{uuid.uuid4().hex[:8]}_"
    env = {
        "SPEEDLAYER_AWS_ENDPOINT_URL": dynalite_url,
        "SPEEDLAYER_DYNAMODB_TABLE_PREFIX": prefix,
        "SPEEDLAYER_AWS_CREATE_RESOURCES": "true",  # a query ignores it
    }
    proc = run_cli("candles", "AAPL", "--store", "dynamodb", env=env, check=False, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"DynamoDB table {prefix}speed_layer_ohlcv_1min does not exist at {dynalite_url}" in (
        proc.stderr
    )
    assert "speedlayer init-aws" in proc.stderr and "Traceback" not in proc.stderr
    client = boto3.client(
        "dynamodb",
        endpoint_url=dynalite_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    assert [t for t in client.list_tables()["TableNames"] if t.startswith(prefix)] == []
