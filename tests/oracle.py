"""An independent oracle for candles: pandas groupby over the de-duplicated bar set.

Written separately from the resampler on purpose: it de-duplicates with pandas
(``drop_duplicates(keep="last")`` on arrival order), buckets with integer floor division and
aggregates with pandas reductions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import pandas as pd

from speedlayer.models import Bar

CandleValues = tuple[float, float, float, float, float, float | None, int | None, int]


def oracle_candles(
    bars: Iterable[Bar], intervals: dict[str, int]
) -> dict[tuple[str, str, int], CandleValues]:
    """(interval, symbol, bucket start) -> (open, high, low, close, volume, vwap, trades, bars)."""
    frame = pd.DataFrame(
        [(b.symbol, b.t, b.o, b.h, b.l, b.c, b.v, b.vw, b.n) for b in bars],
        columns=["symbol", "t", "o", "h", "l", "c", "v", "vw", "n"],
    )
    out: dict[tuple[str, str, int], CandleValues] = {}
    if frame.empty:
        return out
    frame = frame.drop_duplicates(subset=["symbol", "t"], keep="last").sort_values(["symbol", "t"])
    frame["vw"] = frame["vw"].astype("float64")
    frame["n"] = frame["n"].astype("Float64")
    frame["pv"] = frame["vw"] * frame["v"]
    frame["v_with_vw"] = frame["v"].where(frame["vw"].notna())
    for name, interval_ms in intervals.items():
        frame["bucket"] = frame["t"] // interval_ms * interval_ms
        grouped = frame.groupby(["symbol", "bucket"], sort=True)
        agg = grouped.agg(
            open=("o", "first"),
            high=("h", "max"),
            low=("l", "min"),
            close=("c", "last"),
            volume=("v", "sum"),
            pv=("pv", lambda s: s.sum(min_count=1)),
            v_with_vw=("v_with_vw", lambda s: s.sum(min_count=1)),
            trades=("n", lambda s: s.sum(min_count=1)),
            bars=("t", "count"),
            first_vw=("vw", "first"),
        )
        for key, row in agg.iterrows():
            symbol, bucket = cast(tuple[str, int], key)
            vwap = None
            if row["bars"] == 1:  # a one-bar candle carries the bar's own vw
                vwap = None if pd.isna(row["first_vw"]) else float(row["first_vw"])
            elif pd.notna(row["pv"]) and pd.notna(row["v_with_vw"]) and row["v_with_vw"] > 0:
                vwap = float(row["pv"]) / float(row["v_with_vw"])
            trades = None if pd.isna(row["trades"]) else int(row["trades"])
            out[(name, str(symbol), int(bucket))] = (
                float(row["open"]),
                float(row["high"]),
                float(row["low"]),
                float(row["close"]),
                float(row["volume"]),
                vwap,
                trades,
                int(row["bars"]),
            )
    return out


def values_close(a: CandleValues, b: CandleValues, rel: float = 1e-9) -> bool:
    """Equal up to float summation order (OHLC and counts must match exactly)."""
    if a[:4] != b[:4] or a[6:] != b[6:]:
        return False
    for x, y in ((a[4], b[4]), (a[5], b[5])):
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None and abs(x - y) > rel * max(1.0, abs(x), abs(y)):
            return False
    return True
