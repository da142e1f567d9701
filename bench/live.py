"""Full-market bursts end to end (benchmark 2) and WebSocket fan-out during them (benchmark 4).

    .venv/bin/python -m bench.live --symbols 12000 --bursts 3 --clients 1000

The embedded stack runs as ``speedlayer up --workers 1`` runs it (bench/stack.py): the Polygon
simulator at full-market size sends one minute's bars per burst, as Polygon does (batched frames
spread over about a second), to the WebSocket feed -> bus -> resampler -> SQLite -> candle bus in
this process, and over the relay to the API's live hub in a process of its own
(docs/design.md#api-processes); ``--workers 0`` runs the API in this process, as ``speedlayer up``
does, and ``--compare-runs N`` adds N such runs for comparison. The simulator runs at ``--speed``
simulated minutes per second (0.1: a burst every 10 s, time enough for each burst to clear).

A monitor client, in its own process, subscribes to every symbol at every interval (the ``*``
wildcard, with batched frames: ``/ws?batch=1``) and timestamps every candle message. Per bar:

    latency = (receipt of the last of the bar's candle updates, one per interval)
              - (the simulator's write of the frame holding the bar)

Per burst: p50, p99 and max of that latency over the burst's bars, and ``stored_after_last_bar``:
from the simulator's write of the burst's last frame until the pipeline finished storing and
publishing the burst's last batch.

Phase ``burst``: the monitor alone. Phase ``fanout``: ``--clients`` clients instead (in
``--procs`` processes), each subscribed to 10 random symbols x 1m,15m as in bench/ws_fanout.py;
reported: delivered messages/s, p99 from the hub's receipt to the client's, clients dropped, and
the stored-after-last-bar time under that load. Clients share the machine's cores with the
server, so their own scheduling is in the numbers.

The whole run is repeated ``--runs`` times, each on a fresh stack, because the targets hold for
every run, not for a lucky one: the summaries report the worst burst of all runs, and every burst
row names its run. Each burst row carries ``tail``: what the process did during the burst
(garbage collections, event-loop stalls, the pipeline's phases; bench/tail.py), so a slow burst
can be explained. ``--scan`` then looks for the largest client count that keeps the fan-out p99
under a second, trying each count once on one more fresh stack.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import multiprocessing as mp
import random
import time
from collections import Counter, defaultdict
from typing import Any

from bench.common import percentile
from bench.stack import Stack, embedded_stack, until
from bench.ws_fanout import start_clients

log = logging.getLogger("bench.live")
INTERVALS = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
MINUTE_MS = 60_000
INTERVAL_MS = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240}


# -- the monitor (its own process) ----------------------------------------------------------------


def _monitor_process(url: str, end_at: float, results: Any) -> None:
    asyncio.run(_monitor(url, end_at, results))


async def _monitor(url: str, end_at: float, results: Any) -> None:
    import orjson
    from websockets.asyncio.client import connect

    samples: list[tuple[str, str, int, float]] = []
    # Batched frames (?batch=1): one frame per burst chunk rather than one per candle update.
    async with connect(url + "?batch=1", max_queue=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"action": "subscribe", "symbols": ["*"], "intervals": INTERVALS}))
        while time.time() < end_at:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.1, end_at - time.time()))
            except TimeoutError:
                break
            now = time.time()
            for msg in orjson.loads(raw):
                if msg["type"] == "candle":
                    samples.append((msg["symbol"], msg["interval"], msg["timestamp"], now))
    results.put(samples)


# -- analysis -------------------------------------------------------------------------------------


def burst_figures(
    stack: Stack,
    samples: list[tuple[str, str, int, float]] | None,
    minutes: list[int],
    run: int = 1,
) -> list[dict[str, Any]]:
    """Per burst minute: the per-bar latency distribution (with a monitor's ``samples``) and the
    stored-after-last-bar time."""
    arrivals: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for symbol, interval, timestamp, at in samples or ():
        arrivals[(symbol, interval, timestamp)].append(at)
    for times in arrivals.values():
        times.sort()
    rows = []
    for minute in minutes:
        sent = {sym: at for (sym, t), at in stack.sent.items() if t == minute}
        if not sent:
            continue
        latencies = []
        missing = 0
        for symbol, at in sent.items() if samples is not None else ():
            worst = 0.0
            for interval in INTERVALS:
                span = INTERVAL_MS[interval] * MINUTE_MS
                times = arrivals.get((symbol, interval, minute - minute % span), [])
                i = bisect.bisect_left(times, at)
                if i == len(times):
                    missing += 1
                    break
                worst = max(worst, times[i] - at)
            else:
                latencies.append(worst)
        latencies.sort()
        first_sent, last_sent = min(sent.values()), max(sent.values())
        done = [at for at, counts in stack.stored if minute in counts]
        window_end = max([last_sent, *done]) + (latencies[-1] if latencies else 0.0)
        rows.append(
            {
                "run": run,
                "minute": minute,
                "bars": len(sent),
                "bars_without_all_updates": missing,
                "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 1)
                if latencies
                else None,
                "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1)
                if latencies
                else None,
                "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
                "send_spread_ms": round((last_sent - min(sent.values())) * 1000, 1),
                "stored_after_last_bar_ms": round((max(done) - last_sent) * 1000, 1)
                if done
                else None,
                "latency_ms": quantiles(latencies),
                "tail": stack.probe.summarise(first_sent, window_end),
            }
        )
    return rows


def quantiles(ascending: list[float], steps: int = 100) -> list[float]:
    """The distribution of a sorted list of seconds in ms: its 0th..100th percentiles."""
    if not ascending:
        return []
    return [round(percentile(ascending, i / steps) * 1000, 1) for i in range(steps + 1)]


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def worst(key: str) -> float | None:
        return max((row[key] for row in rows if row[key] is not None), default=None)

    def middle(key: str) -> float | None:
        values = sorted(row[key] for row in rows if row[key] is not None)
        return values[len(values) // 2] if values else None

    return {
        "runs": len({row["run"] for row in rows}),
        "bursts": len(rows),
        "bars_per_burst": middle("bars"),
        "latency_p50_ms_median": middle("latency_p50_ms"),
        "latency_p99_ms_median": middle("latency_p99_ms"),
        "latency_p99_ms_worst": worst("latency_p99_ms"),
        "latency_max_ms_worst": worst("latency_max_ms"),
        "stored_after_last_bar_ms_median": middle("stored_after_last_bar_ms"),
        "stored_after_last_bar_ms_worst": worst("stored_after_last_bar_ms"),
        "per_burst": rows,
    }


def fanout_summary(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    """The fan-out runs at one client count: the worst run's figures, and each run's."""
    worst = max(per_run, key=lambda r: r["latency_p99_ms"])
    return {
        **{k: v for k, v in worst.items() if k != "latency_ms"},
        "runs": len(per_run),
        "latency_p99_ms_per_run": [r["latency_p99_ms"] for r in per_run],
        "dropped_slow": sum(r["dropped_slow"] for r in per_run),
        "failed_connections": sum(r["failed_connections"] for r in per_run),
        "latency_ms": worst["latency_ms"],
    }


# -- the run --------------------------------------------------------------------------------------


async def _phase(
    stack: Stack,
    bursts: int,
    clients: int,
    procs: int,
    per_client: int,
    monitor: bool,
    run: int,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One phase on ``stack``: its burst rows and, with clients, the fan-out figures."""
    sim = stack.sim
    ctx = mp.get_context("spawn")
    minute_s = 60.0 / (sim.config.speed * 60) if sim.config.speed > 0 else 60.0
    warmup_s = 5.0 + clients / 200
    start_at = time.time() + warmup_s
    end_at = start_at + bursts * minute_s + 2
    monitor_results = ctx.Queue()
    watcher = ctx.Process(target=_monitor_process, args=(stack.ws_url, end_at, monitor_results))
    if monitor:
        watcher.start()
    workers: list[Any] = []
    client_results: Any = None
    if clients:
        rng = random.Random(7)
        subs = [rng.sample(sim.symbols, per_client) for _ in range(clients)]
        workers, client_results = start_clients(
            stack.ws_url, subs, ["1m", "15m"], start_at, end_at, procs
        )
    hub = stack.hub
    await until(lambda: time.time() >= start_at, 0.2)
    dropped0, delivered0 = hub.dropped_slow, hub.delivered
    cpu0 = stack.cpu_s()
    server_cpu: dict[str, float] | None = None
    peak = 0
    while time.time() < end_at + 3:
        peak = max(peak, hub.clients)
        if server_cpu is None and time.time() >= end_at:
            server_cpu = {k: v - cpu0[k] for k, v in stack.cpu_s().items()}
        await asyncio.sleep(0.2)
    await stack.sync_marks()
    samples = await asyncio.to_thread(monitor_results.get, True, 120) if monitor else None
    collected = [await asyncio.to_thread(client_results.get, True, 120) for _ in workers]
    for proc in [watcher, *workers] if monitor else workers:
        await asyncio.to_thread(proc.join, 30)
    # The bursts whose first frame went out inside the window.
    began: dict[int, float] = {}
    for (_, t), at in stack.sent.items():
        began[t] = min(began.get(t, at), at)
    minutes = sorted(t for t, at in began.items() if start_at <= at <= end_at - 2)
    rows = burst_figures(stack, samples, minutes[:bursts], run)
    fanout = None
    if clients:
        fan = [s for r in collected for s in r["samples"]]
        closes: Counter[str] = Counter()
        for r in collected:
            closes.update(r["closes"])
        starts = [m[0] for m in stack.marks]
        latencies = []
        for seq, received in fan:
            i = bisect.bisect_right(starts, seq) - 1
            if i >= 0 and stack.marks[i][0] <= seq <= stack.marks[i][1]:
                latencies.append(received - stack.marks[i][2])
        latencies.sort()
        window = end_at - start_at
        fanout = {
            "clients": clients,
            "connected_peak": peak,
            "failed_connections": sum(r["failed"] for r in collected),
            "messages": len(fan),
            "messages_per_s": round(len(fan) / window),
            "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
            "dropped_slow": hub.dropped_slow - dropped0,
            # CPU seconds over the window, on a machine of os.cpu_count() cores
            "cpu_s": {
                "server": round(sum((server_cpu or {}).values()), 2),
                **{k: round(v, 2) for k, v in (server_cpu or {}).items()},
                "clients": round(sum(r["cpu_s"] for r in collected), 2),
                "window": round(window, 1),
            },
            "hub_delivered": hub.delivered - delivered0,
            "closes": dict(closes),
            "latency_ms": quantiles(latencies),
        }
    await until(lambda: hub.clients == 0, 0.2)
    return rows, fanout


async def _one_run(
    run: int,
    symbols: int,
    speed: float,
    bursts: int,
    clients: int,
    procs: int,
    per_client: int,
    api_process: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
    """A fresh stack: the monitor's bursts, then (with clients) the fan-out's, and the run's
    garbage collections by generation."""
    async with embedded_stack(
        symbols, speed, max_clients=clients + 10, api_process=api_process
    ) as stack:
        log.info("run %d: waiting for the first full burst ...", run)
        await until(lambda: stack.runner.bars_in >= symbols // 2, 0.2)
        burst, _ = await _phase(stack, bursts, 0, procs, per_client, True, run)
        fan_rows: list[dict[str, Any]] = []
        fan = None
        if clients:
            fan_rows, fan = await _phase(stack, bursts, clients, procs, per_client, False, run)
        return burst, fan_rows, fan, stack.probe.collections()


async def _scan(
    symbols: int,
    speed: float,
    counts: list[int],
    procs: int,
    per_client: int,
    bound_ms: float,
    api_process: bool,
) -> dict[str, Any]:
    """Fan-out at growing client counts (2 bursts each) until the p99 reaches ``bound_ms``."""
    tried: list[dict[str, Any]] = []
    async with embedded_stack(
        symbols, speed, max_clients=max(counts) + 10, api_process=api_process
    ) as stack:
        await until(lambda: stack.runner.bars_in >= symbols // 2, 0.2)
        for count in counts:
            log.info("scan: %d clients", count)
            _, fan = await _phase(stack, 2, count, procs, per_client, False, 0)
            assert fan is not None
            tried.append({k: v for k, v in fan.items() if k not in ("latency_ms", "closes")})
            if (
                fan["latency_p99_ms"] >= bound_ms
                or fan["dropped_slow"]
                or fan["failed_connections"]
            ):
                break
    kept = [
        t["clients"]
        for t in tried
        if t["latency_p99_ms"] < bound_ms and not t["dropped_slow"] and not t["failed_connections"]
    ]
    return {"bound_ms": bound_ms, "largest_clients": max(kept, default=None), "tried": tried}


Shape = tuple[int, float, int, int, int, int]  # symbols, speed, bursts, clients, procs, per client


async def _runs(
    runs: int, api_process: bool, shape: Shape
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """``runs`` fresh stacks of ``shape`` one after another: the burst summary, the fan-out's
    (None without clients), and the garbage collections of each run."""
    burst_rows: list[dict[str, Any]] = []
    fan_rows: list[dict[str, Any]] = []
    fans: list[dict[str, Any]] = []
    collections = []
    for run in range(1, runs + 1):
        burst, rows, fan, gcs = await _one_run(run, *shape, api_process)
        collections.append(gcs)
        burst_rows += burst
        fan_rows += rows
        if fan is not None:
            fans.append(fan)
    fanout = {**summary(fan_rows), "fanout": fanout_summary(fans)} if fans else None
    return summary(burst_rows), fanout, collections


async def run_async(
    symbols: int,
    speed: float,
    bursts: int,
    clients: int,
    procs: int,
    per_client: int,
    runs: int,
    scan: list[int],
    workers: int = 1,
    compare_runs: int = 0,
) -> dict[str, Any]:
    out: dict[str, Any] = {"symbols": symbols, "speed": speed, "runs": runs, "workers": workers}
    shape: Shape = (symbols, speed, bursts, clients, procs, per_client)
    out["burst"], fanout, out["gc_per_run"] = await _runs(runs, workers > 0, shape)
    if fanout is not None:
        out["fanout"] = fanout
    if compare_runs and workers:
        # the same phases with the API in the pipeline's process (`speedlayer up`), for the
        # difference a process of its own makes
        burst, fanout, _ = await _runs(compare_runs, False, shape)
        out["in_process"] = {"runs": compare_runs, "burst": burst}
        if fanout is not None:
            out["in_process"]["fanout"] = fanout["fanout"]
    if scan:
        out["scan"] = await _scan(symbols, speed, scan, procs, per_client, 1000.0, workers > 0)
    return out


def run(
    symbols: int,
    speed: float,
    bursts: int,
    clients: int,
    procs: int = 2,
    runs: int = 1,
    scan: tuple[int, ...] = (),
    workers: int = 1,
    compare_runs: int = 0,
) -> dict[str, Any]:
    return asyncio.run(
        run_async(
            symbols, speed, bursts, clients, procs, 10, runs, list(scan), workers, compare_runs
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=12_000)
    parser.add_argument("--speed", type=float, default=0.1, help="simulated minutes per second")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000, help="fan-out clients (0: none)")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--runs", type=int, default=1, help="fresh stacks, one after another")
    parser.add_argument(
        "--scan", default="", help="client counts to try for the p99 < 1 s bound, e.g. 2000,3000"
    )
    parser.add_argument(
        "--workers",
        type=int,
        choices=(0, 1),
        default=1,
        help="1: the API in a process of its own (speedlayer up --workers 1); 0: in the "
        "pipeline's process (speedlayer up)",
    )
    parser.add_argument(
        "--compare-runs",
        type=int,
        default=0,
        help="with --workers 1: runs with the API in the pipeline's process too, for comparison",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    scan = tuple(int(n) for n in args.scan.split(",") if n)
    figures = run(
        args.symbols, args.speed, args.bursts, args.clients, args.procs, args.runs, scan,
        args.workers, args.compare_runs,
    )  # fmt: skip
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
