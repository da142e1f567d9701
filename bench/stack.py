"""The embedded stack as ``speedlayer up`` runs it, in the benchmark's process, with hooks.

Polygon simulator -> WebSocket feed -> in-process bus -> resampler -> SQLite store -> candle bus
-> API with the live hub (uvicorn on a free port, one event loop). The hooks record, in wall time:

* ``sent``: when the simulator wrote each bar's frame to its subscribers, per (symbol, minute),
* ``stored``: when the pipeline finished a batch (stored and published), with the minutes in it,
* ``marks``: when the hub took each chunk of candle updates off the bus (first and last ``seq``),
* ``probe``: garbage collections, event-loop lateness and the pipeline's phases (bench/tail.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.tail import Probe

log = logging.getLogger("bench.stack")


async def until(condition: Any, every_s: float = 0.1) -> None:
    """Poll ``condition`` (state owned by other tasks, with no event to wait on)."""
    while True:
        if condition():
            return
        await asyncio.sleep(every_s)


@dataclass
class Stack:
    sim: Any
    runner: Any
    hub: Any  # the live hub, or with the API in a process of its own a RemoteHub
    port: int
    sent: dict[tuple[str, int], float] = field(default_factory=dict)
    stored: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    marks: list[tuple[int, int, float]] = field(default_factory=list)
    probe: Probe = field(default_factory=Probe)
    api: RemoteAPI | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def sync_marks(self) -> None:
        """With the API in its own process: fetch the hub's marks recorded there so far."""
        if self.api is not None:
            self.marks = await self.api.marks()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds the server's processes have used so far: the pipeline's (this process:
        event loop, store writer thread, simulator) and, when separate, the API's."""
        pipeline = time.process_time()
        api = self.api.hub.cpu_s if self.api is not None else 0.0
        return {"pipeline": pipeline, "api": api}


@contextlib.asynccontextmanager
async def embedded_stack(
    symbols: int,
    speed: float,
    max_clients: int = 100,
    deflate: bool = False,
    api_process: bool = False,
) -> Any:
    """``speedlayer up``'s stack (launch.wiring.embedded_stack) on the simulator, served: by the
    pipeline's own process, or with ``api_process`` as ``speedlayer up --workers 1`` serves it,
    by an API process of its own reading the candles over the relay (speedlayer/bus/relay.py)."""
    from launch.wiring import embedded_stack as build
    from launch.wiring import serve
    from speedlayer.bus.relay import RelayServer
    from speedlayer.config import Settings
    from speedlayer.runtime import tune_gc

    tune_gc()  # as `speedlayer up` does
    tmp = Path(tempfile.mkdtemp(prefix="bench_stack_"))
    settings = Settings(
        db=tmp / "bench.db",
        source="simulator",
        sim_symbols=symbols,
        sim_speed=speed,
        sim_history_min=2,
        backfill_lookback_min=0,
        live_max_connections=max_clients + 100,
        sse_replay_events=0,
    )
    async with build(settings) as embedded, contextlib.AsyncExitStack() as parts:
        if api_process:
            await parts.enter_async_context(
                RelayServer(embedded.bus, settings.relay_path, embedded.clock)
            )
            api_settings = {
                "db": str(settings.db),
                "bus": "relay",
                "relay_socket": str(settings.relay_path),
                "live_max_connections": settings.live_max_connections,
                "sse_replay_events": 0,
            }
            api = await parts.enter_async_context(remote_api(api_settings, deflate))
            result = Stack(embedded.simulator, embedded.runner, api.hub, api.port, api=api)
        else:
            app = embedded.app
            port = await parts.enter_async_context(
                serve(app, ws_per_message_deflate=deflate, backlog=4096)
            )
            result = Stack(embedded.simulator, embedded.runner, app.state.resources.hub, port)
        result.probe.wrap(embedded.runner.pipeline)
        _hook(result, embedded.runner.pipeline)
        result.probe.start()
        try:
            yield result
        finally:
            result.probe.stop()


# -- the API in a process of its own --------------------------------------------------------------


@dataclass
class RemoteHub:
    """The figures of the hub in the API's process, as of its last report (every 0.2 s)."""

    clients: int = 0
    dropped_slow: int = 0
    delivered: int = 0
    events: int = 0
    cpu_s: float = 0.0


@dataclass
class RemoteAPI:
    port: int
    hub: RemoteHub
    commands: Any
    replies: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ask(self, command: str) -> Any:
        async with self.lock:
            self.commands.put(command)
            return await asyncio.to_thread(self.replies.get, True, 60)

    async def marks(self) -> list[tuple[int, int, float]]:
        return list(await self.ask("marks"))

    async def refresh(self) -> None:
        while True:
            for name, value in (await self.ask("stats")).items():
                setattr(self.hub, name, value)
            await asyncio.sleep(0.2)


def _fail_with(owner: asyncio.Task[Any]) -> Any:
    """A done-callback for the poller: if it failed (the API process died or stopped
    answering), cancel ``owner`` rather than let the benchmark wait on figures that no longer
    change; the failure is raised where the poller is awaited."""

    def done(poller: asyncio.Task[None]) -> None:
        if not poller.cancelled() and poller.exception() is not None:
            log.error("the API process stopped answering: %r", poller.exception())
            owner.cancel()

    return done


@contextlib.asynccontextmanager
async def remote_api(settings: dict[str, Any], deflate: bool) -> Any:
    """The API app (``create_app``, as ``speedlayer api`` builds it) served in a spawned process
    on a free port, its hub hooked to record the marks there."""
    ctx = mp.get_context("spawn")
    commands, replies = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_api_process, args=(settings, deflate, commands, replies))
    proc.start()
    try:
        port = await asyncio.to_thread(replies.get, True, 120)
        api = RemoteAPI(port, RemoteHub(), commands, replies)
        poller = asyncio.create_task(api.refresh())
        owner = asyncio.current_task()
        assert owner is not None
        poller.add_done_callback(_fail_with(owner))
        try:
            yield api
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            commands.put("stop")
    finally:
        await asyncio.to_thread(proc.join, 30)
        if proc.is_alive():
            proc.kill()


def _api_process(settings: dict[str, Any], deflate: bool, commands: Any, replies: Any) -> None:
    asyncio.run(_api_main(settings, deflate, commands, replies))


async def _api_main(settings: dict[str, Any], deflate: bool, commands: Any, replies: Any) -> None:
    from api.app import create_app
    from launch.wiring import serve
    from speedlayer.config import Settings
    from speedlayer.runtime import tune_gc

    app = create_app(Settings(**settings))
    async with serve(app, ws_per_message_deflate=deflate, backlog=4096) as port:
        tune_gc()  # as `speedlayer api` does
        hub = app.state.resources.hub
        marks: list[tuple[int, int, float]] = []
        hub._dispatch = _recording(hub, marks)
        replies.put(port)
        while (command := await asyncio.to_thread(commands.get)) != "stop":
            if command == "marks":
                replies.put(marks)
            else:
                replies.put(
                    {
                        "clients": hub.clients,
                        "dropped_slow": hub.dropped_slow,
                        "delivered": hub.delivered,
                        "events": hub.events,
                        "cpu_s": time.process_time(),
                    }
                )


def _hook(stack: Stack, pipeline: Any) -> None:
    sim, hub = stack.sim, stack.hub
    fanout, handle = sim._fanout, pipeline.handle

    def fanout_recording(frame: list[Any], payload: bytes) -> Any:
        receivers = fanout(frame, payload)
        now = time.time()
        sent = stack.sent
        for item in frame:
            if item.bar is not None:
                sent.setdefault((item.symbol, item.bar.t), now)
        return receivers

    async def handle_recording(bars: Any) -> Any:
        result = await handle(bars)
        minutes: dict[int, int] = {}
        for bar in bars:
            minutes[bar.t] = minutes.get(bar.t, 0) + 1
        stack.stored.append((time.time(), minutes))
        return result

    sim._fanout = fanout_recording
    pipeline.handle = handle_recording
    if stack.api is None:
        hub._dispatch = _recording(hub, stack.marks)


def _recording(hub: Any, marks: list[tuple[int, int, float]]) -> Any:
    """The hub's dispatch, recording (first seq, last seq, receipt time) of every chunk."""
    dispatch = hub._dispatch

    def dispatch_recording(candles: Any, at: float) -> None:
        first = hub.seq + 1
        dispatch(candles, at)
        marks.append((first, hub.seq, at))

    return dispatch_recording
