"""Where a latency tail comes from: a profile of the embedded stack's event loop during a burst.

The live benchmark (bench/live.py) measures bar -> subscriber latency; this module records, in
the same wall time, what the process was doing meanwhile, so a burst's tail can be attributed
rather than guessed:

* ``gc``: every cyclic garbage collection (``gc.callbacks``): when, which generation, how long
  (the whole process stops meanwhile);
* ``lag``: the event loop's lateness, sampled by a task that sleeps ``every_s`` and notes how much
  later than asked it woke (time the loop spent in one callback, or waiting for the GIL);
* ``spans``: the pipeline's phases per batch, from wrappers around the resampler (``resample``,
  on the event loop), the store's upsert (``write``: the SQLite writer thread; the loop is free
  meanwhile but shares the GIL) and the candle publish (``publish``: the bus and the hub's
  dispatch), and the batch as a whole (``batch``), with its size.

``summarise(start, end)`` condenses a window (one burst) into a few figures.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Probe:
    every_s: float = 0.002
    gc_pauses: list[tuple[float, int, float]] = field(default_factory=list)  # (at, gen, seconds)
    lag: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds late)
    spans: list[tuple[str, float, float, int]] = field(default_factory=list)  # (phase, at, s, n)
    _gc_began: float = 0.0
    _task: asyncio.Task[None] | None = None

    # -- recording -----------------------------------------------------------------------------

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._sample(), name="tail-probe")

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_began = now
        else:
            self.gc_pauses.append((time.time(), info["generation"], now - self._gc_began))

    async def _sample(self) -> None:
        every = self.every_s
        while True:
            began = time.perf_counter()
            await asyncio.sleep(every)
            late = time.perf_counter() - began - every
            if late > 0.001:
                self.lag.append((time.time(), late))

    def wrap(self, pipeline: Any) -> None:
        """Time the pipeline's phases (call before the stack's own recording hooks)."""
        resampler, store = pipeline.resampler, pipeline.store
        process, upsert, handle = resampler.process, store.upsert, pipeline.handle
        spans = self.spans

        def timed_process(bars: Any) -> Any:
            began = time.perf_counter()
            result = process(bars)
            spans.append(("resample", time.time(), time.perf_counter() - began, len(bars)))
            return result

        async def timed_upsert(candles: Any) -> Any:
            began = time.perf_counter()
            result = await upsert(candles)
            spans.append(("write", time.time(), time.perf_counter() - began, len(candles)))
            return result

        async def timed_handle(bars: Any) -> Any:
            began = time.perf_counter()
            result = await handle(bars)
            spans.append(("batch", time.time(), time.perf_counter() - began, len(bars)))
            return result

        resampler.process = timed_process
        store.upsert = timed_upsert
        pipeline.handle = timed_handle
        if pipeline.publish is not None:
            publish = pipeline.publish

            async def timed_publish(candles: Any) -> None:
                began = time.perf_counter()
                await publish(candles)
                spans.append(("publish", time.time(), time.perf_counter() - began, len(candles)))

            pipeline.publish = timed_publish

    # -- reading -------------------------------------------------------------------------------

    def summarise(self, start: float, end: float) -> dict[str, Any]:
        """What the process did between wall times ``start`` and ``end`` (events ending inside)."""
        pauses = [(gen, s) for at, gen, s in self.gc_pauses if start <= at <= end]
        late = sorted((s for at, s in self.lag if start <= at <= end), reverse=True)
        out: dict[str, Any] = {
            "gc_collections": len(pauses),
            "gc_pause_ms_total": _ms(sum(s for _, s in pauses)),
            "gc_pause_ms_max": _ms(max((s for _, s in pauses), default=0.0)),
            "gc_oldest_generation": max((gen for gen, _ in pauses), default=None),
            "loop_late_ms_max": _ms(late[0] if late else 0.0),
            "loop_late_ms_total": _ms(sum(late)),
            "loop_stalls_over_10ms": sum(1 for s in late if s > 0.010),
        }
        for phase in ("batch", "resample", "write", "publish"):
            rows = [(s, n) for name, at, s, n in self.spans if name == phase and start <= at <= end]
            out[phase] = {
                "count": len(rows),
                "items": sum(n for _, n in rows),
                "ms_total": _ms(sum(s for s, _ in rows)),
                "ms_max": _ms(max((s for s, _ in rows), default=0.0)),
            }
        return out

    def collections(self) -> dict[str, dict[str, float]]:
        """Every garbage collection of the run, by generation: how many, total and longest."""
        out: dict[str, dict[str, float]] = {}
        for generation in (0, 1, 2):
            pauses = [s for _, gen, s in self.gc_pauses if gen == generation]
            out[str(generation)] = {
                "count": len(pauses),
                "ms_total": _ms(sum(pauses)),
                "ms_max": _ms(max(pauses, default=0.0)),
            }
        return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
