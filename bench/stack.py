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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.tail import Probe


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
    probe: Probe = field(default_factory=Probe)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextlib.asynccontextmanager
async def embedded_stack(
    symbols: int, speed: float, max_clients: int = 100, deflate: bool = False
) -> Any:
    """``speedlayer up``'s stack (launch.wiring.embedded_stack) on the simulator, served."""
    from launch.wiring import embedded_stack as build
    from launch.wiring import serve
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
    async with build(settings) as embedded:
        app = embedded.app
        async with serve(app, ws_per_message_deflate=deflate, backlog=4096) as port:
            hub = app.state.resources.hub
            result = Stack(embedded.simulator, embedded.runner, hub, port)
            result.probe.wrap(embedded.runner.pipeline)
            _hook(result, embedded.runner.pipeline)
            result.probe.start()
            try:
                yield result
            finally:
                result.probe.stop()


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
