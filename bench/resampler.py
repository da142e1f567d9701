"""Resampler throughput against pandas on the same bars (benchmark 1).

    .venv/bin/python -m bench.resampler --symbols 2000 --minutes 500

The bars: ``symbols`` x ``minutes`` one-minute bars (a seeded random walk, every symbol every
minute, with vw and n), arriving as Polygon sends them: one frame per minute. Two orders:

* ``in_order``: each minute's frame holds that minute's bars.
* ``disordered``: 5 % of the bars misbehave: 2.5 % arrive 1-5 minutes late (out of order) and
  2.5 % are sent a second time 0-3 minutes later (exact duplicates).

The project's resampler (``processors.resampler.Resampler``) takes the frames in arrival order,
with the clock at each frame's arrival, producing every interval (1m ... 4h), finalizing and
evicting as it does live. The peer, pandas, gets the same bars in arrival order as a DataFrame
(its native input, built outside the timing), drops duplicate keys keeping the last arrival and
computes every interval with ``groupby("symbol").resample(rule)``. Both sides run with the
garbage-collector settings of the services (``speedlayer.runtime.tune_gc``). Both must produce
equal candles: every key present on both sides, OHLC, bar and trade counts exactly equal, volume
and VWAP equal up to float summation order (1e-9 relative); the benchmark fails otherwise.

Each side runs in a fresh child process; ``peak_rss_mib`` is that process's peak resident memory
during the timed run above what it held with its input built.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from bench.common import PeakRss, in_child

INTERVALS = ("1m", "5m", "15m", "30m", "1h", "2h", "4h")
PANDAS_RULES = {"1m": "1min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "1h"}
PANDAS_RULES |= {"2h": "2h", "4h": "4h"}
MINUTE_MS = 60_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z, aligned to every interval
REL = 1e-9

Columns = dict[str, Any]
Key = tuple[str, str, int]  # (interval, symbol, bucket start)
Values = tuple[float, float, float, float, float, float | None, int | None, int]


# -- input ----------------------------------------------------------------------------------------


def make_bars(symbols: int, minutes: int, seed: int = 7) -> Columns:
    """Columns of ``symbols`` x ``minutes`` bars in time order (minute-major)."""
    rng = np.random.default_rng(seed)
    names = np.array([f"S{i:05d}" for i in range(symbols)], dtype=object)
    steps = rng.normal(0.0, 0.001, size=(minutes, symbols))
    price0 = rng.uniform(10, 500, size=symbols)
    close = np.round(price0 * np.exp(np.cumsum(steps, axis=0)), 4)
    open_ = np.vstack([np.round(price0, 4)[None, :], close[:-1]])
    spread = np.abs(rng.normal(0.0, 0.0005, size=(minutes, symbols)))
    high = np.round(np.maximum(open_, close) * (1 + spread), 4)
    low = np.round(np.minimum(open_, close) * (1 - spread), 4)
    volume = np.floor(rng.lognormal(7.0, 1.0, size=(minutes, symbols))) + 1
    vw = np.round(np.clip((open_ + high + low + close) / 4, low, high), 4)
    trades = np.maximum(1, (volume / 100).astype(np.int64))
    t = START_MS + np.arange(minutes, dtype=np.int64)[:, None] * MINUTE_MS
    return {
        "symbol": np.tile(names, minutes),
        "t": np.broadcast_to(t, (minutes, symbols)).ravel().copy(),
        "o": open_.ravel(),
        "h": high.ravel(),
        "l": low.ravel(),
        "c": close.ravel(),
        "v": volume.ravel(),
        "vw": vw.ravel(),
        "n": trades.ravel(),
    }


def arrival_order(cols: Columns, disorder: float, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Row indices in arrival order and each row's arrival minute (index of its frame).

    With ``disorder`` > 0, half of that share arrives 1-5 minutes late and the other half is
    sent once more, 0-3 minutes after the original.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(cols["t"]))
    minute = (cols["t"] - START_MS) // MINUTE_MS
    arrive = minute.copy()
    if disorder > 0:
        late = rng.random(len(rows)) < disorder / 2
        arrive[late] += rng.integers(1, 6, size=int(late.sum()))
        dup = rng.random(len(rows)) < disorder / 2
        rows = np.concatenate([rows, rows[dup]])
        arrive = np.concatenate([arrive, minute[dup] + rng.integers(0, 4, size=int(dup.sum()))])
    # Stable by arrival minute; inside a frame, bars keep their generation order.
    order = np.argsort(arrive, kind="stable")
    return rows[order], arrive[order]


# -- the two sides (each in its own process) ------------------------------------------------------


def feed_frames(
    frames: Sequence[Sequence[Any]], intervals: Any, keep: Callable[[Any], None] | None
) -> int:
    """Every frame (a list of Bars) through a new resampler as a live feed gives them: the frame
    of minute m just after m ends (its bars are complete by then), then the clock far past the
    last one. ``keep`` sees every candle emitted; returns how many were."""
    from processors.resampler import Resampler
    from speedlayer.clock import ManualClock

    clock = ManualClock(START_MS)
    resampler = Resampler(intervals, clock)
    emitted = 0
    for index, frame in enumerate(frames):
        clock.set(START_MS + (index + 1) * MINUTE_MS + 500)
        candles = resampler.process(frame).candles
        resampler.evict()
        emitted += len(candles)
        if keep is not None:
            for c in candles:
                keep(c)
    clock.set(START_MS + (len(frames) + 300) * MINUTE_MS)
    candles = resampler.advance()
    if keep is not None:
        for c in candles:
            keep(c)
    return emitted + len(candles)


def run_resampler(symbols: int, minutes: int, disorder: float) -> dict[str, Any]:
    from speedlayer.intervals import IntervalSet
    from speedlayer.models import Bar
    from speedlayer.runtime import tune_gc

    cols = make_bars(symbols, minutes)
    rows, arrive = arrival_order(cols, disorder)
    lists = {name: cols[name][rows].tolist() for name in ("symbol", "t", "o", "h", "l", "c", "v")}
    lists["vw"] = cols["vw"][rows].tolist()
    lists["n"] = cols["n"][rows].tolist()
    bars = list(map(Bar, *(lists[k] for k in ("symbol", "t", "o", "h", "l", "c", "v", "vw", "n"))))
    bounds = np.searchsorted(arrive, np.arange(arrive[-1] + 2)).tolist()
    frames = [bars[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    del lists, cols
    intervals = IntervalSet(list(INTERVALS))
    tune_gc()  # as `speedlayer up`, `process` and `replay` run

    def feed(keep: dict[Key, Any] | None) -> int:
        """Every frame through a new resampler; ``keep`` collects the last state per key."""
        collect = (
            None
            if keep is None
            else lambda c: keep.__setitem__((c.interval, c.symbol, c.timestamp), c)
        )
        return feed_frames(frames, intervals, collect)

    # Timed run: the candles are dropped as they come (a consumer's cost is not the resampler's).
    with PeakRss() as memory:
        began = time.perf_counter()
        emitted = feed(None)
        elapsed = time.perf_counter() - began
    last: dict[Key, Any] = {}
    feed(last)  # the same run again, keeping the final state of every candle to compare
    candles = {
        key: (c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades, c.bars)
        for key, c in last.items()
    }
    return {
        "bars": len(bars),
        "seconds": elapsed,
        "bars_per_s": len(bars) / elapsed,
        "candle_updates": emitted,
        "peak_rss_mib": memory.mib,
        "candles": candles,
    }


def run_pandas(symbols: int, minutes: int, disorder: float) -> dict[str, Any]:
    import pandas as pd

    from speedlayer.runtime import tune_gc

    cols = make_bars(symbols, minutes)
    rows, _ = arrival_order(cols, disorder)
    frame = pd.DataFrame({name: values[rows] for name, values in cols.items()})
    frame["time"] = pd.to_datetime(frame["t"], unit="ms")
    del cols
    tune_gc()  # the same collector settings as the resampler's side
    memory = PeakRss().__enter__()
    began = time.perf_counter()
    bars = frame.drop_duplicates(subset=["symbol", "t"], keep="last").set_index("time")
    bars = bars.assign(pv=bars["vw"] * bars["v"])
    results = {}
    for name in INTERVALS:
        agg = (
            bars.groupby("symbol")
            .resample(PANDAS_RULES[name])
            .agg(
                {
                    "o": "first",
                    "h": "max",
                    "l": "min",
                    "c": "last",
                    "v": "sum",
                    "pv": "sum",
                    "n": "sum",
                    "vw": "first",
                    "t": "count",
                }
            )
        )
        results[name] = agg[agg["t"] > 0]  # resample fills empty bins between a symbol's bars
    elapsed = time.perf_counter() - began
    memory.__exit__(None, None, None)

    candles: dict[Key, Values] = {}
    for name, agg in results.items():
        for (symbol, start), o, h, lo, c, v, pv, n, vw, count in zip(
            agg.index,
            *(agg[k].tolist() for k in ("o", "h", "l", "c", "v", "pv", "n", "vw", "t")),
            strict=True,
        ):
            vwap = vw if count == 1 else pv / v
            candles[(name, symbol, start.value // 1_000_000)] = (o, h, lo, c, v, vwap, n, count)
    return {
        "bars": len(frame),
        "seconds": elapsed,
        "bars_per_s": len(frame) / elapsed,
        "peak_rss_mib": memory.mib,
        "candles": candles,
    }


# -- comparison -----------------------------------------------------------------------------------


def _close(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return abs(x - y) <= REL * max(1.0, abs(x), abs(y))


def compare(ours: Mapping[Key, Values], theirs: Mapping[Key, Values]) -> list[str]:
    """Differences between the two candle sets (empty when they agree)."""
    problems = []
    if ours.keys() != theirs.keys():
        only_ours = len(ours.keys() - theirs.keys())
        only_theirs = len(theirs.keys() - ours.keys())
        problems.append(f"keys differ: {only_ours} only in ours, {only_theirs} only in pandas")
    for key in sorted(ours.keys() & theirs.keys()):
        a, b = ours[key], theirs[key]
        exact = a[:4] == b[:4] and a[6:] == b[6:]
        if not (exact and _close(a[4], b[4]) and _close(a[5], b[5])):
            problems.append(f"{key}: ours {a} pandas {b}")
            if len(problems) > 5:
                break
    return problems


def run(symbols: int, minutes: int) -> dict[str, Any]:
    """Both orders, both sides; the figures as ``bench/results.json`` records them."""
    cases = {}
    for case, disorder in (("in_order", 0.0), ("disordered", 0.05)):
        ours = in_child(__name__, "run_resampler", symbols, minutes, disorder)
        theirs = in_child(__name__, "run_pandas", symbols, minutes, disorder)
        problems = compare(ours.pop("candles"), theirs.pop("candles"))
        if problems:
            raise AssertionError(f"{case}: the resampler and pandas disagree: {problems}")
        cases[case] = {
            "bars": ours["bars"],
            "resampler_bars_per_s": round(ours["bars_per_s"]),
            "resampler_seconds": round(ours["seconds"], 3),
            "resampler_candle_updates": ours["candle_updates"],
            "resampler_peak_rss_mib": round(ours["peak_rss_mib"], 1),
            "pandas_bars_per_s": round(theirs["bars_per_s"]),
            "pandas_seconds": round(theirs["seconds"], 3),
            "pandas_peak_rss_mib": round(theirs["peak_rss_mib"], 1),
            "ratio": round(ours["bars_per_s"] / theirs["bars_per_s"], 2),
            "candles_compared": "equal",
        }
    return {"symbols": symbols, "minutes": minutes, "intervals": list(INTERVALS), "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(run(args.symbols, args.minutes), indent=2))


if __name__ == "__main__":
    main()
