"""Process-wide runtime settings for the long-running services."""

from __future__ import annotations

import gc

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
