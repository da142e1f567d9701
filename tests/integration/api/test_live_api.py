"""Live feeds through a real uvicorn server, with the live pipeline running on the simulator.

Each stack is built in-process like ``speedlayer up`` (launch/wiring.py): the Polygon simulator
(synthetic market, fast) -> PolygonFeed -> MemoryBus -> PipelineRunner(CandlePipeline(Resampler,
SQLiteStore in tmp_path)) -> create_app(...) served by ``uvicorn.Server`` on a free port. Clients
are the ``websockets`` library and httpx streaming (SSE). A raw bus subscription (``Tap``) records
every candle update published: the ground truth that clients are checked against, along with the
store.

Most tests share one module-scoped stack; tests that need other limits build their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.app import create_app
from api.live.hub import CandleHub
from launch.wiring import start_feed, start_runner, start_source
from speedlayer.bus.base import Subscription, candle_topic
from speedlayer.bus.memory import MemoryBus
from speedlayer.config import Settings
from speedlayer.intervals import Interval
from speedlayer.models import Candle
from speedlayer.store.base import Order
from speedlayer.store.sqlite import SQLiteStore
from tests.waiting import until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

SYMBOLS = 30
SPEED = 8.0  # simulated minutes per wall second
CANDLE_FIELDS = (
    "timestamp open high low close volume vwap trades bars final revision".split()  # noqa: SIM905
)


# -- the stack ------------------------------------------------------------------------------------


class Tap:
    """A raw bus subscription recording every candle update in publication order."""

    def __init__(self, bus: MemoryBus, intervals: list[str]) -> None:
        self.subscription: Subscription = bus.subscribe(
            [candle_topic(iv) for iv in intervals], maxsize=1_000_000
        )
        self.candles: list[Candle] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for _, batch in self.subscription:
            self.candles.extend(batch)

    def revisions(self, symbol: str, interval: str) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for c in self.candles:
            if c.symbol == symbol and c.interval == interval:
                out[c.timestamp].append(c.revision)
        return out

    async def stop(self) -> None:
        self.subscription.close()
        await asyncio.wait_for(self.task, 5)


class SlowSnapshotStore(SQLiteStore):
    """Range queries (what snapshots read) take ``delay_s`` before and after the read, so live
    updates are published while a snapshot is being taken: both sides of the race happen."""

    delay_s = 0.0

    async def query(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        order: Order = "asc",
    ) -> list[Candle]:
        await asyncio.sleep(self.delay_s)
        rows = await super().query(symbol, interval, start_ms, end_ms, limit, order)
        await asyncio.sleep(self.delay_s)
        return rows


class LiveStack:
    def __init__(
        self,
        tmp: Path,
        *,
        live: bool = True,
        snapshot_delay_s: float = 0.0,
        symbols: int = SYMBOLS,
        speed: float = SPEED,
        sndbuf: int | None = None,
        **overrides: Any,
    ) -> None:
        self.tmp = tmp
        self.live = live
        self.snapshot_delay_s = snapshot_delay_s
        self.symbols = symbols
        self.speed = speed
        self.settings = Settings(
            db=tmp / "live.db",
            source="simulator",
            sim_symbols=symbols,
            sim_speed=speed,
            sim_history_min=40,
            backfill_lookback_min=30,
            grace_ms=2000,
            **overrides,
        )
        # The listening socket is ours, so its send buffer (inherited by accepted connections)
        # can be made small: a client that never reads then blocks the server in kilobytes,
        # not in the megabytes that loopback autotuning would buffer first.
        self.listener = socket.socket()
        if sndbuf is not None:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> LiveStack:
        stack = self._stack
        settings = self.settings
        target = await start_source(stack, settings)
        assert target.simulator is not None
        self.sim = target.simulator
        clock = target.clock
        self.bus = await stack.enter_async_context(MemoryBus())
        self.store = SlowSnapshotStore(settings.db, settings.interval_set, clock)
        await stack.enter_async_context(self.store)
        self.tap = Tap(self.bus, settings.interval_set.names)
        stack.push_async_callback(self.tap.stop)
        if self.live:  # as `speedlayer up` wires them (launch.wiring), with a fast tick
            self.runner = await start_runner(
                stack, settings, self.store, self.bus, clock, tick_s=0.05
            )
            self.feed = await start_feed(stack, settings, target, self.bus)
        app = create_app(
            settings,
            store=self.store,
            clock=clock,
            bus=self.bus if self.live else None,
            pipeline=self.runner if self.live else None,
        )
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                timeout_graceful_shutdown=3,
            )
        )
        task = asyncio.create_task(self.server.serve(sockets=[self.listener]))
        stack.push_async_callback(self._stop_server, task)
        async with asyncio.timeout(10):
            while not self.server.started:
                assert not task.done(), "uvicorn exited"
                await asyncio.sleep(0.02)
        self.app = app
        self.hub: CandleHub = app.state.resources.hub
        self.store.delay_s = self.snapshot_delay_s
        if self.live:  # history in the store and updates flowing before the tests start
            async with asyncio.timeout(15):
                await self.feed.backfill_idle()
            stats = self.feed.stats
            published = stats.bars_published + stats.backfill_bars
            await until(lambda: self.runner.bars_in >= published, 15, "the start-up backfill")
            await until(lambda: len(self.tap.candles) >= 50, 15, "the first candle updates")
        return self

    async def _stop_server(self, task: asyncio.Task[None]) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(task, 10)

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def active_symbols(self, n: int) -> list[str]:
        """The ``n`` symbols with the most 1m updates so far (the walk has thin symbols)."""
        counts: dict[str, int] = defaultdict(int)
        for c in self.tap.candles:
            if c.interval == "1m":
                counts[c.symbol] += 1
        return sorted(counts, key=lambda s: (-counts[s], s))[:n]

    async def stored(self, symbol: str, interval: str) -> dict[int, Candle]:
        iv = self.settings.interval_set.get(interval)
        rows = await SQLiteStore.query(self.store, symbol, iv)
        return {c.timestamp: c for c in rows}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("live")
    async with LiveStack(tmp, sse_heartbeat_s=0.3, sse_replay_events=6000) as stack:
        yield stack


# -- clients --------------------------------------------------------------------------------------


class WsClient:
    """A WebSocket client recording every message (parsed) in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self.frames: list[int] = []  # messages per frame (a batched frame holds several)
        self.closed: ConnectionClosed | None = None
        self.task = asyncio.create_task(self._run())

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> WsClient:
        return cls(await connect(url, open_timeout=5, close_timeout=2, **kwargs))

    async def _run(self) -> None:
        try:
            async for raw in self.ws:
                parsed = orjson.loads(raw)
                batch = parsed if isinstance(parsed, list) else [parsed]
                self.messages.extend(batch)
                self.received_at.extend([time.time()] * len(batch))
                self.frames.append(len(batch) if isinstance(parsed, list) else 0)
        except ConnectionClosed as exc:
            self.closed = exc

    async def send(self, payload: object) -> None:
        await self.ws.send(payload if isinstance(payload, str) else orjson.dumps(payload).decode())

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], Any], within: float = 10
    ) -> Any:
        async with asyncio.timeout(within):
            while True:
                result = predicate(self.messages)
                if result:
                    return result
                if self.task.done():
                    raise AssertionError(f"connection closed: {self.ws.close_code} {self.closed}")
                await asyncio.sleep(0.02)

    async def reply(self, payload: object, kind: str | tuple[str, ...], within: float = 5) -> Any:
        """Send a request and wait for the next message of type ``kind`` after it."""
        kinds = (kind,) if isinstance(kind, str) else kind
        start = len(self.messages)
        await self.send(payload)
        return await self.wait_for(
            lambda ms: next((m for m in ms[start:] if m["type"] in kinds), None), within
        )

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5)


def sub(symbols: object, intervals: object, snapshot: object = 0, **extra: Any) -> dict[str, Any]:
    return {
        "action": "subscribe",
        "symbols": symbols,
        "intervals": intervals,
        "snapshot": snapshot,
        **extra,
    }


class SseEvent:
    def __init__(self) -> None:
        self.id: str | None = None
        self.event = "message"
        self.data: list[str] = []
        self.comments: list[str] = []

    @property
    def json(self) -> Any:
        return orjson.loads("\n".join(self.data))


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse a text/event-stream; comment-only blocks come out as events with comments."""
    current = SseEvent()
    async for line in response.aiter_lines():
        if line == "":
            if current.data or current.comments or current.id is not None:
                yield current
            current = SseEvent()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                current.id = value
            elif field == "event":
                current.event = value
            elif field == "data":
                current.data.append(value)


async def collect_sse(
    client: httpx.AsyncClient,
    url: str,
    stop: Callable[[list[SseEvent]], bool],
    within: float = 10,
    headers: dict[str, str] | None = None,
) -> list[SseEvent]:
    events: list[SseEvent] = []
    async with asyncio.timeout(within), client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in sse_events(response):
            events.append(event)
            if stop(events):
                break
    return events


def candles_of(events: list[SseEvent]) -> list[SseEvent]:
    return [e for e in events if e.event == "candle"]


# -- WebSocket: snapshot then live ----------------------------------------------------------------


async def test_snapshot_then_live_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    """Clients subscribe while updates flow, with snapshot reads slowed down so updates are
    published both before and after the read. At the end (feed stopped, everything final and
    delivered), every client's view of every candle is checked against the store and against
    what the bus published: revisions strictly increase per candle, the last one is the stored
    one, and after the snapshot the client got exactly the published revisions above it."""
    async with LiveStack(tmp_path, snapshot_delay_s=0.15) as stack:
        symbols = stack.active_symbols(6)
        intervals = ["1m", "5m", "15m"]
        clients: list[tuple[WsClient, list[str]]] = []
        for i in range(4):  # staggered, so each subscribes at a different point of the flow
            picked = symbols[i : i + 3]
            client = await WsClient.open(stack.ws_url)
            await client.send(sub(picked, ["1min", "5m", "15m"], snapshot=20, id=i))
            clients.append((client, picked))
            await asyncio.sleep(0.3)
        for client, picked in clients:  # every snapshot arrives, then updates
            await client.wait_for(lambda ms: len([m for m in ms if m["type"] == "snapshot"]) == 9)
            ack = client.of_type("subscribed")[0]
            assert ack["intervals"] == intervals and ack["symbols"] == picked and ack["id"] >= 0
        await asyncio.sleep(1.5)
        skipped = sum(c.skipped for c in stack.hub._clients)

        # Quiesce: no more bars; the runner finalizes what the clock passes; clients drain.
        await stack.feed.stop()
        async with asyncio.timeout(15):
            last = -1
            while len(stack.tap.candles) != last:  # until 0.5 s without an update
                last = len(stack.tap.candles)
                await asyncio.sleep(0.5)
        await until(lambda: stack.hub.events >= len(stack.tap.candles), 5, "the hub")
        await asyncio.sleep(0.5)

        checked_live = 0
        for client, picked in clients:
            assert client.closed is None
            for symbol in picked:
                for interval in intervals:
                    checked_live += await _check_pair(stack, client, symbol, interval)
            await client.close()
        assert checked_live > 50, "too few live updates to judge"
        assert skipped > 0, "no update was covered by a snapshot: the race was not exercised"


async def _check_pair(stack: LiveStack, client: WsClient, symbol: str, interval: str) -> int:
    snapshots = [
        m for m in client.of_type("snapshot") if m["symbol"] == symbol and m["interval"] == interval
    ]
    assert len(snapshots) == 1
    snap = snapshots[0]["candles"]
    assert [c["timestamp"] for c in snap] == sorted({c["timestamp"] for c in snap})
    assert 0 < len(snap) <= 20
    assert all(set(CANDLE_FIELDS) <= set(c) for c in snap)
    snap_rev = {c["timestamp"]: c["revision"] for c in snap}
    seen: dict[int, list[int]] = {ts: [rev] for ts, rev in snap_rev.items()}
    live: dict[int, list[int]] = defaultdict(list)
    latest: dict[int, dict[str, Any]] = {c["timestamp"]: c for c in snap}
    finals: dict[int, list[bool]] = {c["timestamp"]: [c["final"]] for c in snap}
    first_snapshot = next(i for i, m in enumerate(client.messages) if m["type"] == "snapshot")
    for i, m in enumerate(client.messages):
        if m["type"] == "candle" and m["symbol"] == symbol and m["interval"] == interval:
            assert i > first_snapshot
            assert set(CANDLE_FIELDS) <= set(m) and isinstance(m["seq"], int)
            seen.setdefault(m["timestamp"], []).append(m["revision"])
            live[m["timestamp"]].append(m["revision"])
            latest[m["timestamp"]] = m
            finals.setdefault(m["timestamp"], []).append(m["final"])
    published = stack.tap.revisions(symbol, interval)
    stored = await stack.stored(symbol, interval)
    where = f"{symbol} {interval}"
    for ts, revisions in seen.items():
        assert revisions == sorted(set(revisions)), f"{where} {ts}: revisions {revisions}"
        assert revisions[-1] == stored[ts].revision, f"{where} {ts}: last {revisions} != store"
        # Each update is the candle's whole state: the last one is the stored candle, field by
        # field; and once final, a candle never goes back to forming (docs: what a subscriber
        # may rely on).
        last = {field: latest[ts][field] for field in CANDLE_FIELDS}
        assert last == {field: getattr(stored[ts], field) for field in CANDLE_FIELDS}, where
        flags = finals[ts]
        assert flags == sorted(flags), f"{where} {ts}: final went back to forming: {flags}"
        if ts in snap_rev:  # after the snapshot: exactly what was published above it
            expected = [r for r in published.get(ts, []) if r > snap_rev[ts]]
        else:  # a candle newer than the snapshot: every revision published
            assert ts > max(snap_rev), f"{where} {ts}: update of a candle older than the snapshot"
            expected = published[ts]
        assert live.get(ts, []) == expected, f"{where} {ts}: live {live.get(ts)} != {expected}"
    newest = max(snap_rev)
    missing = [ts for ts in stored if ts >= newest and ts not in seen]
    assert not missing, f"{where}: stored candles never sent: {missing}"
    return sum(len(v) for v in live.values())


async def test_unsubscribe_stops_updates(shared: LiveStack) -> None:
    keep, drop = shared.active_symbols(2)
    client = await WsClient.open(shared.ws_url)
    try:
        await client.reply(sub([keep, drop], ["1m"]), "subscribed")
        await client.wait_for(
            lambda ms: {m["symbol"] for m in ms if m["type"] == "candle"} >= {keep, drop}
        )
        ack = await client.reply(
            {"action": "unsubscribe", "symbols": [drop], "intervals": ["1min"]}, "unsubscribed"
        )
        assert ack["symbols"] == [drop] and ack["intervals"] == ["1m"]
        assert ack["subscriptions"] == 1
        at = client.messages.index(ack)
        published_before = len(shared.tap.candles)
        await asyncio.sleep(1.5)
        after = [m for m in client.messages[at + 1 :] if m["type"] == "candle"]
        assert after and all(m["symbol"] == keep for m in after)
        assert any(c.symbol == drop for c in shared.tap.candles[published_before:])
    finally:
        await client.close()


async def test_batched_frames_carry_the_same_messages(shared: LiveStack) -> None:
    """``?batch=1``: every frame is a JSON array; flattened, the same messages as one per frame."""
    symbols = shared.active_symbols(4)
    plain = await WsClient.open(shared.ws_url)
    batched = await WsClient.open(shared.ws_url + "?batch=1")
    try:
        for client in (plain, batched):
            await client.reply(sub(symbols, ["1m", "5m", "15m"]), "subscribed")
        await plain.wait_for(lambda ms: len([m for m in ms if m["type"] == "candle"]) >= 30, 20)
        first = max(m["seq"] for m in plain.of_type("candle")[:1] + batched.of_type("candle")[:1])
        last = plain.of_type("candle")[-1]["seq"]
        await batched.wait_for(lambda ms: any(m.get("seq", 0) >= last for m in ms), 10)

        def window(client: WsClient) -> list[dict[str, Any]]:
            return [m for m in client.of_type("candle") if first <= m["seq"] <= last]

        assert window(batched) == window(plain) and len(window(plain)) >= 10
        assert all(n == 0 for n in plain.frames)
        assert batched.frames and all(n >= 1 for n in batched.frames)
        assert max(batched.frames) > 1  # a minute's updates for 12 pairs share frames
        assert await batched.reply({"action": "ping", "id": 7}, "pong") == {"type": "pong", "id": 7}
    finally:
        await plain.close()
        await batched.close()


async def test_batch_parameter_must_be_0_or_1(shared: LiveStack) -> None:
    client = await WsClient.open(shared.ws_url + "?batch=yes")
    await client.wait_for(lambda ms: ms, 5)
    assert client.messages[0] == {"type": "error", "message": "batch must be 0 or 1"}
    await asyncio.wait_for(client.task, 5)
    assert client.ws.close_code == 1008


async def test_ping_pong(shared: LiveStack) -> None:
    client = await WsClient.open(shared.ws_url)
    try:
        assert await client.reply({"action": "ping"}, "pong") == {"type": "pong"}
        assert await client.reply({"action": "ping", "id": "x1"}, "pong") == {
            "type": "pong",
            "id": "x1",
        }
    finally:
        await client.close()


async def test_bad_requests_get_errors_and_the_connection_stays_open(tmp_path: Path) -> None:
    async with LiveStack(
        tmp_path, live=False, live_max_subscriptions=4, live_max_message_bytes=256
    ) as stack:
        client = await WsClient.open(stack.ws_url)
        cases: list[tuple[object, str]] = [
            ("{not json", "invalid JSON"),
            ("[1, 2]", "JSON object"),
            ({"action": "dance"}, "unknown action 'dance'"),
            ({"symbols": ["AAPL"]}, "unknown action None"),
            (sub(["AAPL"], ["7x"]), "invalid interval '7x'"),
            (sub(["AAPL"], ["2m"]), "not configured"),
            (sub(["AAPL"], []), "intervals"),
            (sub(["AA PL"], ["1m"]), "'AA PL' is not a valid ticker"),
            (sub("AAPL", ["1m"]), "symbols"),
            (sub(["AAPL"], ["1m"], snapshot=-1), "snapshot"),
            (sub(["AAPL"], ["1m"], snapshot="5"), "snapshot"),
            (sub(["A", "B", "C"], ["1m", "5m"]), "too many subscriptions"),
            ({"action": "ping", "pad": "x" * 300}, "message too large"),
        ]
        try:
            for payload, expected in cases:
                error = await client.reply(payload, ("error", "pong", "subscribed"))
                assert error["type"] == "error", (payload, error)
                assert expected in error["message"], (payload, error)
                if isinstance(payload, dict) and "pad" not in payload:
                    assert error["request"] == payload
                assert (await client.reply({"action": "ping"}, "pong"))["type"] == "pong"
            # The limit counts pairs across requests, all or nothing per request.
            ok = await client.reply(sub(["A", "B"], ["1m", "5m"]), ("subscribed", "error"))
            assert ok["type"] == "subscribed" and ok["subscriptions"] == 4
            assert ok["live"] is False and "no live updates" in ok["message"]
            over = await client.reply(sub(["C"], ["1m"]), ("subscribed", "error"))
            assert over["type"] == "error" and "limit is 4" in over["message"]
            assert client.closed is None
        finally:
            await client.close()


async def test_connection_limit_closes_with_1013(tmp_path: Path) -> None:
    async with LiveStack(tmp_path, live=False, live_max_connections=2) as stack:
        first = await WsClient.open(stack.ws_url)
        async with httpx.AsyncClient(base_url=stack.url, timeout=5) as http:
            stream_url = "/stream/candles?symbols=AAPL&snapshot=0"
            async with http.stream("GET", stream_url) as second:
                assert second.status_code == 200
                third = await WsClient.open(stack.ws_url)
                await asyncio.wait_for(third.task, 5)
                assert third.ws.close_code == 1013
                assert "too many connections (limit 2)" in (third.ws.close_reason or "")
                refused = await http.get(stream_url)
                assert refused.status_code == 503
                assert refused.json()["error"] == "too_many_connections"
                assert stack.hub.rejected_connections == 2
            await first.close()
            await until(lambda: stack.hub.clients == 0, 5, "both slots free again")
        again = await WsClient.open(stack.ws_url)
        assert (await again.reply({"action": "ping"}, "pong"))["type"] == "pong"
        await again.close()


async def test_wildcard_subscriptions_are_limited(tmp_path: Path) -> None:
    async with LiveStack(tmp_path, live_max_wildcards=1) as stack:
        monitor = await WsClient.open(stack.ws_url)
        other = await WsClient.open(stack.ws_url)
        try:
            ack = await monitor.reply(sub(["*"], ["1m"], snapshot=10), "subscribed")
            assert ack["symbols"] == ["*"]
            symbols = await monitor.wait_for(
                lambda ms: len(s := {m["symbol"] for m in ms if m["type"] == "candle"}) >= 5 and s
            )
            assert not monitor.of_type("snapshot")  # wildcards get no snapshot
            assert stack.hub.wildcards == 1
            error = await other.reply(sub(["*"], ["5m"]), ("subscribed", "error"))
            assert error["type"] == "error" and "limited to 1 per server" in error["message"]
            await monitor.reply({"action": "unsubscribe", "symbols": ["*"], "intervals": ["1m"]},
                                "unsubscribed")  # fmt: skip
            ok = await other.reply(sub(["*"], ["5m"]), ("subscribed", "error"))
            assert ok["type"] == "subscribed"
            assert len(symbols) >= 5
        finally:
            await monitor.close()
            await other.close()
        await until(lambda: stack.hub.wildcards == 0, 5, "wildcards released")


SLOW_INTERVALS = ["1m", "5m"]


async def test_slow_consumer_is_dropped_while_others_keep_receiving(tmp_path: Path) -> None:
    """Two clients with the same subscription (every symbol x 2 intervals, with snapshots): one
    reads, one never does. Only the one that never reads is dropped, with 1008 "slow consumer";
    the other, a third small client and the pipeline carry on."""
    async with LiveStack(tmp_path, live_queue_messages=256, sndbuf=8192) as stack:
        request = sub(stack.sim.symbols, SLOW_INTERVALS, snapshot=30)
        small = await WsClient.open(stack.ws_url)
        await small.reply(sub(stack.active_symbols(2), ["1m"]), "subscribed")
        reader = await WsClient.open(stack.ws_url)
        await reader.reply(request, "subscribed")
        # The slow client never reads: a tiny receive buffer and a one-message client queue, so
        # the server's socket buffer fills up, its writer blocks and the queue overflows.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", stack.port))
        slow = await connect(stack.ws_url, sock=raw, max_queue=1, open_timeout=5)
        await slow.send(orjson.dumps(request).decode())
        bars_before = stack.runner.bars_in
        await until(lambda: stack.hub.dropped_slow > 0, 30, "the slow client to be dropped")
        dropped_at = len(small.messages), len(reader.messages)
        # Now read: everything the server had written, an error, the close frame with the reason.
        last = None
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    last = await slow.recv()
        assert slow.close_code == 1008 and slow.close_reason == "slow consumer"
        assert last is not None and orjson.loads(last) == {
            "type": "error",
            "message": "slow consumer",
        }
        # The pipeline and the other clients carried on.
        for client, since in zip((small, reader), dropped_at, strict=True):

            def more(messages: list[dict[str, Any]], since: int = since) -> bool:
                return any(m["type"] == "candle" for m in messages[since:])

            await client.wait_for(more)
            assert client.closed is None
        assert len(reader.of_type("snapshot")) == len(stack.sim.symbols) * len(SLOW_INTERVALS)
        assert stack.runner.bars_in > bars_before
        assert stack.hub.dropped_slow == 1
        await small.close()
        await reader.close()


# -- SSE ------------------------------------------------------------------------------------------


async def test_sse_snapshot_then_candles(shared: LiveStack) -> None:
    a, b = shared.active_symbols(2)
    url = f"/stream/candles?symbols={a},{b}&intervals=1m,5min&snapshot=5"
    async with httpx.AsyncClient(base_url=shared.url, timeout=10) as http:
        events = await collect_sse(http, url, lambda es: len(candles_of(es)) >= 6)
    snapshots = [e for e in events if e.event == "snapshot"]
    assert {(e.json["symbol"], e.json["interval"]) for e in snapshots} == {
        (a, "1m"), (a, "5m"), (b, "1m"), (b, "5m"),
    }  # fmt: skip
    assert all(0 < len(e.json["candles"]) <= 5 for e in snapshots)
    first_candle = events.index(candles_of(events)[0])
    assert all(events.index(e) < first_candle for e in snapshots)
    ids = [int(e.id or 0) for e in candles_of(events)]
    assert ids == sorted(set(ids)) and ids[0] >= int(snapshots[0].id or 0)
    for e in candles_of(events):
        data = e.json
        assert data["type"] == "candle" and data["seq"] == int(e.id or 0)
        assert (data["symbol"], data["interval"]) in {(a, "1m"), (a, "5m"), (b, "1m"), (b, "5m")}
        assert set(CANDLE_FIELDS) <= set(data)


async def test_sse_resume_gets_exactly_the_missed_events(shared: LiveStack) -> None:
    symbols = shared.active_symbols(3)
    url = f"/stream/candles?symbols={','.join(symbols)}&intervals=1m,5m&snapshot=3"
    hub = shared.hub
    async with httpx.AsyncClient(base_url=shared.url, timeout=10) as http:
        first = await collect_sse(http, url, lambda es: len(candles_of(es)) >= 3)
        last_id = int(candles_of(first)[-1].id or 0)
        await asyncio.sleep(0.4)  # updates flow while disconnected
        assert hub.ring_window()[0] <= last_id, "the replay ring is too small for this test"
        resumed = await collect_sse(
            http,
            url,
            lambda es: len(candles_of(es)) >= 15,
            headers={"Last-Event-ID": str(last_id)},
        )
    assert not [e for e in resumed if e.event == "snapshot"]
    got = [int(e.id or 0) for e in candles_of(resumed)]
    wanted = {(s, iv) for s in symbols for iv in ("1m", "5m")}
    expected = [
        ev.seq
        for ev in hub._ring
        if last_id < ev.seq <= got[-1] and (ev.candle.symbol, ev.candle.interval) in wanted
    ]
    assert hub.ring_window()[0] <= last_id + 1, "the ring moved on before the check"
    assert got == expected
    by_seq = {ev.seq: ev for ev in hub._ring}
    assert all(e.json == orjson.loads(by_seq[int(e.id or 0)].text) for e in candles_of(resumed))


async def test_sse_resume_beyond_the_window_gets_a_snapshot(shared: LiveStack) -> None:
    a = shared.active_symbols(1)[0]
    url = f"/stream/candles?symbols={a}&intervals=1m&snapshot=2"
    hub = shared.hub
    async with httpx.AsyncClient(base_url=shared.url, timeout=10) as http:
        first = await collect_sse(http, url, lambda es: len(candles_of(es)) >= 1)
        last_id = int(candles_of(first)[-1].id or 0)
        await until(lambda: hub.ring_window()[0] > last_id + 1, 15, "the ring to move past it")
        for resume in (str(last_id), "1", "garbage"):
            events = await collect_sse(
                http, url, lambda es: any(e.event == "snapshot" for e in es),
                headers={"Last-Event-ID": resume},
            )  # fmt: skip
            snapshot = next(e for e in events if e.event == "snapshot")
            assert snapshot.json["symbol"] == a and len(snapshot.json["candles"]) == 2
            assert not candles_of(events)


async def test_sse_heartbeats(shared: LiveStack) -> None:
    url = "/stream/candles?symbols=NOSUCH&intervals=4h&snapshot=0"  # nothing will come
    async with httpx.AsyncClient(base_url=shared.url, timeout=10) as http:
        events = await collect_sse(
            http, url, lambda es: len([e for e in es if e.comments]) >= 2, within=5
        )
    assert all(e.comments and e.comments[0].startswith("ping") for e in events)


async def test_sse_bad_parameters_are_422(shared: LiveStack) -> None:
    async with httpx.AsyncClient(base_url=shared.url, timeout=5) as http:
        for query, expected in [
            ("symbols=AAPL&intervals=7x", "invalid interval '7x'"),
            ("symbols=AAPL&intervals=2m", "not configured"),
            ("symbols=AA%20PL", "not a valid ticker"),
            ("symbols=", "symbols"),
            ("intervals=1m", "symbols"),
            ("symbols=AAPL&snapshot=-1", "snapshot"),
        ]:
            response = await http.get(f"/stream/candles?{query}")
            assert response.status_code == 422, (query, response.text)
            body = response.json()
            assert body["error"] == "invalid_parameter" and expected in body["message"], body


async def test_sse_slow_consumer_stream_ends_with_an_error_event(tmp_path: Path) -> None:
    async with LiveStack(tmp_path, live_queue_messages=256, sndbuf=8192) as stack:
        symbols = ",".join(stack.sim.symbols)
        url = f"/stream/candles?symbols={symbols}&intervals={','.join(SLOW_INTERVALS)}&snapshot=30"
        small_buffer = httpx.AsyncHTTPTransport(
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
        )
        reader_events: list[SseEvent] = []

        async def read_along() -> None:  # the same stream, read as it comes: never dropped
            async with (
                httpx.AsyncClient(base_url=stack.url, timeout=30) as http,
                http.stream("GET", url) as response,
            ):
                async for event in sse_events(response):
                    reader_events.append(event)

        reader = asyncio.create_task(read_along())
        try:
            async with (
                httpx.AsyncClient(base_url=stack.url, timeout=10, transport=small_buffer) as http,
                http.stream("GET", url) as response,
            ):
                assert response.status_code == 200
                # Not reading meanwhile.
                await until(lambda: stack.hub.dropped_slow > 0, 30, "the slow stream to be dropped")
                seen_by_reader = len(reader_events)
                events = []
                async with asyncio.timeout(10):
                    async for event in sse_events(response):
                        events.append(event)
            assert events[-1].event == "error"
            assert events[-1].json == {"type": "error", "message": "slow consumer"}
            await until(lambda: len(candles_of(reader_events[seen_by_reader:])) > 0, 10, "reader")
            assert not reader.done() and stack.hub.dropped_slow == 1
            snapshots = [e for e in reader_events if e.event == "snapshot"]
            assert len(snapshots) == len(stack.sim.symbols) * len(SLOW_INTERVALS)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await until(lambda: stack.hub.clients == 0, 5, "the streams to be released")


async def test_sse_stream_of_a_stalled_client_is_closed_after_the_send_timeout(
    tmp_path: Path,
) -> None:
    """A client that stops reading altogether: once the server's writes have been blocked for
    SPEEDLAYER_SSE_SEND_TIMEOUT_S the stream is closed and counted as a dropped slow consumer.
    No `event: error` can reach it (nothing more can be written), as the README says: what the
    client finds when it reads again is the data that was in flight, then the end of the stream."""
    async with LiveStack(
        tmp_path, live_queue_messages=1_000_000, sndbuf=8192, sse_send_timeout_s=1.0
    ) as stack:
        symbols = ",".join(stack.sim.symbols)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(raw, ("127.0.0.1", stack.port))
        request = (
            f"GET /stream/candles?symbols={symbols}&intervals=1m,5m&snapshot=30 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{stack.port}\r\n\r\n"
        )
        await loop.sock_sendall(raw, request.encode())
        await until(lambda: stack.hub.clients == 1, 10, "the stream to start")
        # not reading: the server's socket buffer fills, its writes block, the timeout hits
        await until(lambda: stack.hub.clients == 0, 30, "the stalled stream to be closed")
        assert stack.hub.dropped_slow == 1
        received = bytearray()
        async with asyncio.timeout(20):
            while chunk := await loop.sock_recv(raw, 65536):
                received += chunk
        raw.close()
        assert received.startswith(b"HTTP/1.1 200"), bytes(received[:200])
        assert b"event: snapshot" in received
        assert b"event: error" not in received  # it could not be written


# -- without a bus --------------------------------------------------------------------------------


async def test_without_a_bus_snapshots_work_and_nothing_is_live(tmp_path: Path) -> None:
    async with LiveStack(tmp_path, live=False) as stack:
        iv = stack.settings.interval_set.get("5m")
        base = 1_704_205_800_000
        candles = [
            Candle("AAPL", "5m", base + i * iv.interval_ms, 10.0, 11.0, 9.0, 10.5, 100.0, None,
                   None, 5, True, 1, 4_000_000_000)
            for i in range(4)
        ]  # fmt: skip
        await stack.store.upsert(candles)
        client = await WsClient.open(stack.ws_url)
        try:
            ack = await client.reply(sub(["AAPL"], ["5m"], snapshot=3), "subscribed")
            assert ack["live"] is False
            snap = await client.wait_for(lambda ms: next(iter(client.of_type("snapshot")), None))
            assert [c["timestamp"] for c in snap["candles"]] == [c.timestamp for c in candles[1:]]
        finally:
            await client.close()
        async with httpx.AsyncClient(base_url=stack.url, timeout=5) as http:
            events = await collect_sse(
                http,
                "/stream/candles?symbols=AAPL&intervals=5m&snapshot=2",
                lambda es: any(e.event == "snapshot" for e in es),
            )
        assert "no live updates" in events[0].comments[0]
        assert len(events[-1].json["candles"]) == 2


# -- the hub on its own ---------------------------------------------------------------------------


async def test_hub_drops_redelivered_revisions_and_keeps_the_latest(tmp_path: Path) -> None:
    """An at-least-once bus may deliver an update twice: a client never sees a revision twice
    or an older one after a newer one; a correction of an older candle still goes through."""
    settings = Settings(db=tmp_path / "hub.db")
    bus = MemoryBus()
    hub = CandleHub(settings, SQLiteStore(settings.db, settings.interval_set, _Clock()), bus)
    await hub.start()
    try:
        client = hub.connect("ws")
        assert client is not None
        hub.subscribe(client, [("AAPL", "1m")], [], mode="live")

        def candle(ts: int, revision: int) -> Candle:
            return Candle("AAPL", "1m", ts, 1.0, 1.0, 1.0, 1.0, 1.0, None, None, 1, False,
                          revision, 4_000_000_000)  # fmt: skip

        t0, t1 = 1_704_205_800_000, 1_704_205_860_000
        for ts, revision in [(t0, 1), (t0, 2), (t0, 2), (t0, 1), (t1, 1), (t0, 3), (t1, 1)]:
            await bus.publish(candle_topic("1m"), [candle(ts, revision)])
        await until(lambda: hub.events + hub.stale_skipped == 7, 5, "the hub")
        items = await client.take()
        got = [(i.candle.timestamp, i.candle.revision) for i in items if hasattr(i, "candle")]
        assert got == [(t0, 1), (t0, 2), (t1, 1), (t0, 3)]
        assert hub.stale_skipped == 3
        latest = hub.latest("AAPL", "1m")
        assert latest is not None and (latest.timestamp, latest.revision) == (t1, 1)
        assert hub.latest("MSFT", "1m") is None
        hub.disconnect(client)
        assert hub.clients == 0
    finally:
        await hub.stop()


class _Clock:
    def now_ms(self) -> int:
        return 1_704_205_900_000


async def test_hub_lets_a_reading_wildcard_client_keep_up_with_a_full_market_batch(
    tmp_path: Path,
) -> None:
    """12,000 updates in one bus batch, a wildcard client with the default queue of 1,000 that
    drains as it is woken: the hub yields between chunks, so the client is not dropped."""
    settings = Settings(db=tmp_path / "hub.db")
    bus = MemoryBus()
    hub = CandleHub(settings, SQLiteStore(settings.db, settings.interval_set, _Clock()), bus)
    await hub.start()
    try:
        client = hub.connect("ws")
        assert client is not None
        hub.subscribe(client, [], ["1m"], mode="live")
        received: list[object] = []

        async def drain() -> None:
            while items := await client.take():
                received.extend(items)

        reader = asyncio.create_task(drain())
        batch = [
            Candle(f"S{i}", "1m", 1_704_205_800_000, 1.0, 1.0, 1.0, 1.0, 1.0, None, None, 1,
                   False, 1, 4_000_000_000)
            for i in range(12_000)
        ]  # fmt: skip
        await bus.publish(candle_topic("1m"), batch)
        await until(lambda: len(received) == 12_000, 10, "every update")
        assert hub.dropped_slow == 0 and client.closed_reason is None
        reader.cancel()
    finally:
        await hub.stop()
