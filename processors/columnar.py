"""Columnar resampling (numpy): the final candles of a set of bars, as the streaming resampler
(``processors.resampler``) makes them, to the last bit.

Used for history (``processors.history``): bars that are complete, already final by the clock and
unknown to the store are turned into candles in one pass per interval instead of bar by bar, and
each candle is written once. The result must equal the streaming resampler's, field by field:

* the bars are the de-duplicated set (one bar per ``(symbol, t)``), sorted by ``(symbol, t)``;
* open / close are the first / last bar's, high / low the max / min (exact in any order);
* ``volume``, ``Σ(vw·v)`` and ``Σv`` over the bars with ``vw`` are **sequential** float sums in time
  order starting from ``0.0``, as ``_Bucket.append`` / ``recompute`` add them. numpy's
  ``add.reduce``/``reduceat`` sum pairwise (8 accumulators, blocks of 128), which rounds
  differently, so they are not used: ``sequential_sums`` adds position by position (the r-th bar of
  every bucket in one vectorised step), so each bucket's sum is ``((0.0 + x0) + x1) + ...``
  exactly. Bars without ``vw`` add ``+0.0`` to the VWAP sums, which leaves a sum that is never
  ``-0.0`` (it starts at ``+0.0`` and adds non-negative numbers) unchanged;
* trade counts are integer sums (exact in any order);
* a one-bar candle carries its bar's ``vw``; otherwise ``vwap = Σ(vw·v) / Σv`` when some bar has
  ``vw`` and ``Σv > 0``, else null; ``trades`` is null when no bar has ``n``.

``final`` is true and ``revision`` is the number of bars: a bucket created final (history) gets one
revision per distinct bar and none for an exact duplicate. That holds only for buckets without
corrections (a key seen again with other values may or may not change the candle, depending on
what had arrived by then), so the caller routes corrected buckets to the streaming resampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt

from speedlayer.intervals import NO_BUCKET, Interval
from speedlayer.models import Bar, Candle

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


@dataclass
class BarColumns:
    """Bars as columns: ``sym`` codes into a symbol table, ``vw`` NaN and ``n`` -1 when absent
    (validated bars never have a NaN VWAP or a negative trade count)."""

    sym: Ints
    t: Ints
    o: Floats
    h: Floats
    l: Floats  # noqa: E741 - the bar's field name
    c: Floats
    v: Floats
    vw: Floats
    n: Ints

    def __len__(self) -> int:
        return len(self.t)

    def take(self, rows: Ints | Bools) -> BarColumns:
        return BarColumns(
            self.sym[rows], self.t[rows], self.o[rows], self.h[rows], self.l[rows],
            self.c[rows], self.v[rows], self.vw[rows], self.n[rows],
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[BarColumns]) -> BarColumns:
        return BarColumns(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("sym", "t", "o", "h", "l", "c", "v", "vw", "n")
            )
        )


class SymbolTable:
    """Symbol <-> small integer code, stable for the table's life."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, symbol: str) -> int:
        code = self.codes.get(symbol)
        if code is None:
            code = self.codes[symbol] = len(self.names)
            self.names.append(symbol)
        return code


def bar_columns(bars: Sequence[Bar], symbols: SymbolTable) -> BarColumns:
    """Columns of ``bars`` (same order); new symbols get codes in ``symbols``."""
    codes = symbols.codes
    code = symbols.code
    count = len(bars)
    return BarColumns(
        np.fromiter(
            (codes[b.symbol] if b.symbol in codes else code(b.symbol) for b in bars),
            np.int64,
            count,
        ),
        np.fromiter((b.t for b in bars), np.int64, count),
        np.fromiter((b.o for b in bars), np.float64, count),
        np.fromiter((b.h for b in bars), np.float64, count),
        np.fromiter((b.l for b in bars), np.float64, count),
        np.fromiter((b.c for b in bars), np.float64, count),
        np.fromiter((b.v for b in bars), np.float64, count),
        np.fromiter((np.nan if b.vw is None else b.vw for b in bars), np.float64, count),
        np.fromiter((-1 if b.n is None else b.n for b in bars), np.int64, count),
    )


def sequential_sums(values: Floats, starts: Ints, lengths: Ints) -> Floats:
    """Per segment ``[starts[i], starts[i] + lengths[i])`` of the rows of ``values`` (2-D), the
    column sums added one row after the other from ``0.0`` (what a Python loop ``acc += x``
    gives), bit for bit."""
    segments = len(starts)
    acc = np.zeros((segments, values.shape[1]), dtype=np.float64)
    if segments == 0:
        return acc
    order = np.argsort(-lengths, kind="stable")  # longest first: the active ones are a prefix
    first = starts[order]
    descending = -lengths[order]  # ascending
    for r in range(int(lengths.max())):
        active = int(np.searchsorted(descending, -r, side="left"))  # segments longer than r
        acc[:active] += values[first[:active] + r]
    out = np.empty_like(acc)
    out[order] = acc
    return out


@dataclass
class CandleColumns:
    """One interval's final candles as columns (``vwap`` NaN and ``trades`` -1 when null)."""

    interval: Interval
    sym: Ints
    timestamp: Ints
    open: Floats
    high: Floats
    low: Floats
    close: Floats
    volume: Floats
    vwap: Floats
    trades: Ints
    bars: Ints

    def __len__(self) -> int:
        return len(self.timestamp)

    def slice(self, start: int, stop: int) -> CandleColumns:
        return CandleColumns(
            self.interval, self.sym[start:stop], self.timestamp[start:stop],
            self.open[start:stop], self.high[start:stop], self.low[start:stop],
            self.close[start:stop], self.volume[start:stop], self.vwap[start:stop],
            self.trades[start:stop], self.bars[start:stop],
        )  # fmt: skip


def candle_columns(bars: BarColumns, intervals: Sequence[Interval]) -> list[CandleColumns]:
    """Every interval's final candles for ``bars``: de-duplicated (one bar per key) and sorted
    by (symbol, t)."""
    count = len(bars)
    if count == 0:
        return []
    sym, t = bars.sym, bars.t
    has_vw = ~np.isnan(bars.vw)
    has_n = bars.n >= 0
    with np.errstate(invalid="ignore"):
        addends = np.column_stack(
            (bars.v, np.where(has_vw, bars.vw * bars.v, 0.0), np.where(has_vw, bars.v, 0.0))
        )
    trades_in = np.where(has_n, bars.n, 0)
    same_symbol = sym[1:] == sym[:-1]
    out = []
    for interval in intervals:
        bucket = interval.bucket_starts(t)
        if not interval.utc_aligned and (bucket == NO_BUCKET).any():
            # Bars in no bucket of this interval (outside every session): in none of its candles.
            inside = bucket != NO_BUCKET
            out.extend(candle_columns(bars.take(inside), [interval]))
            continue
        new = np.ones(count, dtype=np.bool_)
        new[1:] = ~same_symbol | (bucket[1:] != bucket[:-1])
        starts = np.flatnonzero(new).astype(np.int64)
        ends = np.append(starts[1:], count)
        lengths = ends - starts
        sums = sequential_sums(addends, starts, lengths)
        volume, pv, pv_volume = sums[:, 0], sums[:, 1], sums[:, 2]
        any_vw = np.logical_or.reduceat(has_vw, starts)
        any_n = np.logical_or.reduceat(has_n, starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = pv / pv_volume
        multi = np.where(any_vw & (pv_volume > 0), ratio, np.nan)
        out.append(
            CandleColumns(
                interval,
                sym[starts],
                bucket[starts],
                bars.o[starts],
                np.maximum.reduceat(bars.h, starts),
                np.minimum.reduceat(bars.l, starts),
                bars.c[ends - 1],
                volume,
                np.where(lengths == 1, bars.vw[starts], multi),
                np.where(any_n, np.add.reduceat(trades_in, starts), -1),
                lengths,
            )
        )
    return out


def to_candles(columns: Sequence[CandleColumns], names: Sequence[str]) -> list[Candle]:
    """``Candle`` structs (final, revision = bars) of candle columns; ``names[code]`` is the
    symbol of a code."""
    names_array = np.asarray(names, dtype=object)
    out: list[Candle] = []
    for cc in columns:
        interval = cc.interval
        ttls = interval.bucket_ends(cc.timestamp) // 1000 + interval.retention_s
        bar_counts = cc.bars.tolist()
        out.extend(
            map(
                Candle,
                names_array[cc.sym].tolist(),
                repeat(interval.name),
                cc.timestamp.tolist(),
                cc.open.tolist(),
                cc.high.tolist(),
                cc.low.tolist(),
                cc.close.tolist(),
                cc.volume.tolist(),
                [None if x != x else x for x in cc.vwap.tolist()],  # NaN: null
                [None if x < 0 else x for x in cc.trades.tolist()],
                bar_counts,
                repeat(True),
                bar_counts,  # revision: one per distinct bar (module docstring)
                ttls.tolist(),
            )
        )
    return out


def final_candles(
    bars: BarColumns, names: Sequence[str], intervals: Sequence[Interval]
) -> list[Candle]:
    """The final candles of every interval for ``bars`` (de-duplicated, sorted by (symbol, t))
    as ``Candle`` structs; ``names[code]`` is the symbol of a code."""
    return to_candles(candle_columns(bars, intervals), names)
