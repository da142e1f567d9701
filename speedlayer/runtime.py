"""Process-wide runtime settings for the long-running services."""

from __future__ import annotations

import gc

# Generation-0 collections after this many net allocations (CPython's default is 700). A live
# resampler holds on the order of a million long-lived objects (open buckets and their bars);
# with the default, full collections walk them all so often that they cost about a third of the
# resampler's time (bench/resampler.py measures it). Young-generation collections still run.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Move what start-up allocated out of the collector's way and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
