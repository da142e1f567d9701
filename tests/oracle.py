"""An independent oracle for candles: pandas groupby over the de-duplicated bar set.

Written separately from the resampler on purpose: it de-duplicates with pandas
(``drop_duplicates(keep="last")`` on arrival order), buckets with integer floor division and
aggregates with pandas reductions. Exchange-time buckets (docs/design.md#exchange-time-candles)
come from pandas' own time-zone handling: ``exchange_wall_buckets`` floors the exchange's local
wall-clock time (tz-aware conversion) from the 09:30 anchor and localizes the result back,
``session_buckets`` matches each bar to the calendar's sessions with ``merge_asof``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import cast

import pandas as pd

from speedlayer.models import Bar

CandleValues = tuple[float, float, float, float, float, float | None, int | None, int]


Bucketer = Callable[["pd.Series[int]"], "pd.Series[float]"]


def exchange_wall_buckets(zone: str, anchor: str, size: str) -> Bucketer:
    """Bucket starts (epoch ms) on ``zone``'s wall clock: ``anchor + k * size`` local."""
    offset = pd.Timedelta(anchor)
    step = pd.Timedelta(size)

    def buckets(t: pd.Series[int]) -> pd.Series[float]:
        local = pd.to_datetime(t, unit="ms", utc=True).dt.tz_convert(zone)
        wall = local.dt.tz_localize(None)
        start_wall = (wall - offset).dt.floor(step) + offset
        # The bar's own side of a repeated (fall-back) hour; a skipped one has no bars to bucket.
        dst = (local.apply(lambda x: x.dst()) != pd.Timedelta(0)).to_numpy()
        start = start_wall.dt.tz_localize(zone, ambiguous=dst, nonexistent="raise")
        return (
            start.dt.tz_convert("UTC").dt.tz_localize(None) - pd.Timestamp(0)
        ).dt.total_seconds() * 1000

    return buckets


def session_buckets(opens_ms: list[int], closes_ms: list[int]) -> Bucketer:
    """The open (epoch ms) of the session ``[open, close)`` holding each bar; NaN outside all."""
    sessions = pd.DataFrame({"open": opens_ms, "close": closes_ms}).astype("int64")

    def buckets(t: pd.Series[int]) -> pd.Series[float]:
        bars = pd.DataFrame({"t": t.astype("int64"), "row": range(len(t))}).sort_values("t")
        matched = pd.merge_asof(bars, sessions, left_on="t", right_on="open", direction="backward")
        inside = matched["open"].where(matched["t"] < matched["close"])
        out = pd.Series(inside.to_numpy(dtype="float64"), index=matched["row"].to_numpy())
        return pd.Series(out.sort_index().to_numpy(), index=t.index)

    return buckets


def oracle_candles(
    bars: Iterable[Bar], intervals: Mapping[str, int | Bucketer]
) -> dict[tuple[str, str, int], CandleValues]:
    """(interval, symbol, bucket start) -> (open, high, low, close, volume, vwap, trades, bars).

    An interval is its size in ms (UTC multiples) or a function of the bar times giving bucket
    starts (NaN: the bar is in no bucket of that interval)."""
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
    for name, interval in intervals.items():
        if callable(interval):
            frame["bucket"] = interval(frame["t"])
            grouped = frame.dropna(subset=["bucket"]).groupby(["symbol", "bucket"], sort=True)
        else:
            frame["bucket"] = frame["t"] // interval * interval
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
