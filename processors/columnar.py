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

import numpy as np

from speedlayer.columns import (
    BarColumns,
    Bools,
    CandleColumns,
    Floats,
    Ints,
    SymbolTable,
    bar_columns,
    to_candles,
)
from speedlayer.intervals import NO_BUCKET, Interval
from speedlayer.models import Candle

# The column types live in the core (``speedlayer.columns``): the reader makes them, the store
# writes them.
__all__ = [
    "BarColumns",
    "Bools",
    "CandleColumns",
    "Floats",
    "Ints",
    "SymbolTable",
    "bar_columns",
    "candle_columns",
    "final_candles",
    "sequential_sums",
    "to_candles",
]


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


def final_candles(
    bars: BarColumns, names: Sequence[str], intervals: Sequence[Interval]
) -> list[Candle]:
    """The final candles of every interval for ``bars`` (de-duplicated, sorted by (symbol, t))
    as ``Candle`` structs; ``names[code]`` is the symbol of a code."""
    return to_candles(candle_columns(bars, intervals), names)
