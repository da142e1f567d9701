"""KinesisBus against kinesalite (streams) and dynalite (checkpoints), over real sockets.

Partial PutRecords failures, throttling and an expired shard iterator are injected with botocore
event hooks on the bus's own client (kinesalite produces none of them by itself).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from speedlayer.bus.base import RAW_TOPIC, candle_topic
from speedlayer.bus.kinesis import (
    MAX_RECORDS,
    KinesisBus,
    decode_item,
    encode_item,
    plan_requests,
)
from speedlayer.bus.memory import MemoryBus
from speedlayer.models import Bar, Candle
from tests.aws_hooks import Counter, FirstCalls, error_response
from tests.bus_helpers import T0, assert_quiet, bars, collect

TOPICS = [RAW_TOPIC, candle_topic("5m")]


def new_bus(kinesalite_url: str, dynalite_url: str, prefix: str, **kw: Any) -> KinesisBus:
    return KinesisBus(
        endpoint_url=kinesalite_url,
        dynamodb_endpoint_url=dynalite_url,
        stream_prefix=prefix,
        poll_interval_s=0.05,
        shard_refresh_s=0.5,
        retry_timeout_s=10,
        **kw,
    )


@pytest.fixture
def prefix() -> str:
    return f"k{uuid.uuid4().hex[:10]}-"


@pytest.fixture
async def bus(kinesalite_url: str, dynalite_url: str, prefix: str) -> AsyncIterator[KinesisBus]:
    async with new_bus(kinesalite_url, dynalite_url, prefix, shard_count=4) as b:
        await b.ensure_streams(TOPICS)
        yield b


async def eventually(
    fetch: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], within_s: float = 10
) -> None:
    for _ in range(int(within_s / 0.02)):
        if ok(await fetch()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def per_symbol(items: Sequence[Bar]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for bar in items:
        out.setdefault(bar.symbol, []).append(bar.t)
    return out


def test_records_are_flat_tagged_json_and_decode_back() -> None:
    bar = Bar("AAPL", T0, 0.1 + 0.2, 2.0 + 1e-9, 1e-7, 1.0, 3.0)  # floats that need all digits
    candle = Candle("AAPL", "5m", T0, 1.0, 2.0, 0.5, 1.5, 10.0, None, 3, 2, False, 4, 99)
    assert encode_item(bar).startswith(b'{"type":"bar","symbol":"AAPL","t":')
    assert encode_item(candle).startswith(b'{"type":"candle","symbol":"AAPL"')
    assert decode_item(encode_item(bar)) == bar
    assert decode_item(encode_item(candle)) == candle
    # rounds: one record per symbol per request, request size <= 500
    plan = plan_requests(bars([f"S{i}" for i in range(600)], range(3)))
    assert [len(r) for r in plan] == [500, 100] * 3
    assert all(len({k for k, _ in r}) == len(r) for r in plan)


async def test_memory_bus_accepts_a_consumer_name() -> None:
    bus = MemoryBus()
    sub = bus.subscribe([RAW_TOPIC], consumer="ignored")
    await bus.publish(RAW_TOPIC, [1])
    assert await sub.get() == (RAW_TOPIC, [1])


async def test_round_trip_bars_and_candles_in_per_symbol_order(bus: KinesisBus) -> None:
    sub = bus.subscribe(TOPICS, consumer="reader")
    symbols = [f"S{i:02}" for i in range(20)]
    sent = bars(symbols, range(30))
    for m in range(0, 30, 6):  # several publishes, each with 6 minutes per symbol
        await bus.publish(RAW_TOPIC, sent[m * 20 : (m + 6) * 20])
    candle = Candle("S01", "5m", T0, 1.0, 2.0, 0.5, 1.5, 10.0, 1.25, 3, 2, True, 4, 99)
    await bus.publish(candle_topic("5m"), [candle])
    got = await collect(sub, len(sent) + 1)
    await assert_quiet(sub)
    assert candle in got
    got_bars = [x for x in got if isinstance(x, Bar)]
    assert sorted(got_bars, key=lambda b: (b.symbol, b.t)) == sorted(
        sent, key=lambda b: (b.symbol, b.t)
    )
    assert per_symbol(got_bars) == per_symbol(sent)  # per-symbol order across 4 shards
    await bus.stop()
    assert sub.closed_reason == "bus stopped"


async def test_partial_put_failure_resends_only_failed_records(bus: KinesisBus) -> None:
    sub = bus.subscribe([RAW_TOPIC], consumer="reader")
    failed_first: list[int] = []

    def fail_some(parsed: dict[str, Any], **_: Any) -> None:
        if failed_first:
            return
        for i, record in enumerate(parsed["Records"]):
            if i % 3 == 0:  # the emulator did store it; we pretend it did not
                record.clear()
                record.update(ErrorCode="ProvisionedThroughputExceededException", ErrorMessage="x")
                failed_first.append(i)
        parsed["FailedRecordCount"] = len(failed_first)

    sizes = Counter()
    bus.kinesis.meta.events.register("after-call.kinesis.PutRecords", fail_some)
    bus.kinesis.meta.events.register("before-parameter-build.kinesis.PutRecords", sizes)
    symbols = [f"P{i:02}" for i in range(30)]
    sent = bars(symbols, range(3))
    await bus.publish(RAW_TOPIC, sent)
    assert sizes.sizes == [30, len(failed_first), 30, 30]  # round 1, its retry, rounds 2 and 3
    assert bus.records_retried == len(failed_first) == 10
    got = await collect(sub, len(sent) + len(failed_first))
    await assert_quiet(sub)
    # nothing lost; the only duplicates are the "failed" records, right next to themselves
    order = per_symbol(got)
    for symbol, times in order.items():
        deduped = [t for i, t in enumerate(times) if i == 0 or times[i - 1] != t]
        assert deduped == [T0, T0 + 60_000, T0 + 120_000], symbol
    assert sum(len(t) for t in order.values()) == len(sent) + len(failed_first)


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "ThrottlingException"])
async def test_throttled_put_records_are_retried(bus: KinesisBus, code: str) -> None:
    sub = bus.subscribe([RAW_TOPIC], consumer="reader")
    hook = FirstCalls(3, lambda p: error_response(code))
    bus.kinesis.meta.events.register("before-call.kinesis.PutRecords", hook)
    sent = bars(["A", "B"], range(5))
    await bus.publish(RAW_TOPIC, sent)
    assert hook.calls == 5 + 3
    got = await collect(sub, len(sent))
    await assert_quiet(sub)
    assert per_symbol(got) == per_symbol(sent)


async def test_consumer_resumes_from_its_checkpoint_after_restart(
    kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    symbols = [f"R{i:02}" for i in range(10)]
    first, second = bars(symbols, range(0, 5)), bars(symbols, range(5, 10))
    async with new_bus(kinesalite_url, dynalite_url, prefix, shard_count=2) as bus1:
        await bus1.ensure_streams([RAW_TOPIC])
        sub = bus1.subscribe([RAW_TOPIC], consumer="durable")
        await bus1.publish(RAW_TOPIC, first)
        assert per_symbol(await collect(sub, len(first))) == per_symbol(first)
        # checkpoints follow the hand-over
        await eventually(lambda: bus1.checkpoints("durable", RAW_TOPIC), lambda c: len(c) == 2)
    # stopped; more records arrive while no one reads
    async with new_bus(kinesalite_url, dynalite_url, prefix) as publisher:
        await publisher.publish(RAW_TOPIC, second)
        saved = await publisher.checkpoints("durable", RAW_TOPIC)
        assert len(saved) == 2 and all(seq.isdigit() for seq in saved.values())
    async with new_bus(kinesalite_url, dynalite_url, prefix) as bus2:
        resumed = bus2.subscribe([RAW_TOPIC], consumer="durable")
        fresh = bus2.subscribe([RAW_TOPIC], consumer="newcomer")  # starts "from now on"
        got = await collect(resumed, len(second))
        await assert_quiet(resumed)
        assert per_symbol(got) == per_symbol(second)  # exactly what was missed, in order
        await assert_quiet(fresh)


async def test_manual_commit_checkpoints_only_what_was_committed(
    kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    """A subscription with auto_commit off (the pipeline) is checkpointed by commit() only: what
    it was handed but did not commit before it died is delivered again to its successor."""
    symbols = [f"C{i:02}" for i in range(5)]
    first, second = bars(symbols, range(0, 3)), bars(symbols, range(3, 6))
    async with new_bus(kinesalite_url, dynalite_url, prefix) as bus1:
        await bus1.ensure_streams([RAW_TOPIC])
        sub = bus1.subscribe([RAW_TOPIC], consumer="pipeline")
        sub.auto_commit = False
        await bus1.publish(RAW_TOPIC, first)
        assert per_symbol(await collect(sub, len(first))) == per_symbol(first)
        await asyncio.sleep(0.3)  # the shard task went on polling: still no checkpoint
        assert await bus1.checkpoints("pipeline", RAW_TOPIC) == {}
        await sub.commit()
        committed = await bus1.checkpoints("pipeline", RAW_TOPIC)
        assert len(committed) == 1
        await bus1.publish(RAW_TOPIC, second)
        assert per_symbol(await collect(sub, len(second))) == per_symbol(second)
        # handed over, never committed: "the process dies" here
        assert await bus1.checkpoints("pipeline", RAW_TOPIC) == committed
    async with new_bus(kinesalite_url, dynalite_url, prefix) as bus2:
        again = bus2.subscribe([RAW_TOPIC], consumer="pipeline")
        again.auto_commit = False
        got = await collect(again, len(second))
        await assert_quiet(again)
        assert per_symbol(got) == per_symbol(second)
        await again.commit()
        assert await bus2.checkpoints("pipeline", RAW_TOPIC) != committed


async def test_trim_horizon_consumer_reads_what_was_published_before_it(
    kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    early = bars(["H1", "H2"], range(4))
    async with new_bus(kinesalite_url, dynalite_url, prefix) as publisher:
        await publisher.ensure_streams([RAW_TOPIC])
        await publisher.publish(RAW_TOPIC, early)
    bus = new_bus(kinesalite_url, dynalite_url, prefix, initial_position="TRIM_HORIZON")
    async with bus:
        sub = bus.subscribe([RAW_TOPIC], consumer="from-the-start")
        assert per_symbol(await collect(sub, len(early))) == per_symbol(early)
    with pytest.raises(ValueError, match="initial_position"):
        new_bus(kinesalite_url, dynalite_url, prefix, initial_position="EARLIEST")


async def test_closed_shard_end_is_committed_after_its_last_batch(
    kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    async with new_bus(kinesalite_url, dynalite_url, prefix, shard_count=1) as bus:
        await bus.ensure_streams([RAW_TOPIC])
        stream = bus.stream_name(RAW_TOPIC)
        sub = bus.subscribe([RAW_TOPIC], consumer="split-manual")
        sub.auto_commit = False
        before = bars(["Q1", "Q2"], range(3))
        await bus.publish(RAW_TOPIC, before)
        (parent,) = (await bus.kinesis.list_shards(StreamName=stream))["Shards"]
        await bus.kinesis.split_shard(
            StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(2**127)
        )
        await bus.ensure_streams([RAW_TOPIC])
        after = bars(["Q1", "Q2"], range(3, 6))
        await bus.publish(RAW_TOPIC, after)
        got = await collect(sub, len(before) + len(after))
        assert per_symbol(got) == per_symbol(before + after)
        assert await bus.checkpoints("split-manual", RAW_TOPIC) == {}
        await sub.commit()
        saved = await bus.checkpoints("split-manual", RAW_TOPIC)
        assert saved[parent["ShardId"]] == "SHARD_END"


async def test_expired_iterator_is_renewed_from_the_checkpoint(bus: KinesisBus) -> None:
    sub = bus.subscribe([RAW_TOPIC], consumer="reader")
    await bus.publish(RAW_TOPIC, bars(["E"], range(3)))
    assert len(await collect(sub, 3)) == 3
    hook = FirstCalls(1, lambda p: error_response("ExpiredIteratorException", "Iterator expired"))
    bus.kinesis.meta.events.register("before-call.kinesis.GetRecords", hook)
    await eventually(lambda: asyncio.sleep(0), lambda _: hook.calls > 0)
    await bus.publish(RAW_TOPIC, bars(["E"], range(3, 6)))
    got = await collect(sub, 3)
    await assert_quiet(sub)
    assert bus.expired_iterators == 1
    assert [b.t for b in got] == [T0 + m * 60_000 for m in range(3, 6)]  # no loss, no repeat


async def test_closed_parent_shard_is_read_before_its_children(
    kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    async with new_bus(kinesalite_url, dynalite_url, prefix, shard_count=1) as bus:
        await bus.ensure_streams([RAW_TOPIC])
        stream = bus.stream_name(RAW_TOPIC)
        sub = bus.subscribe([RAW_TOPIC], consumer="split")
        symbols = [f"Z{i:02}" for i in range(8)]
        before = bars(symbols, range(0, 4))
        await bus.publish(RAW_TOPIC, before)
        (parent,) = (await bus.kinesis.list_shards(StreamName=stream))["Shards"]
        await bus.kinesis.split_shard(
            StreamName=stream,
            ShardToSplit=parent["ShardId"],
            NewStartingHashKey=str(2**127),
        )
        await bus.ensure_streams([RAW_TOPIC])  # waits until ACTIVE again
        after = bars(symbols, range(4, 8))
        await bus.publish(RAW_TOPIC, after)
        got = await collect(sub, len(before) + len(after))
        await assert_quiet(sub)
        assert per_symbol(got) == per_symbol(before + after)
        saved = await bus.checkpoints("split", RAW_TOPIC)
        assert saved[parent["ShardId"]] == "SHARD_END"
        assert len(saved) == 3


async def test_measure_publish_rate(bus: KinesisBus, capsys: pytest.CaptureFixture[str]) -> None:
    sub = bus.subscribe([RAW_TOPIC], consumer="bench", maxsize=100_000)
    sent = bars([f"M{i:03}" for i in range(MAX_RECORDS)], range(10))
    started = time.perf_counter()
    await bus.publish(RAW_TOPIC, sent)
    put_s = time.perf_counter() - started
    await collect(sub, len(sent), within_s=60)
    total_s = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n[kinesalite] PutRecords {len(sent) / put_s:,.0f} records/s; publish -> "
            f"subscriber {len(sent) / total_s:,.0f} records/s (4 shards)"
        )


# -- broadcast readers (consumer=None), as the API's live hub uses ----------------------------


async def checkpoint_leases(bus: KinesisBus, prefix: str) -> list[str]:
    """The leases in the checkpoint table that name a stream of this test (its prefix)."""
    leases: list[str] = []
    kwargs: dict[str, Any] = {"TableName": bus.checkpoint_table, "ConsistentRead": True}
    while True:
        page = await bus.dynamodb.scan(**kwargs)
        leases += [item["lease"]["S"] for item in page["Items"] if prefix in item["lease"]["S"]]
        if not page.get("LastEvaluatedKey"):
            return leases
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def test_broadcast_readers_in_two_processes_each_get_every_record(
    bus: KinesisBus, kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    """Two buses (two API replicas) read a 4-shard stream without a consumer name: each gets
    every record in per-symbol order, and neither writes a checkpoint."""
    symbols = [f"B{i:02}" for i in range(24)]
    sent = bars(symbols, range(3))
    async with new_bus(kinesalite_url, dynalite_url, prefix) as other:
        subs = [
            bus.subscribe([RAW_TOPIC], consumer=None),
            other.subscribe([RAW_TOPIC], consumer=None),
        ]
        assert not any(sub.durable for sub in subs)
        assert await asyncio.wait_for(subs[1].wait_started(), 20)  # `bus` publishes, not `other`
        await bus.publish(RAW_TOPIC, sent)
        for sub in subs:
            got = await collect(sub, len(sent))
            assert per_symbol(got) == per_symbol(sent)
            await assert_quiet(sub)
        assert bus.checkpoints_written == other.checkpoints_written == 0
    assert await checkpoint_leases(bus, prefix) == []


async def test_broadcast_starts_from_now_whatever_the_initial_position(
    kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    early = bars(["N1", "N2"], range(3))
    async with new_bus(kinesalite_url, dynalite_url, prefix, shard_count=2) as publisher:
        await publisher.ensure_streams([RAW_TOPIC])
        await publisher.publish(RAW_TOPIC, early)
    bus = new_bus(kinesalite_url, dynalite_url, prefix, initial_position="TRIM_HORIZON")
    async with bus:
        sub = bus.subscribe([RAW_TOPIC], consumer=None)
        sub.auto_commit = False
        later = bars(["N1", "N2"], range(3, 6))
        await bus.publish(RAW_TOPIC, later)  # waits until the readers hold their iterators
        assert per_symbol(await collect(sub, len(later))) == per_symbol(later)
        await sub.commit()  # nothing to commit
        await assert_quiet(sub)
        assert bus.checkpoints_written == 0
        assert await checkpoint_leases(bus, prefix) == []


async def test_broadcast_follows_a_split_without_checkpoints(
    kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    async with new_bus(kinesalite_url, dynalite_url, prefix, shard_count=1) as bus:
        await bus.ensure_streams([RAW_TOPIC])
        stream = bus.stream_name(RAW_TOPIC)
        sub = bus.subscribe([RAW_TOPIC], consumer=None)
        symbols = [f"Y{i:02}" for i in range(8)]
        before = bars(symbols, range(0, 4))
        await bus.publish(RAW_TOPIC, before)
        (parent,) = (await bus.kinesis.list_shards(StreamName=stream))["Shards"]
        await bus.kinesis.split_shard(
            StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(2**127)
        )
        await bus.ensure_streams([RAW_TOPIC])  # waits until ACTIVE again
        after = bars(symbols, range(4, 8))
        await bus.publish(RAW_TOPIC, after)  # into the children, read from their beginning
        got = await collect(sub, len(before) + len(after))
        await assert_quiet(sub)
        assert per_symbol(got) == per_symbol(before + after)
        assert bus.checkpoints_written == 0
        assert await checkpoint_leases(bus, prefix) == []


async def test_broadcast_on_a_resharded_stream_starts_at_the_end_of_the_open_shards(
    kinesalite_url: str, dynalite_url: str, prefix: str
) -> None:
    """The closed parent is skipped and its open children are read from LATEST: nothing written
    before the subscription comes back, neither from the parent nor from the children."""
    async with new_bus(kinesalite_url, dynalite_url, prefix, shard_count=1) as bus:
        await bus.ensure_streams([RAW_TOPIC])
        stream = bus.stream_name(RAW_TOPIC)
        symbols = [f"W{i:02}" for i in range(8)]
        await bus.publish(RAW_TOPIC, bars(symbols, range(0, 2)))
        (parent,) = (await bus.kinesis.list_shards(StreamName=stream))["Shards"]
        await bus.kinesis.split_shard(
            StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(2**127)
        )
        await bus.ensure_streams([RAW_TOPIC])
        await bus.publish(RAW_TOPIC, bars(symbols, range(2, 4)))  # into the children
        sub = bus.subscribe([RAW_TOPIC], consumer=None)
        later = bars(symbols, range(4, 6))
        await bus.publish(RAW_TOPIC, later)
        got = await collect(sub, len(later))
        await assert_quiet(sub)
        assert per_symbol(got) == per_symbol(later)
