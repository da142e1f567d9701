"""``speedlayer replay``: bars from files, in file order, through the same pipeline as live data.

``ingest.replay.read_batches`` reads the files into batches of validated bars; each batch goes
through ``CandlePipeline.handle`` in turn, and the summary adds what the pipeline made of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ingest.replay import ReplaySummary, read_batches
from processors.pipeline import CandlePipeline


async def replay_files(
    paths: Sequence[str | Path], pipeline: CandlePipeline, batch_size: int = 5000
) -> ReplaySummary:
    summary = ReplaySummary()
    started = time.perf_counter()
    for batch, _ in read_batches(paths, batch_size, summary):
        result = await pipeline.handle(batch)
        summary.accepted += result.accepted
        summary.duplicates += result.duplicates
        summary.ttl_rewritten += result.ttl_rewritten
        summary.candles_published += len(result.candles)
    summary.rows_written = pipeline.stats.rows_written
    summary.expired = pipeline.stats.candles_expired
    summary.seconds = time.perf_counter() - started
    return summary
