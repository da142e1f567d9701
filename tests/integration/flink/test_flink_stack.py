"""The distributed stack on Flink, as separate services over a real Kafka broker:

    simulator -> speedlayer ingest -> market-data-raw -> speedlayer flink run -> candle topics
              -> speedlayer sink -> SQLite -> speedlayer api (REST; WebSocket from the topics)

gives, through REST and the WebSocket, the candles `speedlayer replay` makes of the bars the
simulator served (the embedded path), apart from what docs/flink.md documents: revisions, and
the last buckets, which stay forming until a later bar moves the watermark past them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec
import pytest

from speedlayer.clock import SystemClock
from speedlayer.models import Candle
from speedlayer.store.sqlite import SQLiteStore
from tests.conftest import ApiServer
from tests.flink_helpers import CandleKey
from tests.integration.aws.test_aws_path import (
    INTERVALS,
    LIVE_INTERVALS,
    LIVE_SYMBOL,
    Service,
    all_candles,
    api_candles,
    live_client,
    reference,
    release,
    replay_finished,
    services,
    simulator,
    until,
    write_input,
)
from tests.integration.flink.test_flink_kafka import kafka_env, publish, stored

__all__ = ["services"]  # the fixture
pytestmark = pytest.mark.timeout(600)


async def test_flink_stack_serves_the_candles_of_the_embedded_path(
    tmp_path: Path,
    realbars: Path,
    flink_ready: None,
    kafka_bootstrap: str,
    services: list[Service],
) -> None:
    replay, first_minute = write_input(realbars, tmp_path / "input.csv")
    env = {**kafka_env(kafka_bootstrap, tmp_path), "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "0"}
    await publish(env, [])  # the topics, before the job subscribes to them
    db = tmp_path / "flink.db"
    job = Service("flink", ["flink", "run", "--work-dir", str(tmp_path / "work")], env, tmp_path)
    sink = Service("sink", ["sink", "--db", str(db)], env, tmp_path)
    services.extend([job.start(), sink.start()])
    api = ApiServer(db, env)
    await asyncio.to_thread(api.start)
    try:
        await until(lambda: '"event": "running"' in job.text(), 120, every_s=0.5)
        async with simulator(replay, first_minute) as sim, live_client(api.url) as live:
            feed = ["ingest", "--simulator", f"127.0.0.1:{sim.port}"]
            ingest = Service("ingest", feed, env, tmp_path).start()
            services.append(ingest)
            await release(sim, first_minute)
            served = await replay_finished(sim)
            symbols = sorted({symbol for symbol, _ in served})
            started = time.monotonic()
            deadline = started + 120
            before: dict[CandleKey, Candle] = {}
            while True:  # every candle stored, and nothing changed for 2 s
                now = await stored(db, set(symbols))
                if len(now) == count_candles(served) and now == before:
                    break
                for service in (job, sink, ingest):
                    service.alive()
                assert time.monotonic() < deadline, "the stack did not store every candle"
                before = now
                await asyncio.sleep(2)
            path_s = time.monotonic() - started - 2
            await until(lambda: live.quiet_for(2.0), 60)
        got = await asyncio.to_thread(api_candles, api.url, symbols)
    finally:
        api.stop()
    # The job too: killed (the fixture's cleanup), the CLI would leave it running.
    assert ingest.stop() == 0 and sink.stop() == 0 and job.stop() == 0
    for service in (ingest, job, sink):
        assert "Traceback" not in service.text(), service.text()

    async with SQLiteStore(await reference(served, tmp_path), INTERVALS, SystemClock()) as ref:
        embedded = await all_candles(ref, symbols)
    async with SQLiteStore(db, INTERVALS, SystemClock()) as store:
        distributed = await all_candles(store, symbols)
    last_minute = max(t for _, t in served)
    for interval in INTERVALS:
        want = embedded[interval.name]
        assert want and len(distributed[interval.name]) == len(want), interval.name
        for g, w in zip(distributed[interval.name], want, strict=True):
            assert g == msgspec.structs.replace(w, revision=g.revision, final=g.final), (g, w)
            # Final once a later minute's bar has moved the watermark past the bucket.
            assert g.final == (g.timestamp + interval.interval_ms <= last_minute), g

    # Through the API: REST equals the store, and the WebSocket client's last update of each
    # candle is the stored candle.
    assert {key: len(rows) for key, rows in got.items()} == {
        (symbol, iv.name): len([c for c in distributed[iv.name] if c.symbol == symbol])
        for symbol in symbols
        for iv in INTERVALS
    }
    for name in LIVE_INTERVALS:
        assert live.latest(name) == got[(LIVE_SYMBOL, name)], name
    print(f"\n[flink stack] {len(served)} bars, {len(symbols)} symbols: all stored "
          f"{path_s:.1f} s after the simulator's last bar; {live.count} live updates of "
          f"{LIVE_SYMBOL}")  # fmt: skip


def count_candles(served: Iterable[tuple[str, int]]) -> int:
    """How many candles the served bars make over every interval."""
    return sum(
        len({(symbol, t - t % interval.interval_ms) for symbol, t in served})
        for interval in INTERVALS
    )
