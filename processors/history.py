"""History in batches: bars from files through the columnar engine where that is exact, through
the streaming pipeline everywhere else (``speedlayer replay``; docs/design.md#data-path).

The streaming pipeline writes every revision of every candle (a 4h candle of a replayed file is
written once per bar). History that is complete and already final needs only its final candles,
and ``processors.columnar`` makes those in a few vectorised passes, identical to the streaming
resampler's (field by field, revision included). Which path a bar takes is decided per *unit*:
one symbol's bars in one bucket of the longest interval (every interval divides it, so a unit
holds whole buckets of every interval).

A unit goes through the columnar engine when all of these hold, and through
``CandlePipeline.handle`` (restore from the store, the streaming resampler) otherwise:

* it is **complete**: the newest bar read ends at least ``lateness_ms`` after the unit's end (so
  late bars have had their chance), or the input has ended;
* it is **final** by the clock: its end plus ``grace_ms`` has passed;
* it is **untouched**: it starts at or after the symbol's *frontier*: the end of the symbol's
  latest stored bar when the symbol was first seen (the store may know its buckets) and the end of
  every unit processed since, by either path (the resampler may hold it, or the store does now);
* it has **no corrections**: every repeat of a key is an exact duplicate. (With a correction the
  revision depends on what had arrived when; the streaming resampler counts it.)

Each unit is handled by one path with all of its bars, in arrival order, and a unit that is not
complete yet is carried to the next batch. So last write wins per key, a unit already stored is
merged by the existing restore path, and revisions keep increasing: a late bar for a unit written
by the columnar engine finds it in the store (``Resampler.note_stored_until`` is told) and is
applied on top of it, as after a restart. Memory is bounded by the batch plus the carried units,
kept as columns (at most one longest interval, 4h, of the market when the file is in time order),
plus the candle columns of the passes being written (``HISTORY_WRITES_IN_FLIGHT``), whose rows a
store makes ``HISTORY_WRITE_CANDLES`` at a time.

A pass runs when ``batch_bars`` bars have come since the last, or an eighth of that once the
earliest pending unit has completed, so candles are written while the next bars are read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from processors.columnar import (
    BarColumns,
    Bools,
    Ints,
    SymbolTable,
    bar_columns,
    candle_columns,
)
from processors.pipeline import CandlePipeline
from speedlayer.models import MINUTE_MS, Bar

HISTORY_BATCH_BARS = 200_000  # bars read between two passes of the columnar engine
HISTORY_WRITE_CANDLES = 50_000  # candles made into rows at a time by a store's column write
HISTORY_WRITES_IN_FLIGHT = 2  # passes' store writes in flight while the next bars are read
_UNKNOWN = np.iinfo(np.int64).min  # frontier of a symbol the store was not asked about yet


@dataclass
class HistoryCounts:
    """What the batches did so far (running totals, as ``ReplaySummary`` reports them)."""

    accepted: int = 0
    duplicates: int = 0
    ttl_rewritten: int = 0
    candles_published: int = 0
    columnar_bars: int = 0  # bars (with duplicates) resampled by the columnar engine
    streamed_bars: int = 0  # bars (with duplicates) handed to the streaming pipeline


def columnar_possible(pipeline: CandlePipeline) -> bool:
    """Whether every interval divides the longest one (units hold whole buckets). Exchange-aligned
    intervals (docs/design.md#exchange-time-candles) have no such unit: history takes the
    streaming path then."""
    intervals = pipeline.resampler.intervals
    if not all(interval.utc_aligned for interval in intervals):
        return False
    sizes = [interval.interval_ms for interval in intervals]
    return all(max(sizes) % size == 0 for size in sizes)


class HistoryLoader:
    """Feed ``add`` bars in arrival order, then ``finish``; ``counts`` says what happened."""

    def __init__(
        self,
        pipeline: CandlePipeline,
        *,
        batch_bars: int = HISTORY_BATCH_BARS,
        stream_batch: int = 5000,
        write_candles: int = HISTORY_WRITE_CANDLES,
        writes_in_flight: int = HISTORY_WRITES_IN_FLIGHT,
    ) -> None:
        if not columnar_possible(pipeline):
            raise ValueError("the columnar path needs intervals that divide the longest one")
        self.pipeline = pipeline
        self.resampler = pipeline.resampler
        self.intervals = self.resampler.intervals
        self.unit = max(self.intervals, key=lambda interval: interval.interval_ms)
        self.unit_ms = self.unit.interval_ms
        self.batch_bars = max(1, batch_bars)
        self.stream_batch = max(1, stream_batch)
        self.write_candles = max(1, write_candles)
        self.writes_in_flight = max(1, writes_in_flight)
        self.counts = HistoryCounts()
        self.symbols = SymbolTable()
        self._frontier = np.full(0, _UNKNOWN, dtype=np.int64)  # per symbol code
        self._pending_cols: list[BarColumns] = []
        self._pending = 0  # bars carried (their columns only: Bars are rebuilt to stream)
        self._fresh = 0  # bars added since the last pass
        self._watermark = -1  # end of the newest bar added
        self._next_unit_end = 0  # a unit ending here completes once the watermark passes it
        self._writing: deque[asyncio.Future[None]] = deque()  # columnar writes in flight

    async def add(self, bars: Sequence[Bar]) -> None:
        if bars:
            await self.add_columns(bar_columns(bars, self.symbols))

    async def add_columns(self, cols: BarColumns) -> None:
        """``add`` of bars as columns, their symbols coded by ``self.symbols`` (the file reader
        makes them so: ``ingest.files.read_bar_columns``)."""
        if not len(cols):
            return
        self._pending_cols.append(cols)
        self._pending += len(cols)
        self._watermark = max(self._watermark, int(cols.t.max()) + MINUTE_MS)
        self._fresh += len(cols)
        # A pass when a batch has come, or as soon as units complete (their candles are written
        # while the next bars are read).
        completes = self._watermark - self.resampler.lateness_ms >= self._next_unit_end
        if self._fresh >= self.batch_bars or (completes and self._fresh >= self.batch_bars // 8):
            await self._pass(final=False)

    async def finish(self) -> None:
        try:
            await self._pass(final=True)
        finally:
            await self._drain()

    # -- one pass over what is pending ---------------------------------------------------------

    async def _pass(self, final: bool) -> None:
        self._fresh = 0
        if not self._pending:
            return
        cols = BarColumns.concat(self._pending_cols)
        await self._learn_new_symbols()
        start = self.unit.bucket_starts(cols.t)
        end = self.unit.bucket_ends(start)
        now = self.resampler.clock.now_ms()
        touched = start < self._frontier[cols.sym]
        stream = touched | (end + self.resampler.grace_ms > now)
        if final:
            complete = np.ones(len(cols), dtype=np.bool_)
        else:
            complete = end <= self._watermark - self.resampler.lateness_ms
        candidate = complete & ~stream
        unit_id = (cols.sym << 32) | (start // self.unit_ms)
        corrected = _corrected_units(cols, unit_id, candidate)
        if corrected.size:
            stream |= candidate & np.isin(unit_id, corrected)
        columnar = candidate & ~stream
        done = stream | columnar
        # The frontier moves past every unit handled now, whichever path took it.
        np.maximum.at(self._frontier, cols.sym[done], end[done])
        stream_rows = np.flatnonzero(stream)
        columnar_rows = np.flatnonzero(columnar)
        keep_rows = np.flatnonzero(~done)
        # The next pass is due once the earliest pending unit completes.
        if keep_rows.size:
            self._next_unit_end = int(end[keep_rows].min())
        else:
            horizon = self._watermark - self.resampler.lateness_ms
            self._next_unit_end = self.unit.bucket_end(self.unit.bucket_start(horizon))
        self._pending_cols = [cols.take(keep_rows)] if keep_rows.size else []
        self._pending = len(keep_rows)
        if columnar_rows.size:
            await self._columnar(cols.take(columnar_rows))
        if stream_rows.size:
            await self._stream(self._bars(cols.take(stream_rows)))

    async def _learn_new_symbols(self) -> None:
        """Ask the store where the bars of symbols seen for the first time end, and tell the
        resampler too (it would ask the same question)."""
        known = len(self._frontier)
        names = self.symbols.names[known:]
        if not names:
            return
        store = self.pipeline.store
        until = await self.pipeline.read_store(lambda: store.last_bar_times(names))
        self.resampler.note_stored_until(until)
        fresh = [-1 if until.get(name) is None else until[name] + MINUTE_MS for name in names]  # type: ignore[operator]
        self._frontier = np.concatenate([self._frontier, np.asarray(fresh, dtype=np.int64)])

    async def _columnar(self, cols: BarColumns) -> None:
        # By symbol name, then time (the store's key order: B-tree pages are filled in order),
        # stable: the first arrival of a key comes first.
        order = np.lexsort((cols.t, self.symbols.ranks()[cols.sym]))
        cols = cols.take(order)
        first = np.ones(len(cols), dtype=np.bool_)
        first[1:] = (cols.sym[1:] != cols.sym[:-1]) | (cols.t[1:] != cols.t[:-1])
        unique = cols.take(first)  # every repeat is an exact duplicate (no corrections here)
        # One store call per pass, the longest interval first and the 1-minute table last: a
        # store writes a call in that order (SQLite in one transaction, the rows made from the
        # columns ``write_candles`` at a time), so a crash never records a bar whose longer
        # candles are missing. Up to ``writes_in_flight`` passes are written while the next
        # batches are read; whatever reads the store waits for them all first.
        names = self.symbols.names
        columns = list(reversed(candle_columns(unique, self.intervals)))
        made = sum(len(cc) for cc in columns)
        await self._drain(self.writes_in_flight - 1)
        self._writing.append(
            asyncio.ensure_future(
                self.pipeline.write_history_columns(
                    columns,
                    names,
                    accepted=len(unique),
                    duplicates=len(cols) - len(unique),
                    slice_candles=self.write_candles,
                )
            )
        )
        await asyncio.sleep(0)  # let it hand the columns to the store's writer now
        # The store now holds these bars: a late bar for one of their buckets restores it.
        last = np.flatnonzero(np.append(unique.sym[1:] != unique.sym[:-1], True))
        ends = zip(unique.sym[last].tolist(), unique.t[last].tolist(), strict=True)
        self.resampler.note_stored_until({names[s]: t for s, t in ends})
        counts = self.counts
        counts.accepted += len(unique)
        counts.duplicates += len(cols) - len(unique)
        counts.candles_published += made
        counts.columnar_bars += len(cols)

    def _bars(self, cols: BarColumns) -> list[Bar]:
        """The Bars of columns, in their order: the values ``validate_bar`` made them from."""
        names = self.symbols.names
        values = zip(
            cols.sym.tolist(), cols.t.tolist(), cols.o.tolist(), cols.h.tolist(),
            cols.l.tolist(), cols.c.tolist(), cols.v.tolist(), cols.vw.tolist(),
            cols.n.tolist(), strict=True,
        )  # fmt: skip
        return [
            Bar(names[s], t, o, h, lo, c, v, None if vw != vw else vw, None if n < 0 else n)
            for s, t, o, h, lo, c, v, vw, n in values
        ]

    async def _drain(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` writes are in flight, oldest first (a failure is raised
        here)."""
        while len(self._writing) > keep:
            await self._writing.popleft()

    async def _stream(self, bars: list[Bar]) -> None:
        await self._drain()  # the pipeline may restore buckets just written
        counts = self.counts
        step = self.stream_batch
        for at in range(0, len(bars), step):
            result = await self.pipeline.handle(bars[at : at + step])
            counts.accepted += result.accepted
            counts.duplicates += result.duplicates
            counts.ttl_rewritten += result.ttl_rewritten
            counts.candles_published += len(result.candles)
        counts.streamed_bars += len(bars)


def _corrected_units(cols: BarColumns, unit_id: Ints, rows: Bools) -> Ints:
    """The units among ``rows`` holding a key whose repeats are not all equal to its first."""
    index = np.flatnonzero(rows)
    if index.size == 0:
        return np.empty(0, dtype=np.int64)
    sym, t = cols.sym[index], cols.t[index]
    order = index[np.lexsort((t, sym))]  # stable: arrival order within a key
    s, tt = cols.sym[order], cols.t[order]
    head = np.ones(len(order), dtype=np.bool_)
    head[1:] = (s[1:] != s[:-1]) | (tt[1:] != tt[:-1])
    if head.all():
        return np.empty(0, dtype=np.int64)
    first = order[np.maximum.accumulate(np.where(head, np.arange(len(order)), 0))]
    o = order
    vw, vw0 = cols.vw[o], cols.vw[first]
    same = (
        (cols.o[o] == cols.o[first])
        & (cols.h[o] == cols.h[first])
        & (cols.l[o] == cols.l[first])
        & (cols.c[o] == cols.c[first])
        & (cols.v[o] == cols.v[first])
        & (cols.n[o] == cols.n[first])
        & ((vw == vw0) | (np.isnan(vw) & np.isnan(vw0)))
    )
    return np.unique(unit_id[o[~same]])
