"""A local Polygon.io (Massive) server: the minute-aggregate WebSocket stream and the REST
aggregates endpoint on ONE port, with synthetic or replayed data and fault injection.

The official clients work against it unchanged::

    WebSocketClient(api_key="k", feed=f"127.0.0.1:{port}", secure=False, market="stocks")
    RESTClient(api_key="k", base=f"http://127.0.0.1:{port}")

Protocol (docs/polygon.md#handshake): every frame is a JSON array; ``connected`` is sent on open;
``auth`` and ``subscribe``/``unsubscribe`` are accepted as soon as they arrive (the Go client sends
them without waiting); one ``success`` status per channel; ``AM.*`` wildcard; nothing but status
messages before ``auth_success``; client garbage gets an ``error`` status, never a crash.

Time: a simulated clock starts at ``start_ms`` and runs at ``speed`` simulated minutes per wall
second (0 = real time). The bars of minute M are generated (or taken from the replay files) when
the clock passes M + 60 s and sent at once, in frames of up to 200 events spread over at most
0.8 wall seconds (``0.25 / speed`` when that is shorter). Frames are encoded once and written to
every ``*`` subscriber; connections with explicit tickers get their own filtered frames.

``served()`` is the truth a correct ingester must end up with: the last version sent of every
bar, as the WebSocket events carry it (``n`` absent; ``vw`` absent on forex). REST serves the same
bars (plus the pre-generated history before ``start_ms``) with their trade counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import logging
import math
import random
import select
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ingest.files import Rejected, read_bars
from ingest.simulator.data import (
    MARKETS,
    BarStore,
    EventEncoder,
    compact_ticker,
    malformed_frame,
    market_symbols,
    wire_bar,
)
from ingest.simulator.faults import BurstPlanner, Item
from ingest.simulator.rest import RestApi, error_body
from ingest.synthetic import RandomWalk
from speedlayer.errors import ConfigError
from speedlayer.models import MINUTE_MS, Bar
from speedlayer.polygon_ws import (
    AUTH_FAILED,
    AUTH_SUCCESS,
    CONNECTED,
    channels,
    status_frame,
    subscribed,
)

log = logging.getLogger("speedlayer.simulator")

MAX_BURST_SPREAD_S = 0.8
SLOW_CONSUMER_BYTES = 64 * 1024 * 1024  # a connection this far behind is dropped
STALL_MAX_S = 300.0  # a stalled connection whose client never gives up is aborted after this
MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit "
    "for your account. Please contact support at https://polygon.io/contact to increase your "
    "limit."
)
_POLICIES = ("evict_oldest", "reject_newest")


_MAX_CONNECTIONS = status_frame("max_connections", MAX_CONNECTIONS_MESSAGE)


@dataclass
class FaultConfig:
    disconnect_every_s: float | None = None  # close each client connection N seconds after open
    disconnect_code: int = 1011  # ... with this close code (1006 = abort TCP without close frame)
    duplicate_rate: float = 0.0  # fraction of bars sent twice (exact duplicate, a later frame)
    correction_rate: float = 0.0  # fraction of bars re-sent 1..15 simulated minutes later, changed
    out_of_order_rate: float = 0.0  # fraction of bars delayed into a later frame (same/next minute)
    malformed_rate: float = 0.0  # fraction of frames followed by a malformed frame
    auth_fail: bool = False  # every auth gets auth_failed
    max_connections: int | None = None  # cap on simultaneous authenticated connections
    max_connections_policy: str = "evict_oldest"  # or "reject_newest"
    stall_after_s: float | None = None  # after N seconds a connection stops reading


@dataclass
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    symbols: int = 100  # synthetic symbol count (up to ~12,000 = US full market)
    speed: float = 0.0  # simulated minutes per wall-clock second; 0 = real time
    replay: list[str] = field(default_factory=list)  # replay files instead of synthetic data
    seed: int = 7
    start_ms: int | None = None  # default: now (synthetic) / the first bar's minute (replay)
    history_minutes: int = 120  # synthetic: minutes of history before start, served by REST only
    keep_minutes: int = 24 * 60  # how much history REST keeps
    api_key: str | None = None  # None: any key is accepted; else others get auth_failed
    market: str = "stocks"  # stocks (AM, sym), crypto (XA, pair), forex (CA, pair)
    faults: FaultConfig = field(default_factory=FaultConfig)


@dataclass
class SimulatorStats:
    connections_total: int = 0  # WebSocket connections accepted
    connections_open: int = 0
    auth_successes: int = 0
    auth_failures: int = 0
    frames_sent: int = 0  # data frames written to connections (malformed ones included)
    events_sent: int = 0  # data events written to connections
    bars_emitted: int = 0  # feed-level events (duplicates and corrections included)
    minutes_sent: int = 0
    duplicates_injected: int = 0
    corrections_injected: int = 0
    out_of_order_injected: int = 0
    malformed_injected: int = 0
    disconnects_injected: int = 0
    stalls_injected: int = 0
    max_connections_closed: int = 0
    slow_consumers_dropped: int = 0
    client_errors: int = 0  # error statuses sent in reply to client garbage
    rest_requests: int = 0
    rest_errors: int = 0
    replay_bars: int = 0
    replay_rejected: int = 0
    last_burst_events: int = 0
    last_burst_build_s: float = 0.0  # generate + encode + plan one minute
    last_burst_send_s: float = 0.0  # first frame to last frame written (spread pauses included)
    last_burst_write_s: float = 0.0  # time spent writing frames (pauses excluded)
    max_burst_build_s: float = 0.0
    max_burst_send_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SimulatedClock:
    """Simulated epoch ms: ``origin_ms`` at the anchor instant, advancing ``rate`` simulated ms
    per wall second."""

    def __init__(self, origin_ms: int, speed: float) -> None:
        self.rate = speed * MINUTE_MS if speed > 0 else 1000.0
        self.anchor(origin_ms)

    def anchor(self, origin_ms: int) -> None:
        self._origin_ms = origin_ms
        self._t0 = time.monotonic()

    def now_ms(self) -> int:
        return self._origin_ms + int((time.monotonic() - self._t0) * self.rate)

    def wall_seconds_until(self, sim_ms: int) -> float:
        return (sim_ms - self.now_ms()) / self.rate


@dataclass(eq=False)
class _Conn:
    id: int
    ws: ServerConnection
    authed: bool = False
    auth_seq: int = 0
    wildcard: bool = False
    subs: set[str] = field(default_factory=set)  # data symbols of the minute channel
    other: set[str] = field(default_factory=set)  # accepted channels that carry no data here
    stalled: bool = False
    kicked: bool = False
    closed: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class PolygonSimulator:
    def __init__(self, config: SimulatorConfig) -> None:
        _validate(config)
        self.config = config
        self.faults = config.faults
        self._spec = MARKETS[config.market]
        self.stats = SimulatorStats()
        self._store = BarStore()
        self._encoder = EventEncoder(self._spec)
        self._rest = RestApi(self._store, self._resolve_rest, config.api_key)
        self._fault_rng = random.Random(config.seed * 1_000_003 + 1)
        self._planner = BurstPlanner(
            self._fault_rng,
            self._encoder,
            duplicate_rate=self.faults.duplicate_rate,
            correction_rate=self.faults.correction_rate,
            out_of_order_rate=self.faults.out_of_order_rate,
        )
        start = config.start_ms if config.start_ms is not None else _wall_ms()
        self._clock = SimulatedClock(start, config.speed)
        self._live_start_ms = start - start % MINUTE_MS
        self._symbols: set[str] = set()
        self._by_compact: dict[str, str] = {}
        self._walk: RandomWalk | None = None
        self._replay: dict[int, list[Bar]] = {}
        self._replay_last_ms = 0
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count(1)
        self._auth_seq = itertools.count(1)
        self._server: Server | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._minute_sent = asyncio.Condition()
        self._finished = False
        self.port = config.port

    # --- public API --------------------------------------------------------------------------

    @property
    def clock(self) -> SimulatedClock:
        """Simulated time (epoch ms) for the rest of the process."""
        return self._clock

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def minutes_sent(self) -> int:
        return self.stats.minutes_sent

    @property
    def finished(self) -> bool:
        """Replay only: every bar (and every late event owed) has been sent."""
        return self._finished

    @property
    def live_start_ms(self) -> int:
        """The first streamed minute; REST history lies before it."""
        return self._live_start_ms

    @property
    def symbols(self) -> list[str]:
        return sorted(self._symbols)

    def served(self) -> dict[tuple[str, int], Bar]:
        """The latest version of every bar sent so far, as the events carry it (within
        ``keep_minutes``): what a correct ingester must end up with."""
        spec = self._spec
        return {
            (bar.symbol, bar.t): wire_bar(bar, spec)
            for bar in self._store.bars_since(self._live_start_ms)
        }

    async def wait_minutes(self, n: int, timeout: float) -> None:  # noqa: ASYNC109 (the API)
        """Wait until ``n`` more minutes have been sent (or a replay has finished); raises
        TimeoutError after ``timeout`` seconds."""
        target = self.stats.minutes_sent + n
        async with asyncio.timeout(timeout), self._minute_sent:
            await self._minute_sent.wait_for(
                lambda: self.stats.minutes_sent >= target or self._finished
            )

    async def __aenter__(self) -> PolygonSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        config = self.config
        if config.replay:
            await self._load_replay()
        else:
            await self._load_synthetic()
        for symbol in self._symbols:
            self._by_compact.setdefault(compact_ticker(symbol), symbol)
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,  # liveness is the client's business (it pings; we answer)
            close_timeout=2,
            max_size=4 * 1024 * 1024,
            logger=logging.getLogger("speedlayer.simulator.ws"),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        origin = config.start_ms if config.start_ms is not None else self._default_origin()
        self._clock.anchor(origin)
        self._run_task = asyncio.create_task(self._run(), name="simulator-minutes")
        log.info(
            "Polygon simulator on %s (%s, %d symbols, speed %s)",
            self.ws_url, config.market, len(self._symbols), config.speed or "real time",
        )  # fmt: skip

    async def stop(self) -> None:
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a crash was logged
                await self._run_task
            self._run_task = None
        for conn in list(self._conns.values()):
            for timer in conn.timers:
                timer.cancel()
            if conn.stalled:
                conn.ws.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- data ----------------------------------------------------------------------------------

    def _default_origin(self) -> int:
        if self.config.replay:
            return self._live_start_ms
        return max(_wall_ms(), self._live_start_ms)

    async def _load_synthetic(self) -> None:
        config = self.config
        if config.start_ms is None:  # "now" is when we start, not when we were configured
            now = _wall_ms()
            self._live_start_ms = now - now % MINUTE_MS
        names = market_symbols(config.market, config.symbols)
        self._symbols = set(names)
        self._walk = RandomWalk(names, config.seed)
        first = self._live_start_ms - config.history_minutes * MINUTE_MS
        for i in range(config.history_minutes):
            self._store.extend(self._walk.minute(first + i * MINUTE_MS))
            if i % 5 == 4:
                await asyncio.sleep(0)  # keep the event loop responsive on big markets
        self._store.prune(self._live_start_ms - config.keep_minutes * MINUTE_MS)

    async def _load_replay(self) -> None:
        config = self.config
        groups, read, rejected = await asyncio.to_thread(_read_replay, config.replay)
        self.stats.replay_bars, self.stats.replay_rejected = read, rejected
        if not groups:
            raise ConfigError(f"no valid bars in {', '.join(config.replay)}")
        if config.start_ms is None:
            self._live_start_ms = min(groups)
        for minute in sorted(groups):
            bars = groups[minute]
            self._symbols.update(bar.symbol for bar in bars)
            if minute < self._live_start_ms:
                self._store.extend(bars)
                del groups[minute]
        self._replay = groups
        self._replay_last_ms = max(groups) if groups else self._live_start_ms - MINUTE_MS
        if self._replay_last_ms < self._live_start_ms:
            self._finished = True

    def _minute_bars(self, minute_ms: int) -> list[Bar] | None:
        """The bars of one minute; None once a replay is exhausted."""
        if self._walk is not None:
            return self._walk.minute(minute_ms)
        if minute_ms > self._replay_last_ms:
            return None
        return self._replay.pop(minute_ms, [])

    def _resolve_rest(self, ticker: str) -> str | None:
        if ticker in self._symbols:
            return ticker
        return self._by_compact.get(compact_ticker(ticker))

    def _resolve_ws(self, ticker: str) -> str:
        if ticker in self._symbols:
            return ticker
        return self._by_compact.get(compact_ticker(ticker), ticker)

    # --- the minute loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        minute = self._live_start_ms
        keep_ms = self.config.keep_minutes * MINUTE_MS
        stats = self.stats
        try:
            while not self._finished:
                await self._sleep_until(minute + MINUTE_MS)
                built = time.perf_counter()
                bars = self._minute_bars(minute)
                if bars is None and not self._planner.pending():
                    self._finished = True
                    break
                frames = self._planner.plan(minute, bars or [], self._store.get)
                counts = self._planner.counts
                stats.duplicates_injected = counts.duplicates
                stats.corrections_injected = counts.corrections
                stats.out_of_order_injected = counts.out_of_order
                sending = time.perf_counter()
                await self._send_burst(frames)
                done = time.perf_counter()
                stats.last_burst_events = sum(len(frame) for frame in frames)
                stats.last_burst_build_s = sending - built
                stats.last_burst_send_s = done - sending
                stats.max_burst_build_s = max(stats.max_burst_build_s, sending - built)
                stats.max_burst_send_s = max(stats.max_burst_send_s, done - sending)
                if bars is not None:
                    stats.minutes_sent += 1
                self._store.prune(minute + MINUTE_MS - keep_ms)
                minute += MINUTE_MS
                async with self._minute_sent:
                    self._minute_sent.notify_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("simulator minute loop failed")
            raise
        async with self._minute_sent:
            self._minute_sent.notify_all()
        log.info("replay finished after %d minutes", stats.minutes_sent)

    async def _sleep_until(self, sim_ms: int) -> None:
        delay = self._clock.wall_seconds_until(sim_ms)
        if delay > 0:
            await asyncio.sleep(delay + 0.002)  # a hair late rather than early

    async def _send_burst(self, frames: list[list[Item]]) -> None:
        if not frames:
            return
        minutes_per_s = self.config.speed if self.config.speed > 0 else 1 / 60
        pause = min(MAX_BURST_SPREAD_S, 0.25 / minutes_per_s) / len(frames)
        malformed_rate = self.faults.malformed_rate
        store, stats = self._store, self.stats
        writing = 0.0
        for index, frame in enumerate(frames):
            if index:
                await asyncio.sleep(pause if pause > 0.001 else 0)
            if not frame:
                continue
            began = time.perf_counter()
            for item in frame:
                if item.bar is not None:
                    store.put(item.bar)
            stats.bars_emitted += len(frame)
            payload = orjson.dumps([item.event for item in frame])
            receivers = self._fanout(frame, payload)
            if malformed_rate and self._fault_rng.random() < malformed_rate:
                sample = frame[-1]
                bad = malformed_frame(
                    self._spec, sample.event, sample.symbol, _frame_minute(frame),
                    self._fault_rng.randrange(4),
                )  # fmt: skip
                stats.malformed_injected += 1
                live = [conn.ws for conn in receivers if not conn.closed]
                broadcast(live, bad, text=True)
                stats.frames_sent += len(live)
            writing += time.perf_counter() - began
        stats.last_burst_write_s = writing

    def _fanout(self, frame: list[Item], payload: bytes) -> list[_Conn]:
        """Write one frame to every authenticated subscriber; return who got something."""
        wild: list[_Conn] = []
        filtered: list[_Conn] = []
        for conn in self._conns.values():
            if conn.authed and not conn.stalled and not conn.closed:
                if conn.wildcard:
                    wild.append(conn)
                elif conn.subs:
                    filtered.append(conn)
        stats = self.stats
        if wild:
            broadcast([conn.ws for conn in wild], payload, text=True)
            stats.frames_sent += len(wild)
            stats.events_sent += len(frame) * len(wild)
        receivers = wild
        for conn in filtered:
            subs = conn.subs
            parts = [item.event for item in frame if item.symbol in subs]
            if parts:
                broadcast([conn.ws], orjson.dumps(parts), text=True)
                stats.frames_sent += 1
                stats.events_sent += len(parts)
                receivers.append(conn)
        for conn in receivers:
            transport = conn.ws.transport
            if transport.get_write_buffer_size() > SLOW_CONSUMER_BYTES:
                log.warning("connection %d is a slow consumer; dropping it", conn.id)
                stats.slow_consumers_dropped += 1
                conn.closed = True
                transport.abort()
        return receivers

    # --- WebSocket connections -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Conn(next(self._ids), ws)
        self._conns[conn.id] = conn
        stats = self.stats
        stats.connections_total += 1
        stats.connections_open += 1
        loop = asyncio.get_running_loop()
        faults = self.faults
        if faults.disconnect_every_s is not None:
            conn.timers.append(
                loop.call_later(faults.disconnect_every_s, self._inject_disconnect, conn)
            )
        if faults.stall_after_s is not None:
            conn.timers.append(loop.call_later(faults.stall_after_s, self._stall, conn))
        try:
            await ws.send(CONNECTED, text=True)
            async for message in ws:
                await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            conn.authed = False
            for timer in conn.timers:
                timer.cancel()
            del self._conns[conn.id]
            stats.connections_open -= 1

    async def _on_message(self, conn: _Conn, message: str | bytes) -> None:
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            await self._error(conn, 'invalid JSON: expected {"action": ..., "params": ...}')
            return
        if not isinstance(msg, dict):
            await self._error(conn, "invalid message: expected a JSON object with action, params")
            return
        action, params = msg.get("action"), msg.get("params")
        if action == "auth":
            await self._auth(conn, params)
        elif action in ("subscribe", "unsubscribe"):
            if not conn.authed:
                await self._error(conn, f"not authorized: {action} needs a successful auth first")
            elif not isinstance(params, str):
                await self._error(conn, f"invalid {action}: params must be a string")
            else:
                await self._subscribe(conn, action == "subscribe", params)
        else:
            shown = action if isinstance(action, str) else orjson.dumps(action).decode()
            await self._error(conn, f"unknown action: {shown[:100]}")

    async def _error(self, conn: _Conn, message: str) -> None:
        self.stats.client_errors += 1
        await conn.ws.send(status_frame("error", message), text=True)

    async def _auth(self, conn: _Conn, key: object) -> None:
        expected = self.config.api_key
        if (
            self.faults.auth_fail
            or not isinstance(key, str)
            or (expected is not None and key != expected)
        ):
            self.stats.auth_failures += 1
            await conn.ws.send(AUTH_FAILED, text=True)
            return
        self.stats.auth_successes += 1
        await conn.ws.send(AUTH_SUCCESS, text=True)
        if conn.authed or conn.kicked:
            return
        conn.authed = True
        conn.auth_seq = next(self._auth_seq)
        for victim in self._over_limit(conn):
            victim.kicked = True
            victim.authed = False
            self._spawn(self._kick(victim))

    def _over_limit(self, newcomer: _Conn) -> list[_Conn]:
        cap = self.faults.max_connections
        if cap is None:
            return []
        active = sorted(
            (c for c in self._conns.values() if c.authed and not c.closed),
            key=lambda c: c.auth_seq,
        )
        excess = len(active) - cap
        if excess <= 0:
            return []
        if self.faults.max_connections_policy == "evict_oldest":
            return active[:excess]
        return [newcomer]

    async def _kick(self, conn: _Conn) -> None:
        self.stats.max_connections_closed += 1
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.send(_MAX_CONNECTIONS, text=True)
            await conn.ws.close(1008, "max_connections")

    async def _subscribe(self, conn: _Conn, subscribe: bool, params: str) -> None:
        spec = self._spec
        for item in channels(params):
            if isinstance(item, str):
                await self._error(conn, item)
                continue
            token, prefix, ticker = item
            if prefix not in spec.channels:
                await self._error(conn, f"unknown channel {prefix[:20]} in {token[:100]}")
                continue
            if prefix == spec.event:
                if ticker == "*":
                    conn.wildcard = subscribe
                elif subscribe:
                    conn.subs.add(self._resolve_ws(ticker))
                else:
                    conn.subs.discard(self._resolve_ws(ticker))
            elif subscribe:
                conn.other.add(token)
            else:
                conn.other.discard(token)
            await conn.ws.send(subscribed(subscribe, token), text=True)

    # --- connection faults ---------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _inject_disconnect(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self.stats.disconnects_injected += 1
        code = self.faults.disconnect_code
        conn.authed = False
        if code == 1006:
            conn.closed = True
            conn.ws.transport.abort()
        else:
            self._spawn(self._close(conn, code, "simulated disconnect"))

    async def _close(self, conn: _Conn, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.close(code, reason)

    def _stall(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self.stats.stalls_injected += 1
        conn.stalled = True
        conn.ws.transport.pause_reading()
        self._spawn(self._watch_stalled(conn))

    async def _watch_stalled(self, conn: _Conn) -> None:
        """A stalled connection reads nothing, so it would never notice its client leaving; poll
        the socket for the peer's FIN/RST instead, and abort it then (or after STALL_MAX_S)."""
        transport = conn.ws.transport
        sock = transport.get_extra_info("socket")
        poller = None
        if sock is not None and hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), getattr(select, "POLLRDHUP", 0) | select.POLLHUP)
        deadline = time.monotonic() + STALL_MAX_S
        while time.monotonic() < deadline and not transport.is_closing():
            await asyncio.sleep(0.1)
            if poller is not None and poller.poll(0):
                break
        conn.closed = True
        transport.abort()

    # --- HTTP: REST and the upgrade path -------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        split = urlsplit(request.path)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if split.path.rstrip("/") == "/" + self._spec.name:
                return None
            return _json_response(
                404,
                error_body(404, f"no WebSocket cluster at {split.path}; "
                           f"this simulator serves /{self._spec.name}"),
            )  # fmt: skip
        self.stats.rest_requests += 1
        headers = {key.lower(): value for key, value in request.headers.raw_items()}
        host = headers.get("host") or f"{self.config.host}:{self.port}"
        status, body = self._rest.handle(
            request.method, split.path, split.query, headers, f"http://{host}"
        )
        if status != 200:
            self.stats.rest_errors += 1
        return _json_response(status, body)


def _frame_minute(frame: list[Item]) -> int:
    bar = next((item.bar for item in frame if item.bar is not None), None)
    return bar.t if bar is not None else 0


def _json_response(status: int, body: dict[str, object]) -> Response:
    data = orjson.dumps(body)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(data))),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, data)


def _read_replay(paths: list[str]) -> tuple[dict[int, list[Bar]], int, int]:
    """Bars of the replay files grouped by minute (file order within a minute), under their
    canonical symbols (``X:BTCUSD`` is replayed as ``BTC-USD``: ``speedlayer.symbols``)."""
    groups: dict[int, list[Bar]] = {}
    read = rejected = 0
    for path in paths:
        for record in read_bars(path):
            read += 1
            if isinstance(record, Rejected):
                rejected += 1
                continue
            groups.setdefault(record.t, []).append(record)
    return groups, read, rejected


def _validate(config: SimulatorConfig) -> None:
    faults = config.faults
    problems = []
    if config.market not in MARKETS:
        problems.append(f"market must be one of {', '.join(MARKETS)}, got {config.market!r}")
    if config.symbols < 1 and not config.replay:
        problems.append("symbols must be at least 1")
    if not (math.isfinite(config.speed) and config.speed >= 0):
        problems.append("speed must be >= 0 (0 = real time)")
    if config.history_minutes < 0:
        problems.append("history_minutes must be >= 0")
    if config.keep_minutes < 1:
        problems.append("keep_minutes must be >= 1")
    if not 0 <= config.port <= 65535:
        problems.append("port must be 0..65535")
    for name in ("duplicate_rate", "correction_rate", "out_of_order_rate", "malformed_rate"):
        rate = getattr(faults, name)
        if not 0.0 <= rate <= 1.0:
            problems.append(f"{name} must be in [0, 1], got {rate}")
    for name in ("disconnect_every_s", "stall_after_s"):
        value = getattr(faults, name)
        if value is not None and not value > 0:
            problems.append(f"{name} must be > 0 seconds")
    code = faults.disconnect_code
    if code != 1006 and not (code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014
                             or 3000 <= code <= 4999):  # fmt: skip
        problems.append(f"disconnect_code {code} cannot be sent (use 1006 for a TCP abort)")
    if faults.max_connections is not None and faults.max_connections < 1:
        problems.append("max_connections must be >= 1")
    if faults.max_connections_policy not in _POLICIES:
        problems.append(f"max_connections_policy must be one of {', '.join(_POLICIES)}")
    if problems:
        raise ConfigError("invalid simulator config: " + "; ".join(problems))
