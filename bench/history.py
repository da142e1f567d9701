"""History replay into SQLite against the bare engine writing the same candles (benchmark 8).

    .venv/bin/python -m bench.history --symbols 2000 --minutes 500

The bars: the resampler benchmark's (``bench.resampler.make_bars``), disordered as there (2.5 %
late, 2.5 % sent twice), written to a CSV file in arrival order before any timing. Three runs on
that file, each into a new SQLite database (WAL, every interval, retention ``*=100y``):

* **replay**: ``launch.replay.replay_files`` as ``speedlayer replay`` runs it: the CSV read and
  validated, history resampled by the columnar path, each final candle written once (fresh
  process, the CLI's garbage-collector settings);
* **streaming replay** (before the columnar path): the same with ``columnar=False``, every batch
  through the streaming pipeline, which writes every revision of every candle;
* **bound**: Python's ``sqlite3`` alone upserting the replay's final candle rows, read back
  beforehand and sorted by key (the engine's best order), in one transaction, with the store's
  statement (``speedlayer.store.sqlite.upsert_flat``: 50 rows to a multi-row ``VALUES``), schema
  and pragmas, with the garbage collector off: what writing those candles costs at least,
  reading and resampling the file free.
  ``bound_single_row`` is the same with one row to a statement (``executemany`` of the rows, the
  store's statement before it wrote 50 rows at a time), kept for comparison with earlier runs.

The two replays must leave identical tables (every column of every row, revisions included); the
benchmark fails otherwise. ``ratio`` = bound seconds / replay seconds (1 would be "as fast as
writing the result alone"); ``speedup`` = streaming replay seconds / replay seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import PeakRss, in_child
from bench.resampler import INTERVALS, arrival_order, make_bars

COLUMNS = ("symbol", "t", "o", "h", "l", "c", "v", "vw", "n")
RETENTION = "100y"


def write_csv(path: Path, symbols: int, minutes: int, disorder: float = 0.05) -> int:
    cols = make_bars(symbols, minutes)
    rows, _ = arrival_order(cols, disorder)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(zip(*(cols[name][rows].tolist() for name in COLUMNS), strict=True))
    return len(rows)


def run_replay(source: str, db: str, columnar: bool) -> dict[str, Any]:
    """One replay of ``source`` into a new database ``db`` (in a child process)."""
    from launch.replay import replay_files
    from processors.pipeline import CandlePipeline
    from processors.resampler import Resampler
    from speedlayer.clock import SystemClock
    from speedlayer.intervals import IntervalSet
    from speedlayer.runtime import tune_gc
    from speedlayer.store.sqlite import SQLiteStore

    tune_gc()  # as `speedlayer replay` runs
    intervals = IntervalSet(list(INTERVALS), {"*": RETENTION})

    async def go() -> dict[str, Any]:
        clock = SystemClock()
        async with SQLiteStore(db, intervals, clock) as store:
            pipeline = CandlePipeline(Resampler(intervals, clock), store)
            await pipeline.recover()
            with PeakRss() as memory:
                summary = await replay_files([source], pipeline, 5000, columnar=columnar)
        return summary.as_dict() | {"peak_rss_mib": round(memory.mib, 1)}

    return asyncio.run(go())


def _tables() -> list[str]:
    from speedlayer.intervals import IntervalSet

    return [interval.table for interval in IntervalSet(list(INTERVALS))]


def dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    from speedlayer.store import sqlite as module

    conn = sqlite3.connect(db)
    try:
        return {
            table: conn.execute(
                f"SELECT {module._COLUMNS} FROM {table} ORDER BY symbol, timestamp"
            ).fetchall()
            for table in _tables()
        }
    finally:
        conn.close()


def bound(db: Path, rows: dict[str, list[tuple[Any, ...]]], single_row: bool = False) -> float:
    """Seconds for the bare engine to upsert ``rows`` into a new database ``db`` with the store's
    statement (``single_row``: one row to a statement)."""
    from speedlayer.store import sqlite as module

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for table in rows:
        conn.execute(module._SCHEMA.format(table=table))
        conn.execute(f"CREATE INDEX {table}_forming ON {table} (timestamp) WHERE final = 0")
    flat = {table: [v for row in table_rows for v in row] for table, table_rows in rows.items()}
    # No garbage collection while timed: this process holds every row (millions of objects), and
    # the bound is the engine's cost, not the collector's.
    gc.collect()
    gc.disable()
    try:
        began = time.perf_counter()
        with conn:
            for table, table_rows in rows.items():
                if single_row:
                    conn.executemany(module.upsert_statement(table), table_rows)
                else:
                    module.upsert_flat(conn, table, flat[table])
        elapsed = time.perf_counter() - began
    finally:
        gc.enable()
    conn.close()
    return elapsed


def run(symbols: int, minutes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="history_") as tmp:
        source = Path(tmp) / "bars.csv"
        bars = write_csv(source, symbols, minutes)
        ours_db, streaming_db = Path(tmp) / "ours.db", Path(tmp) / "streaming.db"
        ours = in_child(__name__, "run_replay", str(source), str(ours_db), True)
        streaming = in_child(__name__, "run_replay", str(source), str(streaming_db), False)
        rows = dump(ours_db)
        other = dump(streaming_db)
        differ = [table for table in rows if rows[table] != other[table]]
        if differ:
            raise AssertionError(f"columnar and streaming replays differ in {differ}")
        candles = sum(len(table_rows) for table_rows in rows.values())
        bound_s = bound(Path(tmp) / "bound.db", rows)
        single_row_s = bound(Path(tmp) / "bound_single_row.db", rows, single_row=True)
    ours_s, streaming_s = ours["seconds"], streaming["seconds"]
    return {
        "symbols": symbols,
        "minutes": minutes,
        "bars": bars,
        "candles": candles,
        "replay": {
            "seconds": ours_s,
            "bars_per_s": round(bars / ours_s),
            "rows_written": ours["rows_written"],
            "peak_rss_mib": ours["peak_rss_mib"],
            "summary": {k: ours[k] for k in ("accepted", "duplicates", "expired_on_write")},
        },
        "streaming_replay": {
            "seconds": streaming_s,
            "bars_per_s": round(bars / streaming_s),
            "rows_written": streaming["rows_written"],
            "peak_rss_mib": streaming["peak_rss_mib"],
        },
        "bound": {"seconds": round(bound_s, 3), "candles_per_s": round(candles / bound_s)},
        "bound_single_row": {
            "seconds": round(single_row_s, 3),
            "candles_per_s": round(candles / single_row_s),
        },
        "ratio_single_row": round(single_row_s / ours_s, 2),
        "ratio": round(bound_s / ours_s, 2),
        "streaming_ratio": round(bound_s / streaming_s, 3),
        "speedup": round(streaming_s / ours_s, 1),
        "tables_compared": "equal",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(run(args.symbols, args.minutes), indent=2))


if __name__ == "__main__":
    main()
