"""WebSocket fan-out under the simulator's full-market load (a benchmark, not a test).

    .venv/bin/python -m bench.ws_fanout --symbols 12000 --speed 0 --clients 200,500,1000

One process runs the embedded stack as ``speedlayer up`` does (Polygon simulator -> feed -> bus
-> resampler -> SQLite store -> candle bus -> API with the live hub, uvicorn on a free port).
For each client count N, client processes open N WebSocket connections, each subscribing to
``--per-client`` random symbols x ``--intervals`` (no snapshot), and record for every ``candle``
message its ``seq`` and the wall time it arrived. The server side records, per dispatched chunk,
the wall time at which the hub received it from the bus (``CandleEvent.at``). Reported per N:

* delivered messages/s (client receipts over the window, and the busiest second),
* latency from the hub's receipt (publish) to the client's receipt: p50, p99, max,
* clients dropped as slow consumers, connections that failed,
* the hub's input (candle updates/s) and the pipeline's bars in.

Clients and server share the machine (and its cores): the latencies include the clients' own
scheduling delays. Results and the command that produced them go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import multiprocessing as mp
import os
import random
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import percentile
from bench.stack import embedded_stack, until

log = logging.getLogger("bench.ws_fanout")


# -- client processes -----------------------------------------------------------------------------


def _client_process(
    url: str,
    subscriptions: list[list[str]],
    intervals: list[str],
    start_at: float,
    end_at: float,
    results: Any,
    compression: str | None,
) -> None:
    asyncio.run(_clients(url, subscriptions, intervals, start_at, end_at, results, compression))


def start_clients(
    url: str,
    subscriptions: list[list[str]],
    intervals: list[str],
    start_at: float,
    end_at: float,
    procs: int,
    compression: str | None = None,
) -> tuple[list[Any], Any]:
    """Client processes sharing ``subscriptions`` (one connection each); their results queue."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    n = max(1, min(procs, len(subscriptions)))
    workers = [
        ctx.Process(
            target=_client_process,
            args=(url, subscriptions[i::n], intervals, start_at, end_at, results, compression),
        )
        for i in range(n)
    ]
    for proc in workers:
        proc.start()
    return workers, results


async def _clients(
    url: str,
    subscriptions: list[list[str]],
    intervals: list[str],
    start_at: float,
    end_at: float,
    results: Any,
    compression: str | None,
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    samples: list[tuple[int, float]] = []
    closes: Counter[str] = Counter()
    failed = 0
    prefix = '{"type":"candle","seq":'
    cut = len(prefix)

    async def one(symbols: list[str]) -> None:
        nonlocal failed
        try:
            ws = await connect(url, open_timeout=30, max_queue=None, compression=compression)
        except Exception:
            failed += 1
            return
        try:
            await ws.send(
                json.dumps({"action": "subscribe", "symbols": symbols, "intervals": intervals})
            )
            async for raw in ws:
                now = time.time()
                if now > end_at:
                    break
                if now >= start_at and isinstance(raw, str) and raw.startswith(prefix):
                    samples.append((int(raw[cut : raw.index(",", cut)]), now))
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            closes[f"{rcvd.code} {rcvd.reason}" if rcvd else "no close frame"] += 1
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)

    async def cpu_in_window() -> float:
        # this process's CPU seconds between start_at and end_at: what the clients themselves
        # took from the cores the server shares
        await asyncio.sleep(max(0.0, start_at - time.time()))
        begin = time.process_time()
        await asyncio.sleep(max(0.0, end_at - time.time()))
        return time.process_time() - begin

    cpu = asyncio.create_task(cpu_in_window())
    tasks = []
    for symbols in subscriptions:
        tasks.append(asyncio.create_task(one(symbols)))
        await asyncio.sleep(0.002)  # don't open them all in one instant
    remaining = end_at - time.time() + 5
    await asyncio.wait(tasks, timeout=max(remaining, 1))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.put({"samples": samples, "closes": dict(closes), "failed": failed, "cpu_s": await cpu})


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    counts = [int(n) for n in args.clients.split(",")]
    intervals = args.intervals.split(",")
    out: list[dict[str, Any]] = []
    async with embedded_stack(args.symbols, args.speed, max(counts), args.deflate) as stack:
        runner, hub, marks = stack.runner, stack.hub, stack.marks
        log.info("waiting for the first full-market minute ...")
        await until(lambda: runner.bars_in >= args.symbols // 2, 0.5)
        rng = random.Random(7)
        symbols = stack.sim.symbols
        for n in counts:
            subs = [rng.sample(symbols, args.per_client) for _ in range(n)]
            start_at = time.time() + args.warmup_s
            end_at = start_at + args.seconds
            procs, results = start_clients(
                stack.ws_url,
                subs,
                intervals,
                start_at,
                end_at,
                args.procs,
                "deflate" if args.deflate else None,  # browsers offer deflate
            )
            dropped0, events0, bars0 = hub.dropped_slow, hub.events, runner.bars_in
            delivered0 = hub.delivered
            peak_clients = 0
            while time.time() < end_at + 3:
                peak_clients = max(peak_clients, hub.clients)
                await asyncio.sleep(0.5)
            collected = [await asyncio.to_thread(results.get, True, 60) for _ in procs]
            for proc in procs:
                await asyncio.to_thread(proc.join, 30)
            window = args.seconds
            samples = [s for r in collected for s in r["samples"]]
            closes: Counter[str] = Counter()
            for r in collected:
                closes.update(r["closes"])
            starts = [m[0] for m in marks]
            latencies = []
            per_second: Counter[int] = Counter()
            for seq, received in samples:
                i = bisect.bisect_right(starts, seq) - 1
                if i >= 0 and marks[i][0] <= seq <= marks[i][1]:
                    latencies.append(received - marks[i][2])
                per_second[int(received)] += 1
            latencies.sort()
            row = {
                "clients": n,
                "connected_peak": peak_clients,
                "failed_connections": sum(r["failed"] for r in collected),
                "window_s": window,
                "messages": len(samples),
                "messages_per_s": round(len(samples) / window),
                "busiest_second": max(per_second.values(), default=0),
                "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
                "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
                "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
                "latency_mean_ms": round(statistics.fmean(latencies) * 1000, 1)
                if latencies
                else 0.0,
                "dropped_slow": hub.dropped_slow - dropped0,
                "closes": dict(closes),
                "hub_events_per_s": round((hub.events - events0) / (window + args.warmup_s)),
                "hub_delivered_per_s": round(
                    (hub.delivered - delivered0) / (window + args.warmup_s)
                ),
                "bars_in": runner.bars_in - bars0,
                "feed_lag_s": (runner.lag_ms() or 0) / 1000,
            }
            log.info("%s", json.dumps(row))
            out.append(row)
            await until(lambda: hub.clients == 0)  # the previous round's connections are gone
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=12_000)
    parser.add_argument(
        "--speed", type=float, default=0.0, help="simulated minutes per second (0: real time)"
    )
    parser.add_argument("--clients", default="200,500,1000")
    parser.add_argument("--per-client", type=int, default=10, help="symbols per client")
    parser.add_argument("--intervals", default="1m,15m")
    parser.add_argument("--seconds", type=float, default=130.0, help="measurement window")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="connect before measuring")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--deflate", action="store_true", help="permessage-deflate on the server")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("httpx", "speedlayer.simulator.ws", "ingest.polygon.ws", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rows = asyncio.run(run(args))
    print(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}))
    os._exit(0)


if __name__ == "__main__":
    main()
