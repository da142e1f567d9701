"""Store writes: candles/s upserted in batches (benchmark 5).

    .venv/bin/python -m bench.store_writes --symbols 2000 --minutes 60

The candle updates are what the resampler makes of ``symbols`` x ``minutes`` bars (every
interval, one batch per minute's frame, as the pipeline writes them: new rows and updates of
forming candles). They go to the SQLite store (WAL, one writer thread) with ``upsert``, batch by
batch, awaited as the pipeline does. The peer is the engine alone: the same rows, prepared
beforehand as flat lists of values, through Python's ``sqlite3`` with the store's statement
(``speedlayer.store.sqlite.upsert_flat``: 50 rows to a statement) on the same schema and pragmas,
in the same process, with no event loop or thread hand-off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.resampler import INTERVALS, MINUTE_MS, START_MS, make_bars


def candle_batches(symbols: int, minutes: int) -> list[list[Any]]:
    from processors.resampler import Resampler
    from speedlayer.clock import ManualClock
    from speedlayer.intervals import IntervalSet
    from speedlayer.models import Bar

    cols = make_bars(symbols, minutes)
    keys = ("symbol", "t", "o", "h", "l", "c", "v", "vw", "n")
    bars = list(map(Bar, *(cols[k].tolist() for k in keys)))
    clock = ManualClock(START_MS)
    resampler = Resampler(IntervalSet(list(INTERVALS)), clock)
    batches = []
    for index in range(minutes):
        clock.set(START_MS + (index + 1) * MINUTE_MS + 500)
        batches.append(resampler.process(bars[index * symbols : (index + 1) * symbols]).candles)
        resampler.evict()
    return batches


async def _ours(path: Path, batches: list[list[Any]]) -> float:
    from speedlayer.clock import ManualClock
    from speedlayer.intervals import IntervalSet
    from speedlayer.store.sqlite import SQLiteStore

    async with SQLiteStore(path, IntervalSet(list(INTERVALS)), ManualClock(START_MS)) as store:
        began = time.perf_counter()
        for batch in batches:
            await store.upsert(batch)
        return time.perf_counter() - began


def _peer(path: Path, batches: list[list[Any]]) -> float:
    from speedlayer.intervals import IntervalSet
    from speedlayer.store import sqlite as module

    tables = {iv.name: iv.table for iv in IntervalSet(list(INTERVALS))}
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for table in tables.values():
        conn.execute(module._SCHEMA.format(table=table))
        conn.execute(f"CREATE INDEX {table}_forming ON {table} (timestamp) WHERE final = 0")
    prepared = []
    for batch in batches:
        by_name: dict[str, list[Any]] = {}
        for c in batch:
            by_name.setdefault(c.interval, []).extend(
                (c.symbol, c.interval, c.timestamp, c.open, c.high, c.low, c.close, c.volume,
                 c.vwap, c.trades, c.bars, c.final, c.revision, c.ttl)
            )  # fmt: skip
        prepared.append(by_name)
    began = time.perf_counter()
    for by_name in prepared:
        with conn:
            for name, values in by_name.items():
                module.upsert_flat(conn, tables[name], values)
    elapsed = time.perf_counter() - began
    conn.close()
    return elapsed


def run(symbols: int, minutes: int) -> dict[str, Any]:
    batches = candle_batches(symbols, minutes)
    candles = sum(len(batch) for batch in batches)
    with tempfile.TemporaryDirectory(prefix="store_writes_") as tmp:
        ours = asyncio.run(_ours(Path(tmp) / "ours.db", batches))
        peer = _peer(Path(tmp) / "peer.db", batches)
    return {
        "symbols": symbols,
        "minutes": minutes,
        "batches": len(batches),
        "candles": candles,
        "mean_batch": round(candles / len(batches)),
        "store_candles_per_s": round(candles / ours),
        "sqlite3_candles_per_s": round(candles / peer),
        "ratio": round(peer / ours, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=60)
    args = parser.parse_args()
    print(json.dumps(run(args.symbols, args.minutes), indent=2))


if __name__ == "__main__":
    main()
