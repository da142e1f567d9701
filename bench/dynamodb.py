"""DynamoDB store on dynalite: write and query rates, and write requests per 1,000 input bars.

    .venv/bin/python -m bench.dynamodb                   # about 3 minutes on 2 cores
    .venv/bin/python -m bench.dynamodb --minutes 60 --wide-symbols 300   # quicker

Starts its own in-memory dynalite (``node_modules``, installed by ``make setup``), then, for both
write modes of ``DynamoDBStore`` (``batch``: BatchWriteItem with the revision guard;
``conditional``: one conditional PutItem per candle):

* **requests per 1,000 bars**: real bars (``realbars/eqker_2019``: 24 US tickers, the first
  ``--minutes`` minutes) through ``CandlePipeline`` into fresh tables, counting the PutItem,
  BatchWriteItem and BatchGetItem calls with botocore event hooks, as a replay does it (batches of
  5,000 bars) and as the live service does it (one batch per minute, the clock one second past
  the minute, so candles are finalized as they close: every forming update is written). Also
  live with ``--wide-symbols`` synthetic symbols per minute (a wide market fills the batches).
* **write rate**: the candles the live pipeline writes for the wide market, upserted batch by
  batch into fresh tables: candles/s.
* **query rate**: 100-candle range queries (``Store.query``, newest first) on the real bars'
  1-minute candles: queries/s.

Numbers only, no assertion; the machine is shared, so run it twice.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REALBARS = Path(os.environ.get("SPEEDLAYER_SHARED_DIR", ROOT.parent / "shared")) / "data/realbars"
MINUTE_MS = 60_000
OPS = ("PutItem", "BatchWriteItem", "BatchGetItem")


class _Count:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, **_: Any) -> None:
        self.calls += 1


def real_bars(minutes: int) -> list[Any]:
    from speedlayer.models import Bar

    with (REALBARS / "eqker_2019" / "bars_1m.csv").open() as f:
        rows = list(csv.DictReader(f))
    first = min(int(row["t"]) for row in rows)
    bars = [
        Bar(row["symbol"], int(row["t"]), float(row["o"]), float(row["h"]), float(row["l"]),
            float(row["c"]), float(row["v"]))
        for row in rows
        if int(row["t"]) < first + minutes * MINUTE_MS
    ]  # fmt: skip
    return sorted(bars, key=lambda b: (b.t, b.symbol))


def wide_bars(symbols: int, minutes: int) -> list[Any]:
    from ingest.synthetic import RandomWalk, symbol_names

    start = 1_704_206_400_000  # 2024-01-02T14:40Z
    walk = RandomWalk(symbol_names(symbols), 7)
    return [bar for m in range(minutes) for bar in walk.minute(start + m * MINUTE_MS)]


def by_minute(bars: list[Any]) -> list[list[Any]]:
    groups: dict[int, list[Any]] = {}
    for bar in bars:
        groups.setdefault(bar.t, []).append(bar)
    return [groups[t] for t in sorted(groups)]


def new_store(url: str, mode: str, clock: Any) -> Any:
    from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
    from speedlayer.store.dynamodb import DynamoDBStore

    return DynamoDBStore(
        IntervalSet(DEFAULT_INTERVALS, {"*": "100y"}),
        clock,
        endpoint_url=url,
        table_prefix=f"b{uuid.uuid4().hex[:10]}_",
        write_mode=mode,  # type: ignore[arg-type]
    )


async def pipeline_requests(url: str, mode: str, bars: list[Any], live: bool) -> dict[str, Any]:
    """Run ``bars`` through the pipeline into DynamoDB; count the write-path requests."""
    from processors.pipeline import CandlePipeline
    from processors.resampler import Resampler
    from speedlayer.clock import ManualClock

    clock = ManualClock(bars[0].t)
    async with new_store(url, mode, clock) as store:
        counts = {op: _Count() for op in OPS}
        for op, hook in counts.items():
            store.client.meta.events.register(f"before-call.dynamodb.{op}", hook)
        pipeline = CandlePipeline(Resampler(store.intervals, clock), store)
        began = time.perf_counter()
        if live:
            for minute in by_minute(bars):
                clock.set(minute[0].t + MINUTE_MS + 1000)
                await pipeline.tick()
                await pipeline.handle(minute)
            clock.set(bars[-1].t + 5 * 3_600_000)
            await pipeline.tick()  # finalize what is still forming
        else:
            clock.set(bars[-1].t + 5 * 3_600_000)  # replaying history: everything is final
            for i in range(0, len(bars), 5000):
                await pipeline.handle(bars[i : i + 5000])
        seconds = time.perf_counter() - began
        keys_read = store.revision_reads
        await store.delete_tables()
    per_k = 1000 / len(bars)
    out: dict[str, Any] = {op: round(hook.calls * per_k, 1) for op, hook in counts.items()}
    out["candles_written"] = round(pipeline.stats.rows_written * per_k, 1)
    out["keys_read"] = round(keys_read * per_k, 1)
    out["bars"] = len(bars)
    out["seconds"] = round(seconds, 2)
    return out


def live_batches(bars: list[Any], intervals: Any) -> list[list[Any]]:
    """The candle batches the live pipeline writes for ``bars`` (one batch per minute)."""
    from processors.resampler import Resampler
    from speedlayer.clock import ManualClock

    clock = ManualClock(bars[0].t)
    resampler = Resampler(intervals, clock)
    batches = []
    for minute in by_minute(bars):
        clock.set(minute[0].t + MINUTE_MS + 1000)
        batches.append(resampler.process(minute).candles)
        resampler.evict()
    return batches


async def write_and_query_rates(
    url: str, mode: str, wide: list[Any], real: list[Any]
) -> dict[str, Any]:
    """Upsert rate of the wide market's live batches; then 100-candle range queries on the real
    bars' 1-minute candles (``--minutes`` per symbol, in a table holding both)."""
    from speedlayer.clock import ManualClock

    async with new_store(url, mode, ManualClock(wide[0].t)) as store:
        batches = live_batches(wide, store.intervals)
        candles = sum(len(batch) for batch in batches)
        began = time.perf_counter()
        for batch in batches:
            await store.upsert(batch)
        write_s = time.perf_counter() - began
        for batch in live_batches(real, store.intervals):
            await store.upsert(batch)
        symbols = sorted({bar.symbol for bar in real})
        minute_iv = store.intervals.get("1m")
        queries = 400
        began = time.perf_counter()
        for q in range(queries):
            got = await store.query(symbols[q % len(symbols)], minute_iv, limit=100, order="desc")
            assert len(got) == min(100, sum(1 for b in real if b.symbol == got[0].symbol))
        query_s = time.perf_counter() - began
        await store.delete_tables()
    return {
        "candles": candles,
        "candles_per_s": round(candles / write_s),
        "queries": queries,
        "queries_per_s": round(queries / query_s),
    }


async def run(url: str, minutes: int, wide_symbols: int, wide_minutes: int) -> dict[str, Any]:
    real = real_bars(minutes)
    wide = wide_bars(wide_symbols, wide_minutes)
    results: dict[str, Any] = {"input": {"real_bars": len(real), "wide_bars": len(wide)}}
    for mode in ("batch", "conditional"):
        results[mode] = {
            "replay (real bars, 5,000 per batch)": await pipeline_requests(url, mode, real, False),
            "live (real bars, 1 batch/minute)": await pipeline_requests(url, mode, real, True),
            f"live ({wide_symbols} symbols, 1 batch/minute)": await pipeline_requests(
                url, mode, wide, True
            ),
            "rates": await write_and_query_rates(url, mode, wide, real),
        }
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        "Per 1,000 input bars:",
        "",
        "| mode | input | PutItem | BatchWriteItem | BatchGetItem (keys read) | candles written | "
        "estimate: candles / 25 |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("batch", "conditional"):
        for name, row in results[mode].items():
            if name == "rates":
                continue
            estimate = math.ceil(row["candles_written"] / 25)
            lines.append(
                f"| {mode} | {name} | {row['PutItem']:g} | {row['BatchWriteItem']:g} | "
                f"{row['BatchGetItem']:g} ({row['keys_read']:g}) | {row['candles_written']:g} | "
                f"{estimate} |"
            )
    lines.append("")
    lines.append("| mode | upsert rate (wide market, live batches) | 100-candle range queries |")
    lines.append("|---|---|---|")
    for mode in ("batch", "conditional"):
        rates = results[mode]["rates"]
        lines.append(
            f"| {mode} | {rates['candles_per_s']:,} candles/s ({rates['candles']:,} candles) | "
            f"{rates['queries_per_s']:,} queries/s |"
        )
    return "\n".join(lines)


def start_dynalite() -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli = ROOT / "node_modules" / "dynalite" / "cli.js"
    if not cli.exists():
        sys.exit(f"{cli} not found: run `make setup` first")
    proc = subprocess.Popen(
        ["node", str(cli), "--host", "127.0.0.1", "--port", str(port), "--createTableMs", "0",
         "--deleteTableMs", "0"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("dynalite did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=120, help="minutes of real bars")
    parser.add_argument("--wide-symbols", type=int, default=1000)
    parser.add_argument("--wide-minutes", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()
    proc, url = start_dynalite()
    try:
        results = asyncio.run(run(url, args.minutes, args.wide_symbols, args.wide_minutes))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(json.dumps(results, indent=2) if args.json else render(results))


if __name__ == "__main__":
    main()
