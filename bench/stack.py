"""The embedded stack as ``speedlayer up`` runs it, in the benchmark's process, with hooks.

Polygon simulator -> WebSocket feed -> in-process bus -> resampler -> SQLite store -> candle bus
-> API with the live hub (uvicorn on a free port, one event loop). The hooks record, in wall time:

* ``sent``: when the simulator wrote each bar's frame to its subscribers, per (symbol, minute),
* ``stored``: when the pipeline finished a batch (stored and published), with the minutes in it,
* ``marks``: when the hub took each chunk of candle updates off the bus (first and last ``seq``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    hub: Any
    port: int
    sent: dict[tuple[str, int], float] = field(default_factory=dict)
    stored: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    marks: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextlib.asynccontextmanager
async def embedded_stack(
    symbols: int, speed: float, max_clients: int = 100, deflate: bool = False
) -> Any:
    import uvicorn

    from api.app import create_app
    from ingest.polygon import PolygonConfig, PolygonFeed
    from ingest.simulator import PolygonSimulator, SimulatorConfig
    from processors.pipeline import CandlePipeline
    from processors.resampler import Resampler
    from processors.runner import PipelineRunner
    from speedlayer.bus.memory import MemoryBus
    from speedlayer.config import Settings
    from speedlayer.runtime import tune_gc
    from speedlayer.store.sqlite import SQLiteStore

    tune_gc()  # as `speedlayer up` does
    tmp = Path(tempfile.mkdtemp(prefix="bench_stack_"))
    settings = Settings(
        db=tmp / "bench.db", live_max_connections=max_clients + 100, sse_replay_events=0
    )
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(
            PolygonSimulator(SimulatorConfig(symbols=symbols, speed=speed, history_minutes=2))
        )
        clock = sim.clock
        bus = await stack.enter_async_context(MemoryBus())
        store = await stack.enter_async_context(
            SQLiteStore(settings.db, settings.interval_set, clock)
        )
        pipeline = CandlePipeline(Resampler(settings.interval_set, clock), store)
        runner = PipelineRunner(pipeline, bus, clock)
        await runner.start()
        stack.push_async_callback(runner.stop)
        feed = PolygonFeed(
            PolygonConfig(
                api_key="simulator",
                ws_url=sim.ws_url,
                rest_url=sim.rest_url,
                symbols=["*"],
                backfill_lookback_min=0,
            ),
            bus,
            clock,
        )
        await feed.start()
        stack.push_async_callback(feed.stop)
        app = create_app(settings, store=store, clock=clock, bus=bus, runner=runner)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=listener.getsockname()[1],
                log_level="warning",
                ws_per_message_deflate=deflate,
                backlog=4096,
            )
        )
        server_task = asyncio.create_task(server.serve(sockets=[listener]))
        await until(lambda: server.started)
        hub = app.state.resources.hub
        result = Stack(sim, runner, hub, listener.getsockname()[1])
        _hook(result, pipeline)
        try:
            yield result
        finally:
            server.should_exit = True
            await server_task


def _hook(stack: Stack, pipeline: Any) -> None:
    sim, hub = stack.sim, stack.hub
    fanout, handle, dispatch = sim._fanout, pipeline.handle, hub._dispatch

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

    def dispatch_recording(candles: Any, at: float) -> None:
        first = hub.seq + 1
        dispatch(candles, at)
        stack.marks.append((first, hub.seq, at))

    sim._fanout = fanout_recording
    pipeline.handle = handle_recording
    hub._dispatch = dispatch_recording
