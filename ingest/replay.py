"""File replay, the reading side: files -> batches of validated bars, in file order.

``read_batches`` reads the files one after the other (``ingest.files.read_bars``) and yields the
valid bars in batches of ``batch_size`` (the last one may be shorter), counting bars read and
records rejected (by reason, with the first place each reason occurred) as it goes.
``read_column_batches`` does the same with the bars as columns (``ingest.files.read_bar_columns``:
the columnar history path of ``speedlayer replay``), the same bars and the same counts.
``ReplaySummary`` is what a replay reports: those counts plus what the pipeline made of the
batches (``launch.replay`` feeds them through the same pipeline as live data).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest.files import CHUNK_BYTES, Rejected, read_bar_columns, read_bars
from speedlayer.columns import BarColumns, SymbolTable
from speedlayer.models import Bar


@dataclass
class ReadCounts:
    """What reading files found so far (running totals)."""

    files: int = 0
    bars_read: int = 0  # records read, valid or not
    bytes_read: int = 0  # of the files, as far as the reader has come (for progress)
    rejected: Counter[str] = field(default_factory=Counter)
    first_rejected: dict[str, str] = field(default_factory=dict)  # reason -> file:line


@dataclass
class ReplaySummary(ReadCounts):
    """The counts of the files read, and what the pipeline made of their bars."""

    accepted: int = 0
    duplicates: int = 0
    candles_published: int = 0
    rows_written: int = 0
    expired: int = 0
    ttl_rewritten: int = 0
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
            "ttl_rewritten": self.ttl_rewritten,
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
            *(
                [f"  of which only their retention changed: {self.ttl_rewritten}"]
                if self.ttl_rewritten
                else []
            ),
            f"time: {self.seconds:.2f} s ({self.bars_per_second:,.0f} bars/s)",
        ]
        if self.expired:
            out.append(
                f"note: {self.expired} candles were already past their retention and will not be "
                "returned; replay the same files with e.g. --retention '*=10y' to keep them (a "
                "replay rewrites the retention of every candle it covers)"
            )
        return out


def read_batches(
    paths: Sequence[str | Path], batch_size: int = 5000, counts: ReadCounts | None = None
) -> Iterator[tuple[list[Bar], ReadCounts]]:
    """The valid bars of ``paths``, in file order, in lists of ``batch_size`` (the last one may
    be shorter; none is empty), each with the running counts: ``counts`` (or a new
    ``ReadCounts``), updated in place and complete once the iterator is exhausted."""
    batch_size = max(batch_size, 1)
    counts = counts if counts is not None else ReadCounts()
    batch: list[Bar] = []
    done_bytes = 0
    for path in paths:
        counts.files += 1
        for record in read_bars(path):
            counts.bars_read += 1
            if isinstance(record, Rejected):
                counts.rejected[record.reason] += 1
                counts.first_rejected.setdefault(record.reason, record.where)
                continue
            batch.append(record)
            if len(batch) >= batch_size:
                yield batch, counts
                batch = []
        done_bytes += Path(path).stat().st_size
        counts.bytes_read = done_bytes
    if batch:
        yield batch, counts


def read_column_batches(
    paths: Sequence[str | Path],
    symbols: SymbolTable,
    counts: ReadCounts | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[tuple[BarColumns, ReadCounts]]:
    """``read_batches`` as columns, a chunk of a file at a time (``read_bar_columns``; symbols
    coded by ``symbols``): the same bars in the same order, the same counts. A batch may be
    empty (a chunk of rejected records); ``counts.bytes_read`` says how far the files are read."""
    counts = counts if counts is not None else ReadCounts()
    done_bytes = 0
    for path in paths:
        counts.files += 1
        for chunk in read_bar_columns(path, symbols, chunk_bytes):
            counts.bars_read += chunk.records
            for record in chunk.rejected:
                counts.rejected[record.reason] += 1
                counts.first_rejected.setdefault(record.reason, record.where)
            counts.bytes_read = done_bytes + chunk.position
            yield chunk.columns, counts
        done_bytes += Path(path).stat().st_size
        counts.bytes_read = done_bytes
