"""One candle from the 1-minute bars of its bucket: the candle rule of
docs/design.md#candle-semantics as a pure function, for code that builds candles outside the
resampler (the API's sizes that are not stored intervals, computed on the fly from the 1-minute
table: api/aggregates.py).

The arithmetic is the resampler's (``processors/resampler.py``, ``_Bucket.recompute`` and
``_Bucket.candle``), operation for operation, so the two agree bit for bit:

- open of the earliest bar, close of the latest, max high, min low;
- volume, ``Σ(vw·v)`` and ``Σv`` over the bars with a VWAP, and trades summed in time order,
  each starting from ``0.0`` (trades from ``0``);
- VWAP: a one-bar candle keeps its bar's ``vw`` exactly; otherwise ``Σ(vw·v) / Σv`` over the bars
  that carry ``vw``, or None when none does or their volume is 0;
- trades: None when no bar carries ``n``.

``tests/unit/speedlayer/test_aggregate.py`` checks it against the resampler on random buckets.
"""

from __future__ import annotations

from collections.abc import Sequence

from speedlayer.models import Bar, Candle


def candle_from_bars(
    symbol: str,
    interval: str,
    start_ms: int,
    bars: Sequence[Bar],
    *,
    final: bool,
    revision: int,
    ttl: int,
) -> Candle:
    """The candle of ``bars`` (one bucket's bars, in time order, at least one), keyed by
    (``symbol``, ``interval``, ``start_ms``); ``final``, ``revision`` and ``ttl`` are the
    caller's."""
    if not bars:
        raise ValueError("a candle needs at least one bar")
    first, last = bars[0], bars[-1]
    high = max([bar.h for bar in bars])
    low = min([bar.l for bar in bars])
    volume, pv, pv_volume, trades, has_vw, has_n = ordered_sums(bars)
    if len(bars) == 1:
        vwap = first.vw
    elif has_vw and pv_volume > 0:
        vwap = pv / pv_volume
    else:
        vwap = None
    return Candle(
        symbol, interval, start_ms, first.o, high, low, last.c, volume, vwap,
        trades if has_n else None, len(bars), final, revision, ttl,
    )  # fmt: skip


def ordered_sums(bars: Sequence[Bar]) -> tuple[float, float, float, int, bool, bool]:
    """``(volume, Σ(vw·v), Σv over bars with vw, trades, any vw, any n)`` of ``bars`` in the
    order given (time order), each sum from zero: the sums every candle is made of, here and in
    the resampler's rebuild of a bucket."""
    volume = pv = pv_volume = 0.0
    trades = 0
    has_vw = has_n = False
    for bar in bars:
        volume += bar.v
        if bar.vw is not None:
            has_vw = True
            pv += bar.vw * bar.v
            pv_volume += bar.v
        if bar.n is not None:
            has_n = True
            trades += bar.n
    return volume, pv, pv_volume, trades, has_vw, has_n
