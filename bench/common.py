"""Shared parts of the benchmarks: machine facts, percentiles, peak memory, child processes."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import platform
import threading
from types import TracebackType
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")


def machine() -> dict[str, Any]:
    """Facts about the machine a run happened on."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(p * len(sorted_values)) - 1))
    return sorted_values[rank]


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE


class PeakRss:
    """The process's peak resident memory above what it held on entry (sampled every 5 ms)."""

    def __init__(self) -> None:
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self.base = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _child(module: str, target: str, args: tuple[Any, ...], queue: Any) -> None:
    import importlib

    try:
        queue.put(("ok", getattr(importlib.import_module(module), target)(*args)))
    except BaseException as exc:  # report it to the parent rather than hang it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))
        raise


def in_child(module: str, target: str, *args: Any) -> Any:
    """Run ``module.target(*args)`` in a fresh (spawned) process and return its result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(module, target, args, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{module}.{target} failed: {value}")
    return value
