"""The fault matrix: every path of the service under each fault, each case ending with the store
equal to the oracle.

Paths, each a set of real `speedlayer` processes fed by the in-process Polygon simulator over
WebSocket (REST for backfills):

* ``embedded``: ``speedlayer up`` (feed, resampler, SQLite, API in one process);
* ``kafka``: ``ingest --bus kafka`` -> the session's Kafka broker -> ``process --bus kafka``
  -> SQLite, and ``api --bus kafka`` for the live feed;
* ``kinesis``: ``ingest --bus kinesis`` -> kinesalite -> ``process --store dynamodb`` ->
  dynalite, and ``api --store dynamodb --bus kinesis``.

Faults, injected once a third of the data has gone by:

* ``kill_processor``: kill -9 of the process that stores candles (``up`` itself on the embedded
  path), restarted a second later;
* ``kill_ingest``: kill -9 of ``ingest`` (distributed paths), restarted a second and a half later:
  the bars the simulator sent meanwhile come back through the restarted feed's backfill;
* ``broker_restart``: the Kafka broker stopped and started again; kinesalite killed (-9) and
  started again on its data directory;
* ``disk_full``: the SQLite database on a small tmpfs that a filler file fills for 3 s (where
  mounting is permitted: the test runs as root);
* ``store_outage``: dynalite killed (-9) and started again on its data directory 3 s later;
* ``disconnect_storm``: the simulator drops every WebSocket connection each second, without a
  close frame;
* ``feed_clock_jump``: the simulator's clock jumps 20 minutes ahead (a burst of minutes at once),
  then 25 minutes back (nothing for a while).

Input: 45 minutes of real bars (``realbars/eqker_2019``, 24 tickers), moved by a whole number of
4-hour periods to end more than an hour ago, so every bucket is past its end (final) and a
restarted feed's start-up backfill (``SPEEDLAYER_BACKFILL_LOOKBACK_MIN``) reaches them.

The oracle, per case: the stored 1-minute bars equal what the simulator sent (``served()``: the
last version of each key; ``n``, which only REST carries, aside), and every stored candle of every
interval equals the pandas recomputation (tests/oracle.py) from the stored 1-minute bars, final.
A WebSocket client on the API's live feed (``*`` x three intervals, reconnecting when the API
restarts) must never get the same candle update twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from ingest.simulator import PolygonSimulator, SimulatorConfig
from ingest.simulator.server import FaultConfig
from speedlayer.clock import SystemClock
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import MINUTE_MS, Bar, Candle
from speedlayer.store.base import Store
from speedlayer.store.sqlite import SQLiteStore
from tests.conftest import (
    dynalite_command,
    free_port,
    kinesalite_command,
    require,
    run_cli,
    start_emulator,
    stop_process,
)
from tests.integration.aws.test_aws_path import Aws, Service, count_items, until
from tests.kafka_broker import KafkaBroker
from tests.oracle import oracle_candles, values_close

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MINUTES = 45
SPEED = 5.0  # simulated minutes per second: the data streams for 9 s
LEAD_MINUTES = 600  # empty minutes before the data, until the feed is subscribed
PERIOD_MS = 4 * 3_600_000
INTERVALS = IntervalSet(DEFAULT_INTERVALS)
LIVE_INTERVALS = ["1m", "15m", "4h"]
DISK_MB = 16


# -- input and simulator --------------------------------------------------------------------------


def write_input(realbars: Path, path: Path) -> tuple[Path, int]:
    """The first MINUTES minutes of eqker_2019, moved by whole 4-hour periods to end over an hour
    ago; returns (path, first minute)."""
    with (realbars / "eqker_2019" / "bars_1m.csv").open() as f:
        rows = list(csv.DictReader(f))
    first = min(int(row["t"]) for row in rows)
    now_ms = int(time.time() * 1000)
    shift = (now_ms - 2 * 3_600_000 - first) // PERIOD_MS * PERIOD_MS
    keep = [row for row in rows if int(row["t"]) < first + MINUTES * MINUTE_MS]
    for row in keep:
        row["t"] = str(int(row["t"]) + shift)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    return path, first + shift


@contextlib.asynccontextmanager
async def simulator(
    replay: Path, first_minute: int, faults: FaultConfig
) -> AsyncIterator[PolygonSimulator]:
    start = first_minute - LEAD_MINUTES * MINUTE_MS
    config = SimulatorConfig(
        host="127.0.0.1", port=0, speed=SPEED, replay=[str(replay)], start_ms=start, faults=faults
    )
    async with PolygonSimulator(config) as sim:
        yield sim


async def release(sim: PolygonSimulator, first_minute: int) -> None:
    """Once the feed is subscribed, move the simulated clock to just before the data."""
    await until(lambda: sim.stats.auth_successes >= 1, 60)
    await asyncio.sleep(0.5)
    sim.clock.anchor(first_minute - MINUTE_MS)


# -- the paths ------------------------------------------------------------------------------------


@dataclass
class Deployment:
    """One path's processes and where it stores candles."""

    name: str
    env: dict[str, str]
    logs: Path
    commands: dict[str, list[str]]  # role -> speedlayer arguments ("processor", "ingest", "api")
    api_port: int
    db: Path | None = None  # SQLite paths
    aws: Aws | None = None  # the kinesis path
    running: dict[str, Service] = field(default_factory=dict)
    started: list[Service] = field(default_factory=list)

    def start(self, role: str) -> None:
        if role in self.running and self.running[role].proc is not None:
            return
        count = sum(1 for s in self.started if s.name.startswith(role))
        service = Service(f"{role}-{count}", self.commands[role], self.env, self.logs).start()
        self.started.append(service)
        for name, args in self.commands.items():  # one process may play several roles
            if args is self.commands[role]:
                self.running[name] = service

    def start_all(self) -> None:
        for role in self.commands:
            self.start(role)

    def kill9(self, role: str) -> None:
        service = self.running.pop(role)
        service.kill9()
        for name in [n for n, s in self.running.items() if s is service]:
            del self.running[name]

    def restart(self, role: str) -> None:
        self.start(role)

    def alive(self) -> None:
        for service in set(self.running.values()):
            service.alive()

    def stop(self) -> list[tuple[str, int]]:
        """SIGTERM to each process; (name, exit code) of those that did not exit cleanly. The
        uvicorn-served commands (``up``, ``api``) re-raise the signal once they have shut down
        gracefully, so they exit with -SIGTERM."""
        unclean = []
        for service in set(self.running.values()):
            code = service.stop()
            clean = (0, -signal.SIGTERM) if service.args[0] in ("up", "api") else (0,)
            if code not in clean:
                unclean.append((service.name, code))
        return unclean

    def cleanup(self) -> None:
        for service in self.started:
            service.cleanup()

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        if self.aws is not None:
            async with self.aws.store() as dynamo:
                yield dynamo
        else:
            assert self.db is not None
            async with SQLiteStore(self.db, INTERVALS, SystemClock()) as sqlite:
                yield sqlite

    async def stored_bars(self) -> int:
        if self.aws is not None:
            async with self.aws.store() as dynamo:
                return await count_items(dynamo, "1m")
        assert self.db is not None
        if not self.db.exists():
            return 0
        uri = f"file:{self.db}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as conn:
            try:
                return int(
                    conn.execute("SELECT COUNT(*) FROM speed_layer_ohlcv_1min").fetchone()[0]
                )
            except Exception:  # not created yet, or locked for a moment
                return 0


def feed_env(sim: PolygonSimulator) -> dict[str, str]:
    return {
        "SPEEDLAYER_SOURCE": "polygon",
        "SPEEDLAYER_POLYGON_WS_URL": sim.ws_url,
        "SPEEDLAYER_POLYGON_REST_URL": sim.rest_url,
        "SPEEDLAYER_POLYGON_API_KEY": "fault-matrix",
        "SPEEDLAYER_POLYGON_MARKET": "stocks",
        "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "480",
        "SPEEDLAYER_STATS_INTERVAL_S": "1",
        "SPEEDLAYER_LOG_LEVEL": "info",
        "SPEEDLAYER_KINESIS_POLL_INTERVAL_S": "0.05",
    }


def deployment(
    path: str,
    sim: PolygonSimulator,
    tmp: Path,
    db_dir: Path,
    request: pytest.FixtureRequest,
    emulators: Emulators | None = None,
) -> Deployment:
    port = free_port()
    env = feed_env(sim)
    db = db_dir / "candles.db"
    api = ["api", "--port", str(port)]
    if path == "embedded":
        up = ["up", "--db", str(db), "--port", str(port)]
        return Deployment(path, env, tmp, {"processor": up, "ingest": up, "api": up}, port, db)
    if path == "kafka":
        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        env |= {"SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "SPEEDLAYER_KAFKA_TOPIC_PREFIX": f"fm{uuid.uuid4().hex[:8]}-"}  # fmt: skip
        commands = {
            "processor": ["process", "--bus", "kafka", "--db", str(db)],
            "ingest": ["ingest", "--bus", "kafka"],
            "api": [*api, "--bus", "kafka", "--db", str(db)],
        }
        return Deployment(path, env, tmp, commands, port, db)
    if emulators is not None:
        aws = Aws(emulators.url("dynamodb"), emulators.url("kinesis"))
    else:
        aws = Aws(request.getfixturevalue("dynalite_url"),
                  request.getfixturevalue("kinesalite_url"))  # fmt: skip
    env |= aws.env | {"SPEEDLAYER_LOG_LEVEL": "info", "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "480"}
    env.pop("SPEEDLAYER_RETENTION", None)  # the data is recent: the default retention keeps it
    aws.env = env
    run_cli("init-aws", env=env)
    commands = {
        "processor": ["process", "--bus", "kinesis", "--store", "dynamodb"],
        "ingest": ["ingest", "--bus", "kinesis"],
        "api": [*api, "--store", "dynamodb", "--bus", "kinesis"],
    }
    return Deployment(path, env, tmp, commands, port, aws=aws)


class Emulators:
    """dynalite and kinesalite of one test, on data directories, so either can be killed and
    started again with what it held (the session's emulators keep nothing on disk)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports = {"dynamodb": free_port(), "kinesis": free_port()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def command(self, name: str) -> list[str]:
        port = self.ports[name]
        if name == "dynamodb":
            return dynalite_command(port, "--path", str(self.data / "dynamodb"),
                                    "--createTableMs", "0", "--deleteTableMs", "0")  # fmt: skip
        return kinesalite_command(port, path=str(self.data / "kinesis"), createStreamMs=0)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str) -> None:
        self.procs[name] = start_emulator(self.command(name), self.ports[name])

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=10)

    def __enter__(self) -> Emulators:
        self.data.mkdir(parents=True, exist_ok=True)
        self.start("dynamodb")
        self.start("kinesis")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            stop_process(proc)


# -- the live client ------------------------------------------------------------------------------


@dataclass
class Live:
    updates: list[str] = field(default_factory=list)  # each candle message without its seq
    connects: int = 0


@contextlib.asynccontextmanager
async def live_client(port: int) -> AsyncIterator[Live]:
    live = Live()
    subscribe = json.dumps({"action": "subscribe", "symbols": ["*"], "intervals": LIVE_INTERVALS})

    async def run() -> None:
        while True:
            try:
                async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
                    live.connects += 1
                    await ws.send(subscribe)
                    async for text in ws:
                        message = json.loads(text)
                        if message.get("type") == "candle":
                            message.pop("seq", None)
                            live.updates.append(json.dumps(message, sort_keys=True))
            except (TimeoutError, OSError, WebSocketException):
                await asyncio.sleep(0.3)

    task = asyncio.create_task(run())
    try:
        yield live
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- faults ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(tmp: Path) -> Iterator[Path]:
    """A tmpfs of DISK_MB for the database (mounting needs root)."""
    mount = tmp / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    require(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        (mount / "filler").touch()  # made now, so that filling it later creates nothing
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """The disk's filler file (made by ``small_disk``), grown until it takes every free byte."""
    filler = disk / "filler"
    with filler.open("ab") as f:
        chunk = b"\0" * (1 << 16)
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
                f.flush()
    return filler


FAULTS = ("kill_processor", "kill_ingest", "broker_restart", "disk_full", "store_outage",
          "disconnect_storm", "feed_clock_jump")  # fmt: skip
PATHS = ("embedded", "kafka", "kinesis")
APPLIES = {
    "kill_ingest": {"kafka", "kinesis"},
    "broker_restart": {"kafka", "kinesis"},
    "disk_full": {"embedded", "kafka"},
    "store_outage": {"kinesis"},
}
OWN_EMULATORS = {("kinesis", "broker_restart"), ("kinesis", "store_outage")}
CASES = [(path, fault) for fault in FAULTS for path in PATHS if path in APPLIES.get(fault, PATHS)]


async def inject(
    fault: str,
    deploy: Deployment,
    sim: PolygonSimulator,
    total: int,
    disk: Path | None,
    request: pytest.FixtureRequest,
    emulators: Emulators | None,
) -> None:
    """Wait for a third of the data, then the fault; returns once it is over."""
    if fault in ("kill_processor", "disk_full", "store_outage"):
        async with asyncio.timeout(60):
            while await deploy.stored_bars() < total // 3:
                deploy.alive()
                await asyncio.sleep(0.05)
    else:
        await until(lambda: sim.stats.bars_emitted >= total // 3, 60)
    if fault == "kill_processor":
        deploy.kill9("processor")
        await asyncio.sleep(1.0)
        deploy.restart("processor")
    elif fault == "kill_ingest":
        deploy.kill9("ingest")
        await asyncio.sleep(1.5)
        deploy.restart("ingest")
    elif fault == "broker_restart" and emulators is not None:
        emulators.kill9("kinesis")
        await asyncio.sleep(2.0)
        await asyncio.to_thread(emulators.start, "kinesis")
    elif fault == "broker_restart":
        broker: KafkaBroker = request.getfixturevalue("kafka_broker")
        await asyncio.to_thread(broker.restart)
    elif fault == "store_outage":
        assert emulators is not None
        emulators.kill9("dynamodb")
        await asyncio.sleep(3.0)
        await asyncio.to_thread(emulators.start, "dynamodb")
    elif fault == "disk_full":
        assert disk is not None
        filler = await asyncio.to_thread(fill, disk)
        await asyncio.sleep(3.0)
        filler.unlink()
    elif fault == "feed_clock_jump":
        now = sim.clock.now_ms()
        sim.clock.anchor(now + 20 * MINUTE_MS)
        await asyncio.sleep(1.0)
        sim.clock.anchor(sim.clock.now_ms() - 25 * MINUTE_MS)


# -- the check ------------------------------------------------------------------------------------


async def stored_candles(store: Store, symbols: list[str]) -> dict[str, list[Candle]]:
    return {iv.name: [c for s in symbols for c in await store.query(s, iv)] for iv in INTERVALS}


def check(
    stored: dict[str, list[Candle]], served: dict[tuple[str, int], Bar]
) -> tuple[list[str], int]:
    """The oracle's differences (empty when none), and the number of candles compared."""
    problems = []
    minutes = {(c.symbol, c.timestamp): c for c in stored["1m"]}
    if set(minutes) != set(served):
        missing, extra = set(served) - set(minutes), set(minutes) - set(served)
        problems.append(f"1m keys: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                        f"{len(extra)} extra")  # fmt: skip
    bars = []
    for key, candle in minutes.items():
        bars.append(Bar(candle.symbol, candle.timestamp, candle.open, candle.high, candle.low,
                        candle.close, candle.volume, candle.vwap, candle.trades))  # fmt: skip
        sent = served.get(key)
        if sent is not None:
            got = (candle.open, candle.high, candle.low, candle.close, candle.volume, candle.vwap)
            if got != (sent.o, sent.h, sent.l, sent.c, sent.v, sent.vw):
                problems.append(f"1m {key}: stored {got}, sent {sent}")
    oracle = oracle_candles(bars, {iv.name: iv.interval_ms for iv in INTERVALS})
    compared = 0
    for iv in INTERVALS:
        mine = {(iv.name, c.symbol, c.timestamp): c for c in stored[iv.name]}
        want = {key: value for key, value in oracle.items() if key[0] == iv.name}
        if set(mine) != set(want):
            problems.append(f"{iv.name} keys differ: {len(set(want) - set(mine))} missing, "
                            f"{len(set(mine) - set(want))} extra")  # fmt: skip
        for candle_key in set(mine) & set(want):
            c = mine[candle_key]
            values = (c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades, c.bars)
            compared += 1
            if not values_close(values, want[candle_key]):
                problems.append(f"{candle_key}: stored {values}, oracle {want[candle_key]}")
            if not c.final:
                problems.append(f"{candle_key}: not final")
    return problems, compared


# -- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "fault"), CASES, ids=[f"{p}-{f}" for p, f in CASES])
async def test_fault_matrix(
    path: str, fault: str, tmp_path: Path, realbars: Path, request: pytest.FixtureRequest
) -> None:
    if path == "kafka":
        require(shutil.which("java") is not None, "no Java for the Kafka broker")
    replay, first_minute = write_input(realbars, tmp_path / "input.csv")
    with replay.open() as f:
        total = sum(1 for _ in f) - 1
    faults = FaultConfig(disconnect_every_s=1.0, disconnect_code=1006) \
        if fault == "disconnect_storm" else FaultConfig()  # fmt: skip
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(small_disk(tmp_path)) if fault == "disk_full" else None
        own = None
        if (path, fault) in OWN_EMULATORS:
            own = stack.enter_context(Emulators(tmp_path / "emulators"))
        async with simulator(replay, first_minute, faults) as sim:
            deploy = deployment(path, sim, tmp_path, disk or tmp_path, request, own)
            try:
                deploy.start_all()
                async with live_client(deploy.api_port) as live:
                    await release(sim, first_minute)
                    await inject(fault, deploy, sim, total, disk, request, own)
                    await until(lambda: sim.finished, 90)
                    served = sim.served()
                    async with asyncio.timeout(90):
                        while await deploy.stored_bars() < len(served):
                            deploy.alive()
                            await asyncio.sleep(0.2)
                    await asyncio.sleep(1.5)  # the last candles and live updates settle
                    async with deploy.store() as store:
                        symbols = sorted({symbol for symbol, _ in served})
                        stored = await stored_candles(store, symbols)
                    updates = list(live.updates)
                    disconnects = sim.stats.disconnects_injected
                unclean = deploy.stop()
            finally:
                deploy.cleanup()
    problems, compared = check(stored, served)
    assert not problems, "\n".join(problems[:30])
    assert compared >= len(served)
    assert not unclean, unclean
    for service in deploy.started:
        assert "Traceback" not in service.text(), service.text()[-5000:]
    # The fault happened.
    logs = "".join(service.text() for service in deploy.started)
    if fault == "disk_full":
        assert "database or disk is full" in logs
    if fault == "disconnect_storm":
        assert disconnects >= 3
    repeated = len(updates) - len(set(updates))
    assert updates and repeated == 0, f"{repeated} live updates delivered twice"
    print(f"\n[faults] {path} / {fault}: {len(served)} bars, {compared} candles equal to the "
          f"oracle; {len(updates)} live updates over {live.connects} connection(s)")  # fmt: skip
