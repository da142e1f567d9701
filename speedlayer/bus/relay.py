"""The relay: the in-process bus's topics carried to other processes of the same machine.

``speedlayer up --workers N`` runs the feed, the resampler and the store writer in one process and
the API (its live hub and every client socket) in N others, so that serving a thousand WebSocket
clients and resampling a full-market burst no longer share one interpreter
(docs/design.md#api-processes). The pipeline's process serves its :class:`~speedlayer.bus.memory.
MemoryBus` on a Unix socket (:class:`RelayServer`); each API process reads it through a
:class:`RelayBus` (``bus=relay``), a bus that only receives.

Protocol, one connection per subscription. The client sends one JSON line, ``{"topics": [...]}``;
the server opens a broadcast subscription of those topics on its bus and then sends frames, each
a 4-byte big-endian length and a msgpack body: a ``clock`` frame first (the serving process's
market clock: now in epoch ms and its rate in ms per wall second), then ``batch`` frames, the
batches as published, and a ``clock`` frame at least every second. The server's subscription has
the ``drop`` policy: a client that falls :data:`RELAY_QUEUE_BATCHES` batches behind is
disconnected, never waited for, so a stalled API process cannot stall the pipeline. A client
whose connection ends or breaks closes its subscription with an error (``Subscription.failed``):
the owner subscribes again, as the live hub does after any bus failure.

The socket file is created under umask 077: only the user running the pipeline can connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from speedlayer.bus.base import RAW_TOPIC, Bus, ConsumerBus, Subscription
from speedlayer.clock import Clock
from speedlayer.errors import BusError, SubscriptionClosed
from speedlayer.models import Bar, Candle

log = logging.getLogger(__name__)

RELAY_QUEUE_BATCHES = 1024  # batches a client may fall behind before it is disconnected
CLOCK_EVERY_S = 1.0  # the longest time between two clock frames
HELLO_LIMIT = 64 * 1024  # bytes of the client's hello line
FRAME_LIMIT = 256 * 2**20  # bytes of one frame (a batch of a full market's candles is ~10 MB)
MAX_SOCKET_PATH = 104  # bytes: the shortest sun_path of the platforms served (macOS)


class ClockFrame(msgspec.Struct, tag="clock", array_like=True):
    now_ms: int
    rate: float  # market ms per wall second (1000.0 for the wall clock)


class CandleFrame(msgspec.Struct, tag="candles", array_like=True):
    topic: str
    items: list[Candle]


class BarFrame(msgspec.Struct, tag="bars", array_like=True):
    topic: str
    items: list[Bar]


Frame = ClockFrame | CandleFrame | BarFrame
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    body = _ENCODER.encode(frame)
    return len(body).to_bytes(4, "big") + body


def batch_frame(topic: str, batch: Sequence[Any]) -> Frame:
    if topic == RAW_TOPIC:
        return BarFrame(topic, list(batch))
    return CandleFrame(topic, list(batch))


def check_socket_path(path: Path) -> None:
    """ValueError when ``path`` is too long for a Unix socket address."""
    if len(os.fsencode(path)) >= MAX_SOCKET_PATH:
        raise ValueError(
            f"relay socket path too long for a Unix socket ({len(os.fsencode(path))} bytes, at "
            f"most {MAX_SOCKET_PATH - 1}): {path}; set SPEEDLAYER_RELAY_SOCKET to a shorter one"
        )


class RelayServer:
    """Serves ``bus``'s topics on the Unix socket ``path`` (see the module docstring).

    Lifecycle: ``start()`` / ``stop()`` or ``async with``. ``clients`` counts the connections
    being served, ``dropped`` those disconnected for falling behind."""

    def __init__(self, bus: Bus, path: Path, clock: Clock) -> None:
        check_socket_path(path)
        self.bus = bus
        self.path = path
        self.clock = clock
        self.clients = 0
        self.connections_total = 0
        self.dropped = 0
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # the frame of the last batch sent: every connection gets the same batch object from the
        # bus, so N API processes cost one encoding per batch, not N
        self._last: tuple[object, bytes] = (None, b"")

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a process that did not stop cleanly
        old = os.umask(0o077)  # owner-only from the start: no window in which others could connect
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=HELLO_LIMIT
            )
        finally:
            os.umask(old)
        log.info("relay: serving the bus on %s", self.path)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _clock_frame(self) -> bytes:
        rate = float(getattr(self.clock, "rate", 1000.0))
        return encode_frame(ClockFrame(self.clock.now_ms(), rate))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.clients += 1
        self.connections_total += 1
        sub: Subscription | None = None
        try:
            topics = await self._hello(reader)
            if topics is None:
                return  # a probe (RelayBus.ping): connected, and hung up without a word
            sub = self.bus.subscribe(
                topics, maxsize=RELAY_QUEUE_BATCHES, overflow="drop", consumer=None
            )
            await sub.wait_started()
            writer.write(self._clock_frame())
            await writer.drain()
            await self._forward(sub, writer)
        except (BusError, ValueError) as exc:  # a bad hello: say why, then hang up
            log.warning("relay: refused a client: %s", exc)
            with contextlib.suppress(OSError):
                writer.write(msgspec.json.encode({"error": str(exc)}) + b"\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            # stop() cancelled the handler; it ends here, as asyncio's stream server expects of
            # a connection callback (a cancelled one is logged as an error)
            pass
        finally:
            self.clients -= 1
            self._handlers.discard(task)
            if sub is not None:
                if sub.closed_reason is not None and sub.closed_reason.startswith("slow"):
                    self.dropped += 1
                    log.warning("relay: a client fell %d batches behind: disconnected",
                                RELAY_QUEUE_BATCHES)  # fmt: skip
                sub.close("relay client gone")
            writer.close()

    async def _hello(self, reader: asyncio.StreamReader) -> list[str] | None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10.0)
            if not line:
                return None
            hello = msgspec.json.decode(line)
        except (TimeoutError, msgspec.DecodeError) as exc:  # (an overlong line: ValueError)
            raise ValueError(f"no valid hello line: {exc}") from None
        topics = hello.get("topics") if isinstance(hello, dict) else None
        if not (isinstance(topics, list) and topics and all(isinstance(t, str) for t in topics)):
            raise ValueError('the hello line must be {"topics": [<topic>, ...]}')
        return topics

    async def _forward(self, sub: Subscription, writer: asyncio.StreamWriter) -> None:
        next_clock = time.monotonic() + CLOCK_EVERY_S
        while True:
            try:
                topic, batch = await asyncio.wait_for(
                    sub.get(), max(0.0, next_clock - time.monotonic())
                )
            except TimeoutError:
                pass
            except SubscriptionClosed:
                return  # dropped as a slow consumer, or the bus stopped: hang up
            else:
                last, data = self._last
                if last is not batch:
                    data = encode_frame(batch_frame(topic, batch))
                    self._last = (batch, data)
                writer.write(data)
            if time.monotonic() >= next_clock:
                writer.write(self._clock_frame())
                next_clock = time.monotonic() + CLOCK_EVERY_S
            await writer.drain()


class RelayClock:
    """The serving process's market clock, as its last clock frame gave it, run on by the wall
    clock at the frame's rate (the wall clock until a frame has arrived)."""

    def __init__(self) -> None:
        self.synced = False
        self._now_ms = time.time_ns() // 1_000_000
        self._rate = 1000.0
        self._t0 = time.monotonic()

    def set(self, now_ms: int, rate: float) -> None:
        self._now_ms, self._rate, self._t0 = now_ms, rate, time.monotonic()
        self.synced = True

    def now_ms(self) -> int:
        return self._now_ms + int((time.monotonic() - self._t0) * self._rate)


class RelayBus(ConsumerBus):
    """The receiving end (``bus=relay``): every subscription is a broadcast one, fed by its own
    connection to the :class:`RelayServer` at ``path``. It publishes nothing."""

    def __init__(self, path: Path) -> None:
        super().__init__("LATEST")
        check_socket_path(path)
        self.path = path
        self.clock = RelayClock()
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        self._started = False
        await self._close_subscriptions()

    async def publish(self, topic: str, batch: Sequence[Any]) -> None:
        raise BusError("the relay bus only receives: publish on the serving process's bus")

    async def ping(self) -> None:
        """BusError unless the relay accepts a connection and its clock has been heard."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), 5.0)
        except (OSError, TimeoutError) as exc:
            raise BusError(f"relay at {self.path} not reachable: {exc}") from None
        writer.close()
        if not self.clock.synced:
            raise BusError(f"relay at {self.path}: no clock frame received yet")

    def _start_consumers(self, subscription: Subscription, consumer: str | None) -> list[Any]:
        if not self._started:
            raise BusError("the relay bus is not started")
        started = self._starting_event(subscription, subscription.topics)
        return [asyncio.create_task(self._feed(subscription, started), name="relay-consumer")]

    async def _feed(self, sub: Subscription, started: asyncio.Event) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=FRAME_LIMIT)
            writer.write(msgspec.json.encode({"topics": list(sub.topics)}) + b"\n")
            await writer.drain()
            while True:
                head = await reader.readexactly(4)
                if head[:1] == b"{":  # the server refused the hello: its error line
                    line = head + await reader.readline()
                    raise BusError(f"the relay refused the subscription: {line.decode()!r}")
                size = int.from_bytes(head, "big")
                if size > FRAME_LIMIT:
                    raise BusError(f"relay frame of {size} bytes (limit {FRAME_LIMIT})")
                frame = _DECODER.decode(await reader.readexactly(size))
                if isinstance(frame, ClockFrame):
                    self.clock.set(frame.now_ms, frame.rate)
                    started.set()
                elif not await self._hand_over(sub, frame.topic, frame.items):
                    return  # this subscription's own queue overflowed (drop): it is closed
        except (OSError, asyncio.IncompleteReadError, msgspec.DecodeError, BusError) as exc:
            error = exc if isinstance(exc, BusError) else BusError(f"relay connection: {exc!r}")
            sub.close("relay connection lost", error=error)
        finally:
            started.set()
            if writer is not None:
                writer.close()
