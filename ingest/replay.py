"""File replay: bars from files, in file order, through the same pipeline as live data."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest.files import Rejected, read_bars
from processors.pipeline import CandlePipeline
from speedlayer.models import Bar


@dataclass
class ReplaySummary:
    files: int = 0
    bars_read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    first_rejected: dict[str, str] = field(default_factory=dict)
    candles_published: int = 0
    rows_written: int = 0
    expired: int = 0
    seconds: float = 0.0

    @property
    def bars_per_second(self) -> float:
        return self.bars_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "bars_read": self.bars_read,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "first_rejected": self.first_rejected,
            "candles_published": self.candles_published,
            "rows_written": self.rows_written,
            "expired_on_write": self.expired,
            "seconds": round(self.seconds, 3),
            "bars_per_second": round(self.bars_per_second),
        }

    def lines(self) -> list[str]:
        out = [
            f"files: {self.files}",
            f"bars read: {self.bars_read}",
            f"accepted: {self.accepted}",
            f"duplicates (no change): {self.duplicates}",
            f"rejected: {sum(self.rejected.values())}",
        ]
        for reason, count in self.rejected.most_common():
            out.append(f"  {reason}: {count} (first at {self.first_rejected[reason]})")
        out += [
            f"candles written: {self.rows_written}",
            f"time: {self.seconds:.2f} s ({self.bars_per_second:,.0f} bars/s)",
        ]
        if self.expired:
            out.append(
                f"note: {self.expired} candles were already past their retention and will not be "
                "returned; replay history with e.g. --retention '*=10y'"
            )
        return out


async def replay_files(
    paths: Sequence[str | Path], pipeline: CandlePipeline, batch_size: int = 5000
) -> ReplaySummary:
    summary = ReplaySummary()
    started = time.perf_counter()
    now_s = pipeline.store.now_s()
    batch: list[Bar] = []

    async def flush() -> None:
        result = await pipeline.handle(batch)
        summary.accepted += result.accepted
        summary.duplicates += result.duplicates
        summary.candles_published += len(result.candles)
        summary.expired += sum(1 for candle in result.candles if candle.ttl <= now_s)
        batch.clear()

    for path in paths:
        summary.files += 1
        for record in read_bars(path):
            summary.bars_read += 1
            if isinstance(record, Rejected):
                summary.rejected[record.reason] += 1
                summary.first_rejected.setdefault(record.reason, record.where)
                continue
            batch.append(record)
            if len(batch) >= batch_size:
                await flush()
    if batch:
        await flush()
    summary.rows_written = pipeline.stats.rows_written
    summary.seconds = time.perf_counter() - started
    return summary
