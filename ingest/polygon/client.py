"""Polygon.io (Massive) WebSocket ingest of 1-minute aggregates, with REST gap backfill.

One ``PolygonFeed`` holds one connection to ``{ws_url}/{market}`` (Polygon allows one connection
per cluster and key). Per connection: read the ``connected`` status, send ``auth``, wait for
``auth_success``, then subscribe to every channel in ONE message (``AM.AAPL,AM.MSFT`` or ``AM.*``;
the prefix is ``AM`` for stocks/options/indices, ``XA`` for crypto, ``CA`` for forex).

Tasks (all owned by the feed; ``stop`` cancels and awaits every one):

* **connection** (``polygon-ws``): connects, authenticates, subscribes, then only reads frames into
  a bounded queue: it never parses and never awaits downstream work, so the socket is drained as
  fast as the network delivers (Polygon kills slow consumers). When the queue is full it counts
  the event, logs a rate-limited warning and then waits for room. That wait is the feed's only
  backpressure point, chosen over dropping frames because the raw topic must lose nothing: a
  downstream stall longer than the queue can absorb makes the reader stop reading, the server-side
  buffer grows and Polygon eventually drops the connection (or the keepalive ping times out); the
  feed then reconnects and the REST gap backfill repairs the missed minutes.
* **parser** (``polygon-parse``): ``orjson.loads`` each frame, ``protocol.from_event`` per
  event, rejects counted by reason, status messages counted and logged, validated bars published
  on ``RAW_TOPIC`` in batches (frames already waiting are coalesced, up to ``batch_max`` bars).
* **backfill workers** (``rest.Backfiller``, ``backfill_concurrency`` of them): fetch missed
  minutes over REST and publish them on the same topic. They never block live reading.

Publishing: the raw topic must lose nothing, so a batch is never dropped. A publish that fails
with a retriable error (``speedlayer.errors.BusError``) is tried again with backoff
(``speedlayer.retry.Backoff``, 0.1 s growing to 5 s, full jitter) until it succeeds; meanwhile the
parser reads no more frames (the queue fills and the reader waits, as for a slow bus) and
``problem()`` says what is failing since when. A failure that outlasts ``publish_deadline_s``, or
one that is not retriable, fails the feed for good: ``failed`` is set to a ``ServiceFailed``, the
parser ends, and the service stops with an error. Backfill publishes follow the same rule.

Reconnects: on every failure except ``auth_failed`` (close codes other than ours, 1006 drops,
refused or timed-out connects, keepalive ping timeouts, handshake timeouts) the feed waits an
exponential backoff with full jitter (``Backoff``: uniform in [0, min(backoff_max_s,
backoff_initial_s * 2**failures)]) and reconnects, re-authenticating and re-subscribing. The
failure count resets after a connection that stayed up at least ``backoff_max_s`` - except when
the server announced ``max_connections`` (another connection uses the key), which always counts as
a failure so two clients on one key back off instead of evicting each other in a tight loop.
``auth_failed`` is fatal: ``failed`` is set, the connection task ends and ``wait_connected`` raises
it.

Backfill: at start-up each configured symbol (and each of ``backfill_symbols``) is fetched from
``now - backfill_lookback_min``; with ``["*"]`` each other symbol is fetched that way the first
time it is seen. After every reconnect every
symbol seen so far (plus the configured ones) is fetched from its last bar start seen minus 15
minutes (Polygon re-sends corrected minutes for up to 15 minutes) to now. Overlap with live data
is harmless: bars are upserts downstream.

The API key is never logged: it only travels in the auth message and the REST ``Authorization``
header; the websockets library logs through a redacting adapter (its DEBUG frame dumps would show
the auth message); server texts quoted in logs are redacted; ``PolygonConfig``'s repr masks it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ingest.polygon.protocol import (
    CHANNEL_PREFIX,
    clean_symbols,
    from_event,
    redact,
    subscribe_params,
)
from ingest.polygon.rest import AggsClient, Backfiller, LiveRegister
from speedlayer.bus.base import RAW_TOPIC, Bus
from speedlayer.clock import Clock
from speedlayer.errors import AuthError, ConfigError, PolygonError, ServiceFailed
from speedlayer.models import MINUTE_MS, Bar
from speedlayer.retry import Backoff, is_retriable, retry

log = logging.getLogger("ingest.polygon")

LATE_CORRECTION_MS = 15 * MINUTE_MS  # Polygon re-sends a minute for up to 15 minutes
HANDSHAKE_TIMEOUT_S = 10.0  # connected -> auth reply must arrive within this
CLOSE_TIMEOUT_S = 5.0
MAX_FRAME_BYTES = 64 * 2**20  # a full-market minute can exceed websockets' 1 MiB default
WARN_EVERY_S = 5.0  # rate limit of repeated warnings (queue full, server status warnings)
STOP_WAIT_S = 2.0  # on stop: for the close handshake, and for publishing frames already read
DELAY_HISTORY = 64
PUBLISH_RETRY_INITIAL_S = 0.1  # backoff of a failing publish to the raw topic ...
PUBLISH_RETRY_CAP_S = 5.0  # ... growing to this


@dataclass
class PolygonConfig:
    api_key: str  # never logged (masked in repr)
    ws_url: str = "wss://socket.massive.com"  # base; the market path is appended
    rest_url: str = "https://api.massive.com"
    market: str = "stocks"  # stocks (AM), crypto (XA), forex (CA), options, indices
    symbols: list[str] = field(default_factory=lambda: ["*"])  # tickers, or ["*"] for all
    batch_max: int = 5000  # bars per published batch
    queue_frames: int = 10_000  # bounded queue between the socket reader and parsing
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backfill_lookback_min: int = 60  # at start-up: minutes of history per symbol (0 = none)
    # Also fetched at start-up (with ["*"] no symbol is known before its first live bar):
    # e.g. the symbols the store already has, or the simulator's.
    backfill_symbols: list[str] = field(default_factory=list)
    backfill_concurrency: int = 8
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    publish_deadline_s: float = 300.0  # a publish failing this long fails the feed for good

    def __post_init__(self) -> None:
        problems = []
        if not self.api_key or not self.api_key.strip():
            problems.append("api_key is empty (set POLYGON_API_KEY)")
        if self.market not in CHANNEL_PREFIX:
            problems.append(f"market {self.market!r} is not one of {', '.join(CHANNEL_PREFIX)}")
        if not self.ws_url.startswith(("ws://", "wss://")):
            problems.append(f"ws_url {self.ws_url!r} must start with ws:// or wss://")
        if not self.rest_url.startswith(("http://", "https://")):
            problems.append(f"rest_url {self.rest_url!r} must start with http:// or https://")
        self.symbols = clean_symbols(self.symbols)
        if not self.symbols:
            problems.append('symbols is empty (use ["*"] for all)')
        for name in ("batch_max", "queue_frames", "backfill_concurrency"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.backfill_lookback_min < 0:
            problems.append("backfill_lookback_min must be >= 0")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            problems.append("need 0 < backoff_initial_s <= backoff_max_s")
        if self.ping_interval_s <= 0 or self.ping_timeout_s <= 0:
            problems.append("ping_interval_s and ping_timeout_s must be > 0")
        if not self.publish_deadline_s > 0:
            problems.append("publish_deadline_s must be > 0")
        if problems:
            raise ConfigError("invalid Polygon settings: " + "; ".join(problems))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name == 'api_key' else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"PolygonConfig({shown})"

    @property
    def all_symbols(self) -> bool:
        return self.symbols == ["*"]

    @property
    def url(self) -> str:
        return f"{self.ws_url.rstrip('/')}/{self.market}"


@dataclass
class FeedStats:
    """Counters of one feed (live object; read it any time).

    ``frames`` are WebSocket messages read; ``events`` are the objects in them (status included);
    ``bars_published`` counts live bars, ``backfill_bars`` REST bars; ``rejected`` counts bad frames
    and events (and REST results) by reason; ``status_messages`` counts server statuses by
    ``status``; ``reconnects`` counts waits before a new connection attempt; ``reconnect_delays``
    keeps the last (ceiling_s, delay_s) backoffs; ``backfill_requests`` counts HTTP requests
    (pages and retries); ``backfill_errors`` counts fetches given up, by ``http_<status>``,
    ``transport`` or ``publish``; ``publish_errors`` counts failed attempts to publish a batch
    (live or backfill) and ``publish_retries`` the attempts made again after one;
    ``parse_errors`` counts batches a bug in parsing made the parser skip;
    ``backfill_symbols_requested`` and ``backfill_symbols_done`` count symbol fetches queued and
    finished (successful or given up), ``backfill_rate_limited`` the waits a 429 caused and
    ``backfill_wait_s`` the seconds of all waits before a retry.
    """

    connects: int = 0
    reconnects: int = 0
    frames: int = 0
    events: int = 0
    bars_published: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    status_messages: Counter[str] = field(default_factory=Counter)
    queue_high_water: int = 0
    queue_full_events: int = 0
    backfill_requests: int = 0
    backfill_bars: int = 0
    backfill_errors: Counter[str] = field(default_factory=Counter)
    backfill_symbols_requested: int = 0
    backfill_symbols_done: int = 0
    backfill_rate_limited: int = 0
    backfill_wait_s: float = 0.0
    publish_errors: int = 0
    publish_retries: int = 0
    parse_errors: int = 0
    last_bar_end_ms: int | None = None
    last_disconnect: str | None = None
    reconnect_delays: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=DELAY_HISTORY)
    )

    def lag_ms(self, now_ms: int) -> int | None:
        """How far the newest live bar's end is behind ``now_ms`` (None before the first bar)."""
        return None if self.last_bar_end_ms is None else now_ms - self.last_bar_end_ms


class _RedactingAdapter(logging.LoggerAdapter[logging.Logger]):
    """Formats each record itself and masks the secret (used as the websockets library's logger)."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self._secret = secret

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(str(part) for part in (msg, *args))
        self.logger.log(level, redact(text, self._secret), **kwargs)


class _Session:
    """Facts about one connection attempt, for the reconnect decision."""

    def __init__(self) -> None:
        self.subscribed_at: float | None = None
        self.evicted = False


class PolygonFeed:
    """Polygon WebSocket ingest: validated 1-minute bars on ``RAW_TOPIC``, gaps backfilled."""

    def __init__(
        self,
        config: PolygonConfig,
        bus: Bus,
        clock: Clock,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.clock = clock
        # set once the feed has failed for good: the key was refused (AuthError), or publishing
        # to the raw topic failed past its deadline or not retriably (ServiceFailed)
        self.failed: AuthError | ServiceFailed | None = None
        self._stats = FeedStats()
        self._http = http
        self._own_http = http is None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(config.queue_frames)
        self._connected = asyncio.Event()
        self._failed_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: ClientConnection | None = None
        self._started = False
        self._stopping = False
        self._rng = random.Random()
        self._last_t: dict[str, int] = {}  # symbol -> latest bar start seen (live or REST)
        self._disconnected_at_ms: int | None = None
        self._warned_at: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._ws_logger = _RedactingAdapter(logging.getLogger("ingest.polygon.ws"), config.api_key)
        self._backfiller: Backfiller | None = None
        self.live_register = LiveRegister()
        # publishes being retried right now (live and backfill): token -> wall time of the first
        # failure; and the latest error of any of them
        self._publish_failing: dict[object, float] = {}
        self._publish_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"PolygonFeed({self.config!r})"

    @property
    def stats(self) -> FeedStats:
        return self._stats

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def problem(self) -> str | None:
        """None while the feed works; else what is wrong: the failure that stopped it for good,
        or a publish to the raw topic that keeps failing (and is being retried)."""
        if self.failed is not None:
            return str(self.failed)
        if self._publish_failing:
            since = datetime.fromtimestamp(min(self._publish_failing.values()), UTC)
            return (
                f"publishing to the raw topic failing since {since:%Y-%m-%dT%H:%M:%SZ} "
                f"({self._stats.publish_retries} retries): {self._publish_error}"
            )
        return None

    # lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks; returns at once (use ``wait_connected`` to wait)."""
        if self._started:
            raise PolygonError("PolygonFeed.start() called twice")
        self._started = True
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        config = self.config
        client = AggsClient(
            self._http,
            config.rest_url,
            config.api_key,
            self.clock,
            self._stats,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
        )
        self._backfiller = Backfiller(
            client,
            config.market,
            self.clock,
            self._stats,
            self._publish_backfill,
            concurrency=config.backfill_concurrency,
            batch_max=config.batch_max,
            live=self.live_register,
        )
        await self._backfiller.start()
        self._tasks.append(asyncio.create_task(self._parse_loop(), name="polygon-parse"))
        self._tasks.append(asyncio.create_task(self._run(), name="polygon-ws"))
        if config.backfill_lookback_min:
            start_ms = self.clock.now_ms() - config.backfill_lookback_min * MINUTE_MS
            configured = [] if config.all_symbols else config.symbols
            for symbol in dict.fromkeys([*configured, *config.backfill_symbols]):
                self._backfiller.request(symbol, start_ms)
        log.info(
            "polygon feed starting: %s, %s",
            config.url,
            "all symbols" if config.all_symbols else f"{len(config.symbols)} symbol(s)",
        )

    async def stop(self) -> None:
        """Close the socket with 1000, cancel and await every task, close an owned HTTP client.

        Bounded even when downstream is stuck: the close handshake and the publication of frames
        already read (both in parallel) get ``STOP_WAIT_S`` each; then everything is cancelled.
        """
        self._stopping = True
        await asyncio.gather(self._close_socket(), self._drain())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._backfiller is not None:
            await self._backfiller.stop()
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None
        self._connected.clear()
        log.info("polygon feed stopped")

    async def _close_socket(self) -> None:
        ws = self._ws
        if ws is not None:
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    await ws.close(1000, "client stopping")
            except TimeoutError:
                # Our close frame went out; the echo is stuck behind unread frames (the reader
                # waits on a full queue, so websockets paused reading). Do not wait for it.
                ws.transport.abort()
            except (OSError, ConnectionClosed):
                pass
        run = self._task("polygon-ws")
        if run is not None:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    async def _drain(self) -> None:
        """Give the parser a bounded time to publish the frames already read from the socket."""
        parser = self._task("polygon-parse")
        if parser is None or parser.done():
            return
        try:
            async with asyncio.timeout(STOP_WAIT_S):
                await self._queue.join()
        except TimeoutError:
            log.warning(
                "stop: %d frame(s) read but not published (downstream stuck)", self._queue.qsize()
            )

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - the agreed API
        """Wait until authenticated and subscribed; raise ``failed`` if the feed failed for good
        (an ``AuthError`` when the key was refused).

        Raises TimeoutError when ``timeout`` seconds pass first.
        """
        if self.failed is not None:
            raise self.failed
        if self._connected.is_set():
            return
        waiters = [
            asyncio.create_task(self._connected.wait()),
            asyncio.create_task(self._failed_event.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if self.failed is not None:
            raise self.failed
        if not self._connected.is_set():
            raise TimeoutError(f"not connected to {self.config.url} within {timeout}s")

    async def backfill_idle(self) -> None:
        """Wait until no backfill fetch is pending or running (tests, orderly shutdowns)."""
        if self._backfiller is not None:
            await self._backfiller.join()

    def _task(self, name: str) -> asyncio.Task[None] | None:
        return next((task for task in self._tasks if task.get_name() == name), None)

    def _fail(self, error: AuthError | ServiceFailed) -> None:
        """The feed has failed for good (the first failure is kept)."""
        if self.failed is None:
            self.failed = error
            self._failed_event.set()
            log.error("%s", error)

    # connection ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        backoff = Backoff(
            initial_s=config.backoff_initial_s, cap_s=config.backoff_max_s, rng=self._rng
        )
        while not self._stopping:
            session = _Session()
            try:
                await self._connect_once(session)
                reason = "server closed the connection"
            except AuthError as exc:
                self._fail(exc)
                return
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                reason = _describe_close(exc)
            except InvalidStatus as exc:
                reason = f"WebSocket upgrade refused with HTTP {exc.response.status_code}"
            except (OSError, TimeoutError, InvalidHandshake, PolygonError) as exc:
                reason = f"{type(exc).__name__}: {redact(str(exc), config.api_key)}".rstrip(": ")
            except Exception as exc:  # a bug: log it loudly, but keep the feed alive
                log.exception("unexpected error in the Polygon connection")
                reason = f"unexpected {type(exc).__name__}"
            finally:
                self._ws = None
                if self._connected.is_set():
                    self._connected.clear()
                    self._disconnected_at_ms = self.clock.now_ms()
            if self._stopping:
                return
            self._stats.last_disconnect = reason
            lived = None if session.subscribed_at is None else loop.time() - session.subscribed_at
            if lived is not None and lived >= config.backoff_max_s and not session.evicted:
                backoff.reset()
            ceiling = backoff.ceiling()
            delay = backoff.next_delay()
            assert delay is not None  # neither attempts nor time bound this backoff
            self._stats.reconnects += 1
            self._stats.reconnect_delays.append((ceiling, delay))
            log.warning(
                "polygon %s: %s%s; reconnecting in %.2fs (attempt %d)",
                config.url,
                reason,
                f" after {lived:.1f}s" if lived is not None else "",
                delay,
                backoff.failures,
            )
            await asyncio.sleep(delay)

    async def _connect_once(self, session: _Session) -> None:
        config = self.config
        async with connect(
            config.url,
            open_timeout=HANDSHAKE_TIMEOUT_S,
            ping_interval=config.ping_interval_s,
            ping_timeout=config.ping_timeout_s,
            # a server that cannot answer a ping in time will not answer a close frame either
            close_timeout=min(CLOSE_TIMEOUT_S, config.ping_timeout_s),
            max_size=MAX_FRAME_BYTES,
            logger=self._ws_logger,
        ) as ws:
            self._ws = ws
            if self._stopping:
                return
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    await self._handshake(ws, session)
            except AuthError:
                await ws.close(1000, "authentication failed")  # leaving with an error sends 1011
                raise
            session.subscribed_at = asyncio.get_running_loop().time()
            self._stats.connects += 1
            self._connected.set()
            if self._stats.connects > 1:
                self._schedule_gap_backfill()
            log.info("polygon %s: authenticated and subscribed", config.url)
            await self._read_frames(ws, session)

    async def _handshake(self, ws: ClientConnection, session: _Session) -> None:
        statuses = await self._recv_statuses(ws, session)
        if "connected" not in statuses:
            log.warning("polygon: first frame was not the 'connected' status: %s", statuses)
        await ws.send(orjson.dumps({"action": "auth", "params": self.config.api_key}).decode())
        while "auth_success" not in statuses:
            statuses = await self._recv_statuses(ws, session)
        params = subscribe_params(self.config.market, self.config.symbols)
        await ws.send(orjson.dumps({"action": "subscribe", "params": params}).decode())

    async def _recv_statuses(self, ws: ClientConnection, session: _Session) -> dict[str, str]:
        """One handshake frame: its statuses handled; any data in it goes to the parser."""
        frame = await ws.recv(decode=False)
        self._stats.frames += 1
        try:
            document = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise PolygonError(f"handshake frame is not JSON: {frame[:200]!r}") from exc
        events = document if isinstance(document, list) else [document]
        statuses: dict[str, str] = {}
        data = []
        for event in events:
            if isinstance(event, dict) and event.get("ev") == "status":
                status, message = str(event.get("status")), str(event.get("message", ""))
                statuses[status] = message
                self._on_status(status, message, session)
            else:
                data.append(event)
        if data:
            await self._enqueue(orjson.dumps(data))
        return statuses

    async def _read_frames(self, ws: ClientConnection, session: _Session) -> None:
        """The socket reader: frames into the bounded queue, nothing else."""
        stats = self._stats
        while True:
            frame = await ws.recv(decode=False)
            stats.frames += 1
            if b"max_connections" in frame:  # cheap scan; the parser logs the status itself
                session.evicted = True
            await self._enqueue(frame)

    async def _enqueue(self, frame: bytes) -> None:
        queue = self._queue
        try:
            queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._stats.queue_full_events += 1
            self._warn(
                "queue_full",
                "polygon: frame queue full (%d frames); the reader waits for the parser/bus "
                "(downstream is slower than the feed)",
                queue.maxsize,
            )
            await queue.put(frame)
        size = queue.qsize()
        if size > self._stats.queue_high_water:
            self._stats.queue_high_water = size

    def _on_status(self, status: str, message: str, session: _Session | None) -> None:
        self._stats.status_messages[status] += 1
        message = redact(message, self.config.api_key)
        if status == "auth_failed":
            raise AuthError(
                f"Polygon rejected the API key at {self.config.url}: {message or 'auth_failed'} "
                "- check POLYGON_API_KEY and that the plan includes WebSocket access to "
                f"{self.config.market}; not reconnecting"
            )
        if status == "max_connections":
            if session is not None:
                session.evicted = True
            log.warning(
                "polygon: max_connections - another connection is using this API key (%s); "
                "Polygon allows one connection per cluster and key. The server will close this "
                "one; reconnecting with backoff",
                message,
            )
        elif status in ("connected", "auth_success", "success"):
            log.debug("polygon status %s: %s", status, message)
        else:  # auth_timeout, error, slow_consumer, force_disconnect, unknown
            self._warn(f"status:{status}", "polygon status %s: %s", status, message)

    def _warn(self, key: str, msg: str, *args: object) -> None:
        """A warning logged at most once per WARN_EVERY_S per key (with the suppressed count)."""
        now = asyncio.get_running_loop().time()
        last = self._warned_at.get(key)
        if last is not None and now - last < WARN_EVERY_S:
            self._suppressed[key] += 1
            return
        self._warned_at[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += f" [{suppressed} more since the last warning]"
        log.warning(msg, *args)

    # parsing and publishing ----------------------------------------------------------------------

    async def _parse_loop(self) -> None:
        queue = self._queue
        batch_max = self.config.batch_max
        while True:
            frame = await queue.get()
            taken = 1
            try:
                bars: list[Bar] = []
                try:
                    self._parse_frame(frame, bars)
                    while len(bars) < batch_max and not queue.empty():  # coalesce waiting frames
                        self._parse_frame(queue.get_nowait(), bars)
                        taken += 1
                except Exception:  # a bug must not stop parsing
                    self._stats.parse_errors += 1
                    log.exception("polygon: failed to parse a batch; its frames are skipped")
                    continue
                await self._publish_live(bars)  # retried until it succeeds, or the feed fails
            except ServiceFailed:
                return  # the feed has failed for good (``failed`` is set): parse no more
            finally:
                for _ in range(taken):
                    queue.task_done()

    def _parse_frame(self, frame: bytes, bars: list[Bar]) -> None:
        stats = self._stats
        rejected = stats.rejected
        try:
            document = orjson.loads(frame)
        except orjson.JSONDecodeError:
            rejected["malformed_json"] += 1
            self._warn("malformed_json", "polygon: frame is not JSON: %r", frame[:200])
            return
        if type(document) is dict:
            document = [document]
        elif type(document) is not list:
            rejected["frame_not_array"] += 1
            return
        stats.events += len(document)
        last_t = self._last_t
        lazy_from = None
        if self.config.all_symbols and self.config.backfill_lookback_min:
            lazy_from = self.clock.now_ms() - self.config.backfill_lookback_min * MINUTE_MS
        newest = -1
        for event in document:
            if type(event) is not dict:
                rejected["event_not_object"] += 1
                continue
            if event.get("ev") == "status":
                try:
                    self._on_status(str(event.get("status")), str(event.get("message", "")), None)
                except AuthError as exc:  # auth_failed after auth_success: log, keep reading
                    log.error("%s", exc)
                continue
            record = from_event(event, "ws")
            if isinstance(record, Bar):
                bars.append(record)
                t = record.t
                if t > newest:
                    newest = t
                previous = last_t.get(record.symbol)
                if previous is None:
                    last_t[record.symbol] = t
                    if lazy_from is not None and self._backfiller is not None:
                        self._backfiller.request(record.symbol, lazy_from)
                elif t > previous:
                    last_t[record.symbol] = t
            elif record is not None:
                reason = record.reason
                if reason not in rejected:
                    log.warning("polygon: rejected event (%s): %.300r", reason, event)
                rejected[reason] += 1
        if newest >= 0:
            end = newest + MINUTE_MS
            if stats.last_bar_end_ms is None or end > stats.last_bar_end_ms:
                stats.last_bar_end_ms = end

    async def _publish_live(self, bars: list[Bar]) -> None:
        self.live_register.record(bars)
        batch_max = self.config.batch_max
        for start in range(0, len(bars), batch_max):
            chunk = bars[start : start + batch_max]
            await self._publish(chunk, "live")
            self._stats.bars_published += len(chunk)

    async def _publish_backfill(self, bars: list[Bar]) -> None:
        await self._publish(bars, "backfill")
        last_t = self._last_t
        for bar in bars:
            previous = last_t.get(bar.symbol)
            if previous is None or bar.t > previous:
                last_t[bar.symbol] = bar.t

    async def _publish(self, bars: list[Bar], what: str) -> None:
        """Publish ``bars`` on the raw topic, retrying retriable failures with backoff until
        ``publish_deadline_s``; past it, or on an error that is not retriable, the feed fails
        for good and ``ServiceFailed`` is raised. The batch is never dropped otherwise."""
        if not bars:
            return
        if isinstance(self.failed, ServiceFailed):  # publishing has failed for good already
            raise ServiceFailed(f"not publishing {len(bars)} {what} bars: {self.failed}")
        token = object()
        stats = self._stats

        async def publish() -> None:
            try:
                await self.bus.publish(RAW_TOPIC, bars)
            except Exception as exc:
                stats.publish_errors += 1
                self._publish_error = exc
                self._publish_failing.setdefault(token, time.time())
                raise

        def retriable(error: BaseException) -> bool:
            # once publishing has failed for good, the publishes still retrying give up too
            return is_retriable(error) and not isinstance(self.failed, ServiceFailed)

        def retried(error: BaseException, failures: int) -> None:
            stats.publish_retries += 1

        backoff = Backoff(
            initial_s=PUBLISH_RETRY_INITIAL_S,
            cap_s=PUBLISH_RETRY_CAP_S,
            timeout_s=self.config.publish_deadline_s,
            rng=self._rng,
        )
        try:
            await retry(
                publish,
                what=f"polygon: {what} publish of {len(bars)} bars to {RAW_TOPIC}",
                backoff=backoff,
                retriable=retriable,
                on_failure=retried,
            )
        except Exception as exc:
            since = self._publish_failing.get(token, time.time())
            error = ServiceFailed(
                f"polygon feed stopped: publishing {len(bars)} {what} bars to the raw topic "
                f"failed for {time.time() - since:.0f}s ({type(exc).__name__}: {exc})"
            )
            self._fail(error)
            raise error from exc
        finally:
            if self._publish_failing.pop(token, None) is not None and not self._publish_failing:
                self._publish_error = None
        if backoff.failures:
            log.info("polygon: %s publish to %s succeeded again", what, RAW_TOPIC)

    def _schedule_gap_backfill(self) -> None:
        """After a reconnect: every symbol seen (and configured) from its last bar - 15 min."""
        if self._backfiller is None:
            return
        fallback = self._disconnected_at_ms
        if fallback is None:
            fallback = self.clock.now_ms()
        symbols = dict.fromkeys(self._last_t)
        if not self.config.all_symbols:
            symbols.update(dict.fromkeys(self.config.symbols))
        for symbol in symbols:
            last = self._last_t.get(symbol, fallback)
            self._backfiller.request(symbol, last - LATE_CORRECTION_MS)
        if symbols:
            log.info("polygon: backfilling %d symbol(s) after the reconnect", len(symbols))


def _describe_close(exc: ConnectionClosed) -> str:
    received, sent = exc.rcvd, exc.sent
    if received is not None:
        text = f"server closed with {received.code}"
        return f"{text} ({received.reason})" if received.reason else text
    if sent is not None:  # e.g. 1011 keepalive ping timeout: the server stopped answering
        return f"closed by the client with {sent.code} ({sent.reason})"
    return "connection dropped without a close frame (1006)"
