"""``speedlayer replay``: bars from files, in file order, into the store.

``ingest.replay.read_column_batches`` reads the files into batches of validated bars as columns
(``ingest.replay.read_batches`` as ``Bar`` structs where every batch takes the pipeline). They go
to a ``processors.history.HistoryLoader``: history that is complete, final and new to the store is
resampled in large batches by the columnar engine and each final candle is written once; the rest
(buckets the store or the resampler already holds, corrections, candles not final yet) goes
through ``CandlePipeline.handle`` in batches of ``batch_size``, as live data does. The candles are
the same either way (processors/history.py). With intervals that do not all divide the longest
one, every batch goes through the pipeline. The summary adds what was made of the batches.

``on_batch``, if given, is called after each batch with the summary so far (bars read and
rejected) and the bars accepted so far: ``speedlayer replay`` shows progress with it, against
``estimate_bars``, the number of bars the files' sizes suggest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ingest.replay import ReplaySummary, read_batches, read_column_batches
from processors.history import HISTORY_BATCH_BARS, HistoryLoader, columnar_possible
from processors.pipeline import CandlePipeline

OnBatch = Callable[[ReplaySummary, int], None]  # (the summary so far, bars accepted so far)
SAMPLE_BYTES = 256 * 1024


def estimate_bars(paths: Sequence[str | Path]) -> int:
    """The bars ``paths`` hold, estimated from their sizes and the records in their first 256 KiB
    (lines of CSV or JSON, or bar objects of a JSON document on one line)."""
    total = 0.0
    for path in paths:
        size = Path(path).stat().st_size
        with open(path, "rb") as handle:
            sample = handle.read(SAMPLE_BYTES)
        records = max(sample.count(b"\n"), sample.count(b'"t":'), sample.count(b'"ev":'), 1)
        total += size * records / max(len(sample), 1)
    return round(total)


async def replay_files(
    paths: Sequence[str | Path],
    pipeline: CandlePipeline,
    batch_size: int = 5000,
    *,
    history_batch: int = HISTORY_BATCH_BARS,
    columnar: bool = True,
    on_batch: OnBatch | None = None,
) -> ReplaySummary:
    summary = ReplaySummary()
    started = time.perf_counter()
    if columnar and columnar_possible(pipeline):
        loader = HistoryLoader(pipeline, batch_bars=history_batch, stream_batch=batch_size)
        for columns, _ in read_column_batches(paths, loader.symbols, summary):
            await loader.add_columns(columns)
            if on_batch is not None:
                on_batch(summary, loader.counts.accepted)
        await loader.finish()
        counts = loader.counts
        summary.accepted = counts.accepted
        summary.duplicates = counts.duplicates
        summary.ttl_rewritten = counts.ttl_rewritten
        summary.candles_published = counts.candles_published
    else:
        for batch, _ in read_batches(paths, batch_size, summary):
            result = await pipeline.handle(batch)
            summary.accepted += result.accepted
            summary.duplicates += result.duplicates
            summary.ttl_rewritten += result.ttl_rewritten
            summary.candles_published += len(result.candles)
            if on_batch is not None:
                on_batch(summary, summary.accepted)
    summary.rows_written = pipeline.stats.rows_written
    summary.expired = pipeline.stats.candles_expired
    summary.seconds = time.perf_counter() - started
    return summary
