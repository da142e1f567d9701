"""Resampler throughput: the streaming resampler, the columnar batch path and the strongest
peers on the same bars (benchmark 1).

    .venv/bin/python -m bench.resampler --symbols 2000 --minutes 500

The bars: ``symbols`` x ``minutes`` one-minute bars (a seeded random walk, every symbol every
minute, with vw and n), arriving as Polygon sends them: one frame per minute. Two orders:

* ``in_order``: each minute's frame holds that minute's bars.
* ``disordered``: 5 % of the bars misbehave: 2.5 % arrive 1-5 minutes late (out of order) and
  2.5 % are sent a second time 0-3 minutes later (exact duplicates).

Two cases, kept apart because they do different work:

* **streaming** (live): the project's resampler (``processors.resampler.Resampler``) takes the
  frames in arrival order, with the clock at each frame's arrival, and updates every interval's
  candle (1m ... 4h) on every bar, finalizing and evicting as it does live. It has no peer here:
  the batch engines below compute final candles once, they do not emit an update per bar.
* **batch** (history): the same bars, all at once, as columns in arrival order (each side's native
  input, built outside the timing); last write wins per (symbol, t), then every interval's final
  candles. The project's side is the columnar path of ``speedlayer replay``
  (``processors.columnar``); the peers are the strongest forms of each engine: pandas (one
  vectorised ``groupby`` on (symbol, bucket) per interval), polars (lazy, ``collect_all``) and
  DuckDB (``row_number()`` de-duplication, ``GROUP BY`` with ``arg_min``/``arg_max``). polars and
  DuckDB use every core; pandas and the project one.

Every side must produce the streaming resampler's candles: the columnar path bit for bit (every
field), the peers with OHLC, bar and trade counts exactly equal and volume and VWAP up to float
summation order (1e-9 relative); the benchmark fails otherwise. The ratios are bars/s of the
project's side over the peer's: below 1 the peer is faster. Every side runs with the
garbage-collector settings of the services (``speedlayer.runtime.tune_gc``), in a fresh child
process; ``peak_rss_mib`` is that process's peak resident memory during the timed run above what
it held with its input built.
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
INTERVAL_MS = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240}
INTERVAL_MS = {name: minutes * 60_000 for name, minutes in INTERVAL_MS.items()}
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


def _peer_input(symbols: int, minutes: int, disorder: float) -> tuple[Columns, int]:
    """The bars in arrival order as columns (with ``arrival``, the row's position), and their
    count: the batch sides' native input, built before the timing."""
    cols = make_bars(symbols, minutes)
    rows, _ = arrival_order(cols, disorder)
    out = {name: values[rows] for name, values in cols.items()}
    out["arrival"] = np.arange(len(rows), dtype=np.int64)
    return out, len(rows)


def _batch_result(
    bars: int, elapsed: float, memory: PeakRss, candles: dict[Key, Values]
) -> dict[str, Any]:
    return {
        "bars": bars,
        "seconds": elapsed,
        "bars_per_s": bars / elapsed,
        "peak_rss_mib": memory.mib,
        "candles": candles,
    }


def _vwap(count: int, first_vw: float, pv: float, v: float) -> float | None:
    # The resampler's rule (every bar here has vw): a one-bar candle keeps its vw.
    return first_vw if count == 1 else (pv / v if v > 0 else None)


def run_columnar(symbols: int, minutes: int, disorder: float) -> dict[str, Any]:
    """The project's batch path (``processors.columnar``, what ``speedlayer replay`` runs for
    history): last write wins by arrival, then every interval's final candles, as columns and
    then as the ``Candle`` structs the store takes (``objects_seconds`` of the time)."""
    from processors.columnar import BarColumns, SymbolTable, candle_columns, to_candles
    from speedlayer.intervals import IntervalSet
    from speedlayer.runtime import tune_gc

    cols, count = _peer_input(symbols, minutes, disorder)
    intervals = IntervalSet(list(INTERVALS)).items
    tune_gc()
    with PeakRss() as memory:
        began = time.perf_counter()
        table = SymbolTable()
        codes = np.fromiter(map(table.code, cols["symbol"].tolist()), np.int64, count)
        # Last arrival of each key: sort by key, latest arrival first within a key.
        order = np.lexsort((-cols["arrival"], cols["t"], codes))
        sym, t = codes[order], cols["t"][order]
        first = np.ones(count, dtype=np.bool_)
        first[1:] = (sym[1:] != sym[:-1]) | (t[1:] != t[:-1])
        keep = order[first]
        bars = BarColumns(
            codes[keep], cols["t"][keep], cols["o"][keep], cols["h"][keep], cols["l"][keep],
            cols["c"][keep], cols["v"][keep], cols["vw"][keep], cols["n"][keep].astype(np.int64),
        )  # fmt: skip
        columns = candle_columns(bars, intervals)
        columns_done = time.perf_counter()
        made = to_candles(columns, table.names)
        elapsed = time.perf_counter() - began
    candles = {
        (c.interval, c.symbol, c.timestamp): (
            c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades, c.bars,
        )
        for c in made
    }  # fmt: skip
    result = _batch_result(count, elapsed, memory, candles)
    result["objects_seconds"] = elapsed - (columns_done - began)
    return result


def run_pandas(symbols: int, minutes: int, disorder: float) -> dict[str, Any]:
    """pandas at its best: one vectorised group-by per interval on (symbol, bucket)."""
    import pandas as pd

    from speedlayer.runtime import tune_gc

    cols, count = _peer_input(symbols, minutes, disorder)
    frame = pd.DataFrame(cols)
    tune_gc()  # the same collector settings as the resampler's side
    with PeakRss() as memory:
        began = time.perf_counter()
        bars = frame.drop_duplicates(subset=["symbol", "t"], keep="last")
        bars = bars.sort_values(["symbol", "t"], kind="stable")
        bars = bars.assign(pv=bars["vw"] * bars["v"])
        results = {}
        for name in INTERVALS:
            size = INTERVAL_MS[name]
            start = (bars["t"] // size * size).rename("start")
            results[name] = (
                bars.groupby([bars["symbol"], start], sort=False)
                .agg(
                    o=("o", "first"),
                    h=("h", "max"),
                    l=("l", "min"),
                    c=("c", "last"),
                    v=("v", "sum"),
                    pv=("pv", "sum"),
                    n=("n", "sum"),
                    vw=("vw", "first"),
                    count=("t", "count"),
                )
                .reset_index()
            )
        elapsed = time.perf_counter() - began
    candles: dict[Key, Values] = {}
    for name, agg in results.items():
        for symbol, start_ms, o, h, lo, c, v, pv, n, vw, bars_n in zip(
            *(agg[k].tolist() for k in ("symbol", "start", "o", "h", "l", "c", "v", "pv", "n")),
            agg["vw"].tolist(),
            agg["count"].tolist(),
            strict=True,
        ):
            vwap = _vwap(bars_n, vw, pv, v)
            candles[(name, symbol, start_ms)] = (o, h, lo, c, v, vwap, n, bars_n)
    return _batch_result(count, elapsed, memory, candles)


def run_polars(symbols: int, minutes: int, disorder: float) -> dict[str, Any]:
    """polars, lazy: de-duplication and sort shared, every interval's group-by collected at
    once (``collect_all``), on all cores."""
    import polars as pl

    from speedlayer.runtime import tune_gc

    cols, count = _peer_input(symbols, minutes, disorder)
    frame = pl.DataFrame(cols)
    tune_gc()
    with PeakRss() as memory:
        began = time.perf_counter()
        bars = (
            frame.lazy()
            .unique(subset=["symbol", "t"], keep="last", maintain_order=True)
            .sort(["symbol", "t"])
            .with_columns(pv=pl.col("vw") * pl.col("v"))
        )
        queries = [
            bars.group_by("symbol", (pl.col("t") // size * size).alias("start")).agg(
                pl.col("o").first(),
                pl.col("h").max(),
                pl.col("l").min(),
                pl.col("c").last(),
                pl.col("v").sum(),
                pl.col("pv").sum(),
                pl.col("n").sum(),
                pl.col("vw").first(),
                pl.len().alias("count"),
            )
            for size in (INTERVAL_MS[name] for name in INTERVALS)
        ]
        results = dict(zip(INTERVALS, pl.collect_all(queries), strict=True))
        elapsed = time.perf_counter() - began
    candles: dict[Key, Values] = {}
    for name, agg in results.items():
        for symbol, start_ms, o, h, lo, c, v, pv, n, vw, bars_n in agg.select(
            "symbol", "start", "o", "h", "l", "c", "v", "pv", "n", "vw", "count"
        ).iter_rows():
            candles[(name, symbol, start_ms)] = (
                o,
                h,
                lo,
                c,
                v,
                _vwap(bars_n, vw, pv, v),
                n,
                bars_n,
            )
    return _batch_result(count, elapsed, memory, candles)


def run_duckdb(symbols: int, minutes: int, disorder: float) -> dict[str, Any]:
    """DuckDB SQL on all cores: ``row_number()`` de-duplication into a temporary table, then per
    interval a GROUP BY with ``arg_min``/``arg_max`` for open/close."""
    import duckdb

    from speedlayer.runtime import tune_gc

    cols, count = _peer_input(symbols, minutes, disorder)
    conn = duckdb.connect()
    conn.register("arrivals", {name: values for name, values in cols.items()})
    conn.execute("SELECT count(*) FROM arrivals").fetchall()  # the scan is set up
    tune_gc()
    with PeakRss() as memory:
        began = time.perf_counter()
        conn.execute(
            "CREATE TEMP TABLE bars AS SELECT * EXCLUDE (arrival) FROM arrivals "
            "QUALIFY row_number() OVER (PARTITION BY symbol, t ORDER BY arrival DESC) = 1"
        )
        results = {}
        for name in INTERVALS:
            size = INTERVAL_MS[name]
            results[name] = conn.execute(
                f"SELECT symbol, t // {size} * {size} AS start, arg_min(o, t), max(h), min(l), "
                "arg_max(c, t), sum(v), sum(vw * v), sum(n), arg_min(vw, t), count(*) "
                "FROM bars GROUP BY ALL"
            ).fetchnumpy()
        elapsed = time.perf_counter() - began
    conn.close()
    candles: dict[Key, Values] = {}
    for name, agg in results.items():
        for symbol, start_ms, o, h, lo, c, v, pv, n, vw, bars_n in zip(
            *(agg[k].tolist() for k in agg), strict=True
        ):
            candles[(name, symbol, start_ms)] = (
                o,
                h,
                lo,
                c,
                v,
                _vwap(bars_n, vw, pv, v),
                n,
                bars_n,
            )
    return _batch_result(count, elapsed, memory, candles)


# -- comparison -----------------------------------------------------------------------------------


def _close(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return abs(x - y) <= REL * max(1.0, abs(x), abs(y))


def _bits(values: Values) -> tuple[object, ...]:
    return tuple(x.hex() if isinstance(x, float) else x for x in values)


def compare(
    ours: Mapping[Key, Values], theirs: Mapping[Key, Values], *, exact: bool = False
) -> list[str]:
    """Differences between the two candle sets (empty when they agree): OHLC and counts
    exactly, volume and VWAP up to float summation order, or every float bit for bit when
    ``exact``."""
    problems = []
    if ours.keys() != theirs.keys():
        only_ours = len(ours.keys() - theirs.keys())
        only_theirs = len(theirs.keys() - ours.keys())
        problems.append(f"keys differ: {only_ours} only in ours, {only_theirs} only in theirs")
    for key in sorted(ours.keys() & theirs.keys()):
        a, b = ours[key], theirs[key]
        if exact:
            same = _bits(a) == _bits(b)
        else:
            same = a[:4] == b[:4] and a[6:] == b[6:] and _close(a[4], b[4]) and _close(a[5], b[5])
        if not same:
            problems.append(f"{key}: ours {a} theirs {b}")
            if len(problems) > 5:
                break
    return problems


PEERS = {"pandas": "run_pandas", "polars": "run_polars", "duckdb": "run_duckdb"}


def run(symbols: int, minutes: int) -> dict[str, Any]:
    """Both orders; the streaming resampler, the columnar batch path and the peers; the
    figures as ``bench/results.json`` records them."""
    cases = {}
    for case, disorder in (("in_order", 0.0), ("disordered", 0.05)):
        streaming = in_child(__name__, "run_resampler", symbols, minutes, disorder)
        reference = streaming.pop("candles")
        batch = in_child(__name__, "run_columnar", symbols, minutes, disorder)
        problems = compare(batch.pop("candles"), reference, exact=True)
        if problems:
            raise AssertionError(f"{case}: columnar and streaming candles differ: {problems}")
        peers = {}
        for peer, target in PEERS.items():
            theirs = in_child(__name__, target, symbols, minutes, disorder)
            problems = compare(reference, theirs.pop("candles"))
            if problems:
                raise AssertionError(f"{case}: the resampler and {peer} disagree: {problems}")
            peers[peer] = {
                "bars_per_s": round(theirs["bars_per_s"]),
                "seconds": round(theirs["seconds"], 3),
                "peak_rss_mib": round(theirs["peak_rss_mib"], 1),
            }
        fastest = max(peers, key=lambda name: peers[name]["bars_per_s"])
        cases[case] = {
            "bars": streaming["bars"],
            "candles": len(reference),
            "streaming": {
                "bars_per_s": round(streaming["bars_per_s"]),
                "seconds": round(streaming["seconds"], 3),
                "candle_updates": streaming["candle_updates"],
                "candle_updates_per_s": round(streaming["candle_updates"] / streaming["seconds"]),
                "peak_rss_mib": round(streaming["peak_rss_mib"], 1),
            },
            "batch": {
                "bars_per_s": round(batch["bars_per_s"]),
                "seconds": round(batch["seconds"], 3),
                "objects_seconds": round(batch["objects_seconds"], 3),
                "peak_rss_mib": round(batch["peak_rss_mib"], 1),
            },
            "peers": peers,
            "fastest_peer": fastest,
            "batch_ratio": {
                name: round(batch["bars_per_s"] / p["bars_per_s"], 2) for name, p in peers.items()
            },
            "streaming_ratio": {
                name: round(streaming["bars_per_s"] / p["bars_per_s"], 3)
                for name, p in peers.items()
            },
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
