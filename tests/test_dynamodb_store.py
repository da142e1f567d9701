"""DynamoDBStore against dynalite: what the shared Store contract (test_store.py) does not cover.

Exact numbers, the reserved word ``timestamp``, retries of UnprocessedItems/UnprocessedKeys and
throttling (injected with botocore event hooks, since no emulator ever throttles), the TTL set-up
function, data kept by a dynalite restarted on its --path directory, and measured rates (printed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.errors import StoreError
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import Bar, Candle
from speedlayer.store.dynamodb import DynamoDBStore, candle_to_item, encode_number
from tests.aws_hooks import Counter, FirstCalls, error_response, ok_response, request_body
from tests.conftest import dynalite_command, free_port, start_emulator, stop_process

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


async def test_errors_are_mapped_to_store_error(store: DynamoDBStore) -> None:
    bad = candle("X", "1m", T0, open=1e-200)  # outside DynamoDB's number range
    with pytest.raises(StoreError, match=r"put_item") as info:
        await store.upsert([bad])
    assert isinstance(info.value.__cause__, ClientError)


@pytest.mark.parametrize("code", THROTTLES)
async def test_throttled_puts_are_retried_and_nothing_is_lost(
    store: DynamoDBStore, code: str
) -> None:
    hook = FirstCalls(30, lambda params: error_response(code))
    store.client.meta.events.register("before-call.dynamodb.PutItem", hook)
    written = [candle(f"S{i}", "1m", T0) for i in range(40)]
    assert await store.upsert(written) == 40
    assert hook.calls == 70
    assert await store.get_candles(INTERVALS.get("1m"), [(c.symbol, T0) for c in written]) == {
        (c.symbol, T0): c for c in written
    }


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


# -- measured (printed, not asserted) -------------------------------------------------------------


async def test_measure_rates_on_dynalite(
    dynalite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with new_store(dynalite_url) as store:
        n = 5000
        candles = [candle(f"S{i % 50:02}", "1m", T0 + (i // 50) * 60_000) for i in range(n)]
        started = time.perf_counter()
        await store.upsert(candles)
        write_s = time.perf_counter() - started
        minute = INTERVALS.get("1m")
        queries = 200
        started = time.perf_counter()
        for q in range(queries):
            got = await store.query(f"S{q % 50:02}", minute, start_ms=T0, limit=100)
            assert len(got) == 100
        query_s = time.perf_counter() - started

        # write requests per 1,000 input bars through the pipeline (100 symbols x 10 minutes)
        puts = Counter()
        store.client.meta.events.register("before-call.dynamodb.PutItem", puts)
        bars = [
            Bar(f"P{s:03}", T0 + m * 60_000, 10.0, 11.0, 9.0, 10.5, 100.0)
            for m in range(10)
            for s in range(100)
        ]
        clock = ManualClock(T0)
        live = CandlePipeline(Resampler(INTERVALS, clock), store)
        for m in range(10):  # live: one batch per minute
            clock.set(T0 + m * 60_000 + 1000)
            await live.handle(bars[m * 100 : (m + 1) * 100])
        live_puts = puts.calls
        puts.calls = 0
        store2 = new_store(dynalite_url, ManualClock(T0))
        async with store2:
            store2.client.meta.events.register("before-call.dynamodb.PutItem", puts)
            replay = CandlePipeline(Resampler(INTERVALS, ManualClock(T0)), store2)
            await replay.handle(bars)  # replay/backfill: one batch of 1,000 bars
            await store2.delete_tables()
        await store.delete_tables()
    with capsys.disabled():
        print(
            f"\n[dynalite] conditional PutItem upsert: {n / write_s:,.0f} candles/s "
            f"({store.write_concurrency} in flight); 100-candle range query: "
            f"{queries / query_s:,.0f} queries/s\n"
            f"[dynalite] write requests per 1,000 bars, 7 intervals: live (1 batch/minute) "
            f"{live_puts} PutItem (BatchWriteItem would be ~{-(-live_puts // 25)}); replay "
            f"(1 batch) {puts.calls} PutItem (BatchWriteItem ~{-(-puts.calls // 25)})"
        )


def test_node_is_available() -> None:
    assert subprocess.run(["node", "--version"], capture_output=True).returncode == 0
