"""The AWS path end to end against dynalite and kinesalite servers started by the test run.

simulator (WebSocket) -> ``speedlayer ingest --bus kinesis`` -> Kinesis ``market-data-raw`` ->
``speedlayer process --bus kinesis --store dynamodb`` -> DynamoDB -> ``speedlayer api --store
dynamodb`` (uvicorn), each a real process, must give exactly the candles of the embedded path
(``speedlayer replay`` into SQLite) on the same input, field by field, in every interval: compared
store against store and API response against API response.

Input: the first ``DATA_MINUTES`` minutes of real bars (``realbars/eqker_2019``, 24 US tickers),
replayed by the in-process Polygon simulator at ``SPEED`` simulated minutes per second. The
simulator's clock starts ``LEAD_MINUTES`` before the data, far enough that the ingest process is
always subscribed before the first bar; once it is, the test moves the clock to just before the
data (``release``), so no run waits longer than it must. The reference is built from
``served()`` (the bars as the WebSocket carried them: no trade counts), after the replay ended.

Why every field can be compared: the data is from 2019 and the services run on the wall clock, so
in both paths every bucket is final from its first bar on and ``revision`` counts the bars that
changed it (no duplicates or corrections in this input) whatever the batching; ``ttl`` comes from
event time (retention ``*=100y`` keeps 2019 alive). The one exception is the kill -9 test: a
process killed after writing some candles of a batch but before its 1-minute rows (the store
writes the 1-minute table last) reprocesses that batch after the restart, and the candles it had
already written count that change twice: there ``revision`` may be higher than the reference's,
never lower, and every other field must be equal.

Also here: faults injected at the clients of the same path run in-process (PutRecords partial
failures and throttling, BatchWriteItem UnprocessedItems and throttling, throttled revision reads,
GetRecords and checkpoint writes) lose nothing; and both emulators restarted with their data
directories after ``kill -9`` keep tables, items, stream records and checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect

from ingest.simulator import PolygonSimulator, SimulatorConfig
from launch.wiring import FeedTarget, start_feed, start_runner
from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.backends import dynamodb_store, kinesis_bus
from speedlayer.bus.base import RAW_TOPIC
from speedlayer.bus.kinesis import KinesisBus
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import MINUTE_MS, Bar, Candle
from speedlayer.store.base import Store
from speedlayer.store.dynamodb import DynamoDBStore
from speedlayer.store.sqlite import SQLiteStore
from tests.aws_hooks import Counter, FailSomeRecords, FirstCalls, PartlyUnprocessed, error_response
from tests.conftest import (
    SPEEDLAYER,
    ApiServer,
    dynalite_command,
    free_port,
    kinesalite_command,
    run_cli,
    start_emulator,
    stop_by_sigterm,
    stop_process,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

INTERVALS = IntervalSet(DEFAULT_INTERVALS)
DATA_MINUTES = 120
SPEED = 20.0  # simulated minutes per wall second: the data streams for 6 s
LEAD_MINUTES = int(SPEED * 90)  # 90 s of empty minutes unless released earlier
CONSUMER = "speedlayer-processor"


# -- input ----------------------------------------------------------------------------------------


def write_input(realbars: Path, path: Path) -> tuple[Path, int]:
    """The first DATA_MINUTES minutes of eqker_2019 as replay CSV; returns (path, first minute)."""
    with (realbars / "eqker_2019" / "bars_1m.csv").open() as f:
        rows = list(csv.DictReader(f))
    first = min(int(row["t"]) for row in rows)
    keep = [row for row in rows if int(row["t"]) < first + DATA_MINUTES * MINUTE_MS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    return path, first


def write_bars(bars: list[Bar], path: Path) -> Path:
    """Bars as replay CSV with exact numbers (``repr``), absent vw/n left empty."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["symbol", "t", "o", "h", "l", "c", "v", "vw", "n"])
        for b in bars:
            prices = [repr(x) for x in (b.o, b.h, b.l, b.c, b.v)]
            vw = "" if b.vw is None else repr(b.vw)
            writer.writerow([b.symbol, b.t, *prices, vw, "" if b.n is None else b.n])
    return path


def simulator(replay: Path, first_minute: int) -> PolygonSimulator:
    return PolygonSimulator(
        SimulatorConfig(
            host="127.0.0.1",
            port=0,
            speed=SPEED,
            replay=[str(replay)],
            start_ms=first_minute - LEAD_MINUTES * MINUTE_MS,
        )
    )


async def until(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(every_s)


async def release(sim: PolygonSimulator, first_minute: int, timeout_s: float = 60) -> None:
    """Once a client is subscribed, move the simulated clock to just before the data."""
    await until(lambda: sim.stats.auth_successes >= 1, timeout_s)
    await asyncio.sleep(0.5)  # the subscribe message follows auth at once
    assert sim.stats.bars_emitted == 0, "the data started before the ingest was subscribed"
    sim.clock.anchor(first_minute - MINUTE_MS)


async def replay_finished(
    sim: PolygonSimulator, timeout_s: float = 60
) -> dict[tuple[str, int], Bar]:
    await until(lambda: sim.finished, timeout_s)
    served = sim.served()
    assert served and sim.stats.events_sent == sim.stats.bars_emitted == len(served)
    return served


# -- the AWS side ---------------------------------------------------------------------------------


class Aws:
    """Endpoints and per-test names (tables, streams, checkpoint table) for the services."""

    def __init__(self, dynalite_url: str, kinesalite_url: str) -> None:
        prefix = f"a{uuid.uuid4().hex[:10]}"
        self.env = {
            "SPEEDLAYER_DYNAMODB_ENDPOINT_URL": dynalite_url,
            "SPEEDLAYER_KINESIS_ENDPOINT_URL": kinesalite_url,
            "SPEEDLAYER_DYNAMODB_TABLE_PREFIX": f"{prefix}_",
            "SPEEDLAYER_KINESIS_STREAM_PREFIX": f"{prefix}-",
            "SPEEDLAYER_KINESIS_CHECKPOINT_TABLE": f"{prefix}_checkpoints",
            "SPEEDLAYER_KINESIS_POLL_INTERVAL_S": "0.05",
            "SPEEDLAYER_RETENTION": "*=100y",
            "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "0",
            "SPEEDLAYER_STATS_INTERVAL_S": "1",
            "SPEEDLAYER_LOG_LEVEL": "info",
        }

    def settings(self) -> Settings:
        """The services' settings, as their environment gives them."""
        given: dict[str, Any] = {
            key.removeprefix("SPEEDLAYER_").lower(): value for key, value in self.env.items()
        }
        return Settings(**given)

    def store(self) -> DynamoDBStore:
        return dynamodb_store(self.settings(), SystemClock())

    def bus(self) -> KinesisBus:
        return kinesis_bus(self.settings())


@pytest.fixture
def aws(dynalite_url: str, kinesalite_url: str) -> Aws:
    return Aws(dynalite_url, kinesalite_url)


class Service:
    """A ``speedlayer`` command as a subprocess, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **env}
        self.log = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [SPEEDLAYER, *self.args], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, (
            f"{self.name} exited early:\n{self.text()}"
        )

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM (a clean shutdown); the exit code."""
        assert self.proc is not None
        return stop_by_sigterm(self.proc, lambda: f"{self.name} ignored SIGTERM:\n{self.text()}")

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.cleanup()


async def count_items(store: DynamoDBStore, interval: str) -> int:
    total, kwargs = 0, {"TableName": store.tables[interval], "Select": "COUNT"}
    while True:
        page = await store.client.scan(**kwargs)
        total += int(page["Count"])
        if not page.get("LastEvaluatedKey"):
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def wait_for_items(
    store: DynamoDBStore, n: int, watch: list[Service], timeout_s: float = 60
) -> None:
    """Until the 1-minute table holds ``n`` items."""
    deadline = time.monotonic() + timeout_s
    while (count := await count_items(store, "1m")) < n:
        for service in watch:
            service.alive()
        assert time.monotonic() < deadline, f"{count} of {n} bars stored in {timeout_s} s"
        await asyncio.sleep(0.2)
    assert count == n


# -- comparing ------------------------------------------------------------------------------------


async def all_candles(store: Store, symbols: list[str]) -> dict[str, list[Candle]]:
    return {
        iv.name: [c for symbol in symbols for c in await store.query(symbol, iv)]
        for iv in INTERVALS
    }


async def reference(served: dict[tuple[str, int], Bar], tmp_path: Path) -> Path:
    """The embedded path: ``speedlayer replay`` of the served bars into SQLite."""
    bars = sorted(served.values(), key=lambda b: (b.t, b.symbol))
    source = write_bars(bars, tmp_path / "served.csv")
    db = tmp_path / "embedded.db"
    run_cli("replay", str(source), "--db", str(db), "--retention", "*=100y")
    return db


async def assert_replay_gives(
    distributed: dict[str, list[Candle]], served: dict[tuple[str, int], Bar], tmp_path: Path
) -> None:
    """``distributed`` equals the candles ``speedlayer replay`` makes of ``served``, up to
    revisions: a batch read again after a crash or failure may count a revision twice, never
    fewer (see the module docstring)."""
    symbols = sorted({symbol for symbol, _ in served})
    async with SQLiteStore(await reference(served, tmp_path), INTERVALS, SystemClock()) as ref:
        embedded = await all_candles(ref, symbols)
    for iv in INTERVALS:
        got, want = distributed[iv.name], embedded[iv.name]
        assert [(c.symbol, c.timestamp) for c in got] == [(c.symbol, c.timestamp) for c in want]
        for g, w in zip(got, want, strict=True):
            assert g.revision >= w.revision, (g, w)
            assert g == msgspec.structs.replace(w, revision=g.revision), (g, w)


def api_candles(url: str, symbols: list[str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for symbol in symbols:
            for iv in INTERVALS:
                page = client.get(
                    f"/candles/{symbol}", params={"interval": iv.name, "limit": 10_000}
                )
                assert page.status_code == 200, page.text
                body = page.json()
                assert body["next_cursor"] is None
                out[(symbol, iv.name)] = body["candles"]
    return out


def test_init_aws_shows_its_progress_on_stderr_and_nothing_when_quiet(aws: Aws) -> None:
    env = {**aws.env, "SPEEDLAYER_STATS_INTERVAL_S": "0.001"}  # a line at every step
    first = run_cli("init-aws", env=env)
    log_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) [\w.]+: .+$")
    lines = first.stderr.splitlines()
    assert lines and all(log_line.match(line) for line in lines), first.stderr
    progress = [line for line in lines if " speedlayer.progress: init-aws: " in line]
    total = len(INTERVALS) + 1 + 1 + len(INTERVALS)  # tables, checkpoints, raw + candle streams
    assert any(f"of {total} resources" in line and "streams" in line for line in progress)
    assert f"init-aws: {total} of {total} resources (100%), ready, done in" in progress[-1]
    quiet = run_cli("init-aws", "--quiet", env=env)
    assert quiet.stderr == "" and quiet.stdout == first.stdout


# -- the full path --------------------------------------------------------------------------------


async def test_full_aws_path_gives_the_candles_of_the_embedded_path(
    tmp_path: Path, realbars: Path, aws: Aws, services: list[Service]
) -> None:
    replay, first_minute = write_input(realbars, tmp_path / "input.csv")
    created = run_cli("init-aws", env=aws.env).stdout
    assert created.count("ACTIVE") == 1 + len(INTERVALS) and "ohlcv_4h: ready" in created
    assert run_cli("init-aws", env=aws.env).stdout == created  # idempotent

    process = Service("process", ["process", "--bus", "kinesis", "--store", "dynamodb"],
                      aws.env, tmp_path).start()  # fmt: skip
    services.append(process)
    quiet = {"SPEEDLAYER_LOG_LEVEL": "warning"}
    # `speedlayer api --store dynamodb --bus kinesis`: REST from DynamoDB, live from the candle
    # streams that the separate processor writes
    live_env = {**aws.env, "SPEEDLAYER_STORE": "dynamodb", "SPEEDLAYER_BUS": "kinesis", **quiet}
    dynamo_api = ApiServer(tmp_path / "unused.db", live_env)
    started = time.monotonic()
    try:
        await asyncio.to_thread(dynamo_api.start)
        async with simulator(replay, first_minute) as sim, live_client(dynamo_api.url) as live:
            feed = ["ingest", "--bus", "kinesis", "--simulator", f"127.0.0.1:{sim.port}"]
            ingest = Service("ingest", feed, aws.env, tmp_path).start()
            services.append(ingest)
            await release(sim, first_minute)
            served = await replay_finished(sim)
            symbols = sorted({symbol for symbol, _ in served})
            async with aws.store() as store:
                await wait_for_items(store, len(served), [process, ingest])
                await asyncio.sleep(1.0)  # nothing more arrives
                assert await count_items(store, "1m") == len(served)
                distributed = await all_candles(store, symbols)
            path_s = time.monotonic() - started
            await until(lambda: live.quiet_for(1.0), 30)
        got = await asyncio.to_thread(api_candles, dynamo_api.url, symbols)
    finally:
        dynamo_api.stop()
    assert ingest.stop() == 0 and process.stop() == 0
    for service in (ingest, process):
        assert "Traceback" not in service.text(), service.text()
    assert f"{len(served)} bars published" in ingest.text()

    db = await reference(served, tmp_path)
    async with SQLiteStore(db, INTERVALS, SystemClock()) as embedded_store:
        embedded = await all_candles(embedded_store, symbols)
    for iv in INTERVALS:
        assert embedded[iv.name], iv.name
        assert distributed[iv.name] == embedded[iv.name], f"{iv.name} candles differ"
    assert sum(c.bars for c in distributed["4h"]) == len(served)
    assert all(c.final and c.revision == c.bars for cs in distributed.values() for c in cs)

    # ... and through the API: `speedlayer api --store dynamodb` against `speedlayer api --db`
    sqlite_api = ApiServer(db, quiet)
    try:
        sqlite_api.start()
        want = api_candles(sqlite_api.url, symbols)
    finally:
        sqlite_api.stop()
    assert got == want
    assert sum(len(v) for v in got.values()) == sum(len(v) for v in embedded.values())

    # ... and live: the WebSocket client got every candle of its pairs, revisions increasing
    # (one update per candle per processed batch), the last update equal to the stored candle
    for interval in LIVE_INTERVALS:
        assert live.latest(interval) == got[(LIVE_SYMBOL, interval)], interval
        revisions = live.revisions(interval)
        assert all(r == sorted(set(r)) for r in revisions.values()), revisions
    print(f"\n[aws path] {len(served)} bars, {len(symbols)} symbols: simulator -> ingest -> "
          f"Kinesis -> process -> DynamoDB in {path_s:.1f} s; {live.count} live updates of "
          f"{LIVE_SYMBOL} over the candle streams")  # fmt: skip


LIVE_SYMBOL = "AAPL"
LIVE_INTERVALS = ("1m", "1h")


class LiveClient:
    """A /ws subscriber of LIVE_SYMBOL x LIVE_INTERVALS (no snapshot: updates only)."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.last_at = time.monotonic()

    @property
    def count(self) -> int:
        return len(self.updates)

    def quiet_for(self, seconds: float) -> bool:
        return bool(self.updates) and time.monotonic() - self.last_at > seconds

    def latest(self, interval: str) -> list[dict[str, Any]]:
        """The last update of each candle, oldest candle first, as REST shows candles."""
        last: dict[int, dict[str, Any]] = {}
        for update in self.updates:
            if update["interval"] == interval:
                last[update["timestamp"]] = {
                    k: v for k, v in update.items() if k not in ("type", "seq")
                }
        return [last[t] for t in sorted(last)]

    def revisions(self, interval: str) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for update in self.updates:
            if update["interval"] == interval:
                out.setdefault(update["timestamp"], []).append(update["revision"])
        return out


@contextlib.asynccontextmanager
async def live_client(api_url: str) -> AsyncIterator[LiveClient]:
    client = LiveClient()
    url = api_url.replace("http://", "ws://") + "/ws"
    async with connect(url, open_timeout=10) as ws:
        await ws.send(json.dumps({"action": "subscribe", "symbols": [LIVE_SYMBOL],
                                  "intervals": list(LIVE_INTERVALS), "snapshot": 0}))  # fmt: skip
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "subscribed", ack

        async def read() -> None:
            async for message in ws:
                event = json.loads(message)
                assert event["type"] == "candle", event
                client.updates.append(event)
                client.last_at = time.monotonic()

        reader = asyncio.create_task(read())
        try:
            yield client
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def test_killed_processor_resumes_from_its_checkpoint_and_converges(
    tmp_path: Path, realbars: Path, aws: Aws, services: list[Service]
) -> None:
    replay, first_minute = write_input(realbars, tmp_path / "input.csv")
    run_cli("init-aws", env=aws.env)
    args = ["process", "--bus", "kinesis", "--store", "dynamodb"]
    process = Service("process", args, aws.env, tmp_path).start()
    services.append(process)
    async with simulator(replay, first_minute) as sim, aws.store() as store, aws.bus() as bus:
        feed = ["ingest", "--bus", "kinesis", "--simulator", f"127.0.0.1:{sim.port}"]
        ingest = Service("ingest", feed, aws.env, tmp_path).start()
        services.append(ingest)
        await release(sim, first_minute)
        # kill -9 mid-stream: once the processor has stored a quarter of the bars (and so has
        # committed a position)
        with replay.open() as f:
            quarter = (sum(1 for _ in f) - 1) // 4
        async with asyncio.timeout(30):
            while await count_items(store, "1m") < quarter:
                process.alive()
                await asyncio.sleep(0.02)
        process.kill9()
        stored_at_kill = await count_items(store, "1m")
        assert await bus.checkpoints(CONSUMER, RAW_TOPIC)
        await asyncio.sleep(1.0)  # the ingest goes on writing to Kinesis meanwhile
        restarted = Service("process-2", args, aws.env, tmp_path).start()
        services.append(restarted)
        served = await replay_finished(sim)
        assert stored_at_kill < len(served)
        await wait_for_items(store, len(served), [restarted, ingest])
        await asyncio.sleep(1.0)
        symbols = sorted({symbol for symbol, _ in served})
        distributed = await all_candles(store, symbols)
    assert restarted.stop() == 0 and ingest.stop() == 0
    log = restarted.text()
    assert "resumes after its checkpoints" in log, log
    found = re.search(r"process: (\d+) bars in", log)
    assert found, log
    bars_in = int(found.group(1))
    assert 0 < bars_in < len(served), "the restart re-read the stream from its start"

    await assert_replay_gives(distributed, served, tmp_path)
    print(f"\n[aws path] processor killed with {stored_at_kill}/{len(served)} bars stored; the "
          f"restart read {bars_in} bars from its checkpoint")  # fmt: skip


def test_replay_and_candles_take_the_dynamodb_store(
    tmp_path: Path, realbars: Path, aws: Aws
) -> None:
    replay, _ = write_input(realbars, tmp_path / "input.csv")
    db = tmp_path / "embedded.db"
    first = run_cli("replay", str(replay), "--store", "dynamodb", "--retention", "*=100y",
                    "--json", env=aws.env)  # fmt: skip
    run_cli("replay", str(replay), "--db", str(db), "--retention", "*=100y")
    summary = json.loads(first.stdout)
    assert summary["accepted"] == summary["bars_read"] > 0 and summary["rows_written"] > 0
    for interval in ("1m", "15m", "4h"):
        common = ["candles", "AAPL", "--interval", interval, "--format", "json"]
        dynamo = run_cli(*common, "--store", "dynamodb", env=aws.env).stdout
        assert json.loads(dynamo), interval
        assert dynamo == run_cli(*common, "--db", str(db)).stdout, interval
    again = run_cli("replay", str(replay), "--store", "dynamodb", "--retention", "*=100y",
                    "--json", env=aws.env)  # fmt: skip
    assert json.loads(again.stdout)["rows_written"] == 0  # a replay of the same bars: no change


def test_up_runs_everything_in_one_process_over_kinesis_and_dynamodb(
    tmp_path: Path, aws: Aws, services: list[Service]
) -> None:
    """`speedlayer up --bus kinesis --store dynamodb`: simulator, ingest, pipeline, API and live
    feed in one process; bars and candle updates travel through kinesalite, candles are stored in
    dynalite, and a WebSocket client gets live updates."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["up", "--bus", "kinesis", "--store", "dynamodb", "--port", str(port),
            "--symbols", "5", "--speed", "10"]  # fmt: skip
    up = Service("up", args, {**aws.env, "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "10"}, tmp_path)
    services.append(up.start())

    async def live_update() -> dict[str, Any]:
        async with connect(url.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
            await ws.send(json.dumps({"action": "subscribe", "symbols": ["AAPL"],
                                      "intervals": ["1m", "5m"], "snapshot": 1}))  # fmt: skip
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if event["type"] == "candle":
                    return dict(event)

    with httpx.Client(base_url=url, timeout=5) as client:
        deadline = time.monotonic() + 60
        while True:
            up.alive()
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in time\n" + up.text()
            time.sleep(0.2)
        update = asyncio.run(live_update())
        assert update["symbol"] == "AAPL" and update["interval"] in ("1m", "5m")
        deadline = time.monotonic() + 30
        while True:  # the start-up backfill and the live minutes, in DynamoDB
            stored = client.get("/candles/AAPL", params={"interval": "1m"}).json()["candles"]
            if len(stored) >= 20:
                break
            up.alive()
            assert time.monotonic() < deadline, f"{len(stored)} 1m candles\n{up.text()}"
            time.sleep(0.2)

    async def stored_count() -> int:
        async with aws.store() as store:
            return await count_items(store, "1m")

    assert asyncio.run(stored_count()) >= 5 * 20
    up.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
    assert up.proc.wait(timeout=20) == 0, up.text()  # type: ignore[union-attr]
    assert "Traceback" not in up.text(), up.text()
    assert "backends: bus kinesis, store dynamodb" in up.text()


# -- faults injected at the clients ---------------------------------------------------------------


async def test_injected_aws_faults_on_the_ingest_and_process_path_lose_nothing(
    tmp_path: Path, realbars: Path, aws: Aws
) -> None:
    """The same path in-process (launch.wiring's start_feed / start_runner, the services' own
    parts), with botocore hooks on each client: nothing lost, nothing counted twice."""
    replay, first_minute = write_input(realbars, tmp_path / "input.csv")
    settings = aws.settings()
    clock = SystemClock()
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(simulator(replay, first_minute))
        ingest_bus = await stack.enter_async_context(aws.bus())
        await ingest_bus.ensure()
        put_failures = FailSomeRecords(6, every=2)
        put_throttles = FirstCalls(3, lambda p: error_response("ThrottlingException"))
        events = ingest_bus.kinesis.meta.events
        events.register("before-call.kinesis.PutRecords", put_throttles)
        events.register("after-call.kinesis.PutRecords", put_failures)

        process_bus = await stack.enter_async_context(kinesis_bus(settings, "TRIM_HORIZON"))
        reads = FirstCalls(3, lambda p: error_response("ProvisionedThroughputExceededException"))
        process_bus.kinesis.meta.events.register("before-call.kinesis.GetRecords", reads)
        checkpoint_throttles = FirstCalls(2, lambda p: error_response("ThrottlingException"))
        process_bus.dynamodb.meta.events.register(
            "before-call.dynamodb.PutItem", checkpoint_throttles
        )

        store = await stack.enter_async_context(aws.store())
        events = store.client.meta.events
        writes = Counter()  # first: it sees every call
        events.register("before-call.dynamodb.BatchWriteItem", writes)
        write_throttles = FirstCalls(2, lambda p: error_response("ThrottlingException"))
        events.register("before-call.dynamodb.BatchWriteItem", write_throttles)
        partly = PartlyUnprocessed(8, every=3)
        events.register("before-call.dynamodb.BatchWriteItem", partly.before)
        events.register("after-call.dynamodb.BatchWriteItem", partly.after)
        get_throttles = FirstCalls(2, lambda p: error_response("RequestLimitExceeded"))
        events.register("before-call.dynamodb.BatchGetItem", get_throttles)

        runner = await start_runner(stack, settings, store, process_bus, clock)
        target = FeedTarget(clock=clock, api_key="k", ws_url=sim.ws_url, rest_url=sim.rest_url,
                            market="stocks", symbols=["*"])  # fmt: skip
        feed = await start_feed(stack, settings, target, ingest_bus)
        await feed.wait_connected(timeout=20)
        await release(sim, first_minute)
        served = await replay_finished(sim)
        async with asyncio.timeout(60):
            while await count_items(store, "1m") < len(served):
                assert not runner.failed.is_set(), runner.failure
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        symbols = sorted({symbol for symbol, _ in served})
        distributed = await all_candles(store, symbols)
        assert not runner.failed.is_set()

    assert put_failures.injected == 6 and ingest_bus.records_retried == put_failures.failed_records
    assert put_throttles.calls > 3 and reads.calls > 3 and checkpoint_throttles.calls > 2
    assert partly.injected == 8 and write_throttles.calls > 2 and get_throttles.calls > 2
    # the embedded path on the same bars, in-process
    async with SQLiteStore(tmp_path / "ref.db", IntervalSet(DEFAULT_INTERVALS, {"*": "100y"}),
                           clock) as ref:  # fmt: skip
        pipeline = CandlePipeline(Resampler(ref.intervals, clock), ref)
        await pipeline.handle(sorted(served.values(), key=lambda b: (b.t, b.symbol)))
        embedded = await all_candles(ref, symbols)
    for iv in INTERVALS:
        assert distributed[iv.name] == embedded[iv.name], iv.name
    print(f"\n[aws faults] {len(served)} bars: {put_failures.failed_records} records re-sent, "
          f"{partly.injected} BatchWriteItem answers half unprocessed, {writes.calls} "
          f"BatchWriteItem requests in all")  # fmt: skip


# -- emulators with a data directory --------------------------------------------------------------


@contextlib.contextmanager
def emulators(data: Path, ddb_port: int, kin_port: int) -> Iterator[tuple[str, str]]:
    (data / "kinesis").parent.mkdir(parents=True, exist_ok=True)
    ddb = start_emulator(dynalite_command(ddb_port, "--path", str(data / "dynamodb")), ddb_port)
    try:
        kin = start_emulator(
            kinesalite_command(kin_port, path=str(data / "kinesis"), shardLimit=100), kin_port
        )
    except BaseException:
        stop_process(ddb)
        raise
    try:
        yield f"http://127.0.0.1:{ddb_port}", f"http://127.0.0.1:{kin_port}"
    finally:
        for proc in (ddb, kin):  # kill -9: no chance to flush anything on the way out
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


async def test_emulators_restarted_on_their_data_dirs_keep_tables_items_and_records(
    tmp_path: Path,
) -> None:
    ddb_port, kin_port = free_port(), free_port()
    t0 = 1_704_204_000_000  # 2024-01-02T14:00Z: five minutes in one bucket of every interval
    bars = [Bar(f"P{i}", t0 + m * MINUTE_MS, 10.0 + m, 11.0 + m, 9.5, 10.5, 100.0)
            for m in range(5) for i in range(4)]  # fmt: skip
    clock = SystemClock()
    intervals = IntervalSet(DEFAULT_INTERVALS, {"*": "100y"})

    def parts(ddb_url: str, kin_url: str) -> tuple[DynamoDBStore, KinesisBus]:
        store = DynamoDBStore(intervals, clock, endpoint_url=ddb_url, retry_timeout_s=10)
        bus = KinesisBus(endpoint_url=kin_url, dynamodb_endpoint_url=ddb_url,
                         poll_interval_s=0.05, retry_timeout_s=10)  # fmt: skip
        return store, bus

    with emulators(tmp_path / "data", ddb_port, kin_port) as (ddb_url, kin_url):
        store, bus = parts(ddb_url, kin_url)
        async with store, bus:
            await bus.ensure_streams([RAW_TOPIC])
            pipeline = CandlePipeline(Resampler(intervals, clock), store)
            await pipeline.handle(bars)
            sub = bus.subscribe([RAW_TOPIC], consumer="reader")
            await bus.publish(RAW_TOPIC, bars[:12])
            async with asyncio.timeout(15):
                got: list[Any] = []
                while len(got) < 12:
                    got.extend((await sub.get())[1])
            await asyncio.sleep(0.5)  # the checkpoint follows the hand-over of the last batch
            sub.close("the reader stops")
            checkpoint = await bus.checkpoints("reader", RAW_TOPIC)
            assert checkpoint
            await bus.publish(RAW_TOPIC, bars[12:])  # published, never read before the crash
            await asyncio.sleep(0.3)
            assert await bus.checkpoints("reader", RAW_TOPIC) == checkpoint
            before = await all_candles(store, ["P0", "P1", "P2", "P3"])
    with emulators(tmp_path / "data", ddb_port, kin_port) as (ddb_url, kin_url):
        store, bus = parts(ddb_url, kin_url)
        store.create_tables = False  # they must still be there
        async with store, bus:
            assert await all_candles(store, ["P0", "P1", "P2", "P3"]) == before
            assert sum(len(v) for v in before.values()) == 4 * (5 + 6)  # 5 x 1m, 1 per other
            assert await bus.checkpoints("reader", RAW_TOPIC) == checkpoint
            resumed = bus.subscribe([RAW_TOPIC], consumer="reader")
            everything = KinesisBus(
                endpoint_url=kin_url,
                dynamodb_endpoint_url=ddb_url,
                poll_interval_s=0.05,
                initial_position="TRIM_HORIZON",
            )
            async with everything:
                all_sub = everything.subscribe([RAW_TOPIC], consumer="newcomer")
                async with asyncio.timeout(15):
                    rest: list[Any] = []
                    while len(rest) < 8:
                        rest.extend((await resumed.get())[1])
                    full: list[Any] = []
                    while len(full) < len(bars):
                        full.extend((await all_sub.get())[1])
            assert rest == bars[12:]
            assert sorted(full, key=lambda b: (b.t, b.symbol)) == sorted(
                bars, key=lambda b: (b.t, b.symbol)
            )
