"""Process-wide runtime settings for the long-running services."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import cast

# Collect young objects after 20,000 net allocations instead of CPython's 700, and the middle
# generation every 4 of those. A live resampler holds on the order of a million long-lived
# objects (open buckets, the bars they cover); with the defaults, collections walk them so often
# that they cost about a third of the resampler's time (bench/resampler.py). Larger settings
# (50,000 / 20) were no faster but made middle-generation passes long enough to show in the
# WebSocket fan-out's p99 (bench/ws_fanout.py: 294 ms against 230 ms with these).
GC_THRESHOLDS = (20_000, 4, 10)


def tune_gc() -> None:
    """Move what start-up allocated out of the collector's way and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


_TRIM = _malloc_trim()


def trim_memory() -> bool:
    """Give the C heap's free pages back to the operating system; False where not possible.

    CPython frees objects to the C allocator, which keeps the pages for reuse: after a burst
    (1,000 WebSocket clients each taking a snapshot) a service's resident memory stays at the
    burst's peak although its objects are gone (docs/benchmarks.md#soak). glibc returns them
    only on ``malloc_trim``."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
