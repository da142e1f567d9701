"""Soak: the full-market stack for 20 minutes under churning live clients and REST load (a
benchmark, not a test; ``make soak``).

    .venv/bin/python -m bench --only soak      # full size: bench/results.json, docs/benchmarks.md,
                                               # docs/soak.png (about 22 minutes)
    .venv/bin/python -m bench.soak --seconds 120 --symbols 500 --clients 100 --plot /tmp/soak.png

One process runs the embedded stack as ``speedlayer up`` does (Polygon simulator -> feed -> bus ->
resampler -> SQLite -> candle bus -> API with the live hub), served as ``speedlayer up`` serves it
(launch.wiring.serve: uvicorn with permessage-deflate on, as browsers ask for it), after backfilling
``history_min`` minutes of every symbol so that snapshots have history. Its settings: the
simulated market at ``speed`` minutes per second, the API's heap trimmed every ``trim_s`` seconds
(``SPEEDLAYER_MEMORY_TRIM_S``; glibc ``malloc_trim``, see speedlayer/runtime.py). Client
processes (spawned) run from a common start to a common end:

* WebSocket churn: ``clients`` clients in ``procs`` processes, each looping: connect, subscribe to
  3 random symbols x 2 random intervals with ``"snapshot": 100`` (one session in 20 opens like the
  dashboard instead: one symbol x all 7 intervals with ``"snapshot": 1000``), read for a random
  ``session_s`` (5-30 s), close, connect again. Every ``burst_every_s`` all of them close and
  reconnect at the same instant: a burst of connections each reading snapshots, the pattern under
  which resident memory grew from burst to burst (speedlayer/runtime.py). Counted: connections
  opened, failed connects, messages by type, sessions whose snapshots did not all arrive within
  60 s, the time until a session's last snapshot, closes the client did not cause (by code and
  reason).
* SSE: ``sse_clients`` streams on ``/stream/candles`` (httpx) with the same churn and bursts
  (2 symbols x 2 intervals, snapshot 100), counting events by type.
* REST: one process sending ``rest_rate`` requests/s (at most 16 in flight): 8 in 10
  ``/candles/{symbol}?interval=15m&limit=100``, 1 ``/symbols``, 1 ``/healthz``; status codes,
  transport errors and latency percentiles per endpoint.

The stack's process samples itself every ``sample_s``: resident memory (VmRSS), open file
descriptors, asyncio tasks, threads, live clients connected (WebSocket, SSE) and the hub's,
pipeline's and feed's counters. Once the clients have stopped, it waits until the pipeline has
taken in every bar the feed published and the hub every candle the pipeline published, lets a
trim period pass and samples once more. The checks, "nothing dropped that should not be": no
failed connect and no connection refused, no close or stream end the client did not cause, no
error message, every snapshot, no REST 5xx or transport error, no slow-consumer drop, no feed
reconnect or rejected event, the pipeline, feed and hub without a problem and candles still
flowing at the end, every client gone from the hub and tasks and open files back near their
level before the clients came. The figures (first/last/max RSS, the RSS slope over the second
half, files and tasks at start/end/max) and the samples go to bench/results.json; the plot (RSS,
open files, tasks, clients over time; bench/plots.py draws it) to ``plot_path``.

What the RSS covers: the whole process, not only the API. The resampler holds the bars of every
open bucket once, up to 4h15m of the market (the longest interval plus the lateness): with the full
market that rises with simulated time and falls when a 4h bucket is evicted (``held_bars`` in the
samples, the grey line of the plot), so the simulated market runs at a minute every 4 s, fast
enough for that to happen within the run. The simulator, which stands in for Polygon and is no
part of the service, keeps its bars for REST backfill one hour here instead of a day.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import percentile
from bench.plots import plot_soak
from bench.stack import until

log = logging.getLogger("bench.soak")

INTERVALS = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
SNAPSHOT = 100  # candles per pair in an ordinary session's snapshot
DASHBOARD_SHARE = 0.05  # sessions that open like the dashboard: one symbol, every interval
DASHBOARD_SNAPSHOT = 1000
SNAPSHOT_WAIT_S = 60.0  # a session stays open this long at most for its snapshots
OPEN_TIMEOUT_S = 30.0
REST_CONCURRENCY = 16
SIM_KEEP_MIN = 60  # minutes of bars the simulator keeps for REST backfill
# After the clients: at most this many more tasks and open files than before them (the store's
# four reader threads open their SQLite connections, 2-3 files each, on first use).
TASKS_MARGIN = 10
FDS_MARGIN = 16


def _sleep_until(wall: float) -> Any:
    return asyncio.sleep(max(0.0, wall - time.time()))


def _next_burst(bursts: list[float], now: float) -> float:
    return next((at for at in bursts if at > now), float("inf"))


@dataclass
class Tally:
    """One client process's counts (WebSocket or SSE)."""

    opened: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    abnormal: Counter[str] = field(default_factory=Counter)
    missing_snapshots: int = 0
    dashboards: int = 0
    close_errors: int = 0
    snapshot_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "failed": dict(self.failed),
            "messages": dict(self.messages),
            "abnormal": dict(self.abnormal),
            "missing_snapshots": self.missing_snapshots,
            "dashboards": self.dashboards,
            "close_errors": self.close_errors,
            "snapshot_s": self.snapshot_s,
        }


def _kind(raw: str | bytes) -> str:
    """The ``type`` of a /ws message: every message starts with ``{"type":"``."""
    if not isinstance(raw, str):
        return "binary"
    if raw.startswith('{"type":"'):
        end = raw.find('"', 9)
        if end > 0:
            return raw[9:end]
    return "other"


# -- WebSocket clients (their own processes) ------------------------------------------------------


def _ws_process(
    url: str,
    symbols: list[str],
    seeds: list[int],
    start_at: float,
    end_at: float,
    bursts: list[float],
    session_s: tuple[float, float],
    results: Any,
) -> None:
    tally = asyncio.run(_ws_clients(url, symbols, seeds, start_at, end_at, bursts, session_s))
    results.put({"role": "ws", **tally.as_dict()})


async def _ws_clients(
    url: str,
    symbols: list[str],
    seeds: list[int],
    start_at: float,
    end_at: float,
    bursts: list[float],
    session_s: tuple[float, float],
) -> Tally:
    tally = Tally()

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        await _sleep_until(start_at + rng.uniform(0, min(5.0, session_s[0])))
        while (now := time.time()) < end_at:
            deadline = min(now + rng.uniform(*session_s), _next_burst(bursts, now), end_at)
            await _ws_session(url, rng, symbols, deadline, tally)

    await asyncio.gather(*(client(seed) for seed in seeds))
    return tally


async def _ws_session(
    url: str, rng: random.Random, symbols: list[str], deadline: float, tally: Tally
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    try:
        ws = await connect(url, open_timeout=OPEN_TIMEOUT_S, max_queue=None, max_size=None)
    except Exception as exc:
        tally.failed[type(exc).__name__] += 1
        await asyncio.sleep(1.0)
        return
    tally.opened += 1
    if rng.random() < DASHBOARD_SHARE:
        tally.dashboards += 1
        pick, intervals, depth = [rng.choice(symbols)], INTERVALS, DASHBOARD_SNAPSHOT
    else:
        pick, intervals, depth = rng.sample(symbols, 3), rng.sample(INTERVALS, 2), SNAPSHOT
    expected, received = len(pick) * len(intervals), 0
    loop = asyncio.get_running_loop()
    sent_at = time.time()
    # The session reads until its deadline, or longer (up to SNAPSHOT_WAIT_S) for its snapshots.
    limit = max(deadline, sent_at + SNAPSHOT_WAIT_S)
    try:
        request = {"action": "subscribe", "symbols": pick, "intervals": intervals}
        await ws.send(json.dumps(request | {"snapshot": depth}))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit - time.time()) as scope:
                while True:
                    kind = _kind(await ws.recv())
                    tally.messages[kind] += 1
                    if kind == "snapshot":
                        received += 1
                        if received == expected:
                            tally.snapshot_s.append(time.time() - sent_at)
                            scope.reschedule(loop.time() + deadline - time.time())
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        tally.abnormal[f"{rcvd.code} {rcvd.reason}" if rcvd else "no close frame"] += 1
        return
    except Exception as exc:
        tally.abnormal[type(exc).__name__] += 1
        return
    finally:
        try:
            await asyncio.wait_for(ws.close(), 10)
        except Exception:
            tally.close_errors += 1
    protocol = ws.protocol
    if protocol.close_rcvd_then_sent and protocol.close_rcvd is not None:
        # The server closed first, just before this client would have.
        tally.abnormal[f"{protocol.close_rcvd.code} {protocol.close_rcvd.reason}"] += 1
    elif received < expected:
        tally.missing_snapshots += 1


# -- SSE clients (one process) --------------------------------------------------------------------


def _sse_process(
    base: str,
    symbols: list[str],
    seeds: list[int],
    start_at: float,
    end_at: float,
    bursts: list[float],
    session_s: tuple[float, float],
    results: Any,
) -> None:
    tally = asyncio.run(_sse_clients(base, symbols, seeds, start_at, end_at, bursts, session_s))
    results.put({"role": "sse", **tally.as_dict()})


async def _sse_clients(
    base: str,
    symbols: list[str],
    seeds: list[int],
    start_at: float,
    end_at: float,
    bursts: list[float],
    session_s: tuple[float, float],
) -> Tally:
    import httpx

    tally = Tally()
    timeout = httpx.Timeout(60.0, connect=OPEN_TIMEOUT_S)
    limits = httpx.Limits(max_connections=len(seeds) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as http:

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            await _sleep_until(start_at + rng.uniform(0, min(5.0, session_s[0])))
            while (now := time.time()) < end_at:
                deadline = min(now + rng.uniform(*session_s), _next_burst(bursts, now), end_at)
                await _sse_session(http, rng, symbols, deadline, tally)

        await asyncio.gather(*(client(seed) for seed in seeds))
    return tally


async def _sse_session(
    http: Any, rng: random.Random, symbols: list[str], deadline: float, tally: Tally
) -> None:
    import httpx

    pick, intervals = rng.sample(symbols, 2), rng.sample(INTERVALS, 2)
    params = {"symbols": ",".join(pick), "intervals": ",".join(intervals), "snapshot": SNAPSHOT}
    expected, received = len(pick) * len(intervals), 0
    loop = asyncio.get_running_loop()
    sent_at = time.time()
    limit = max(deadline, sent_at + SNAPSHOT_WAIT_S)
    opened = False
    try:
        async with http.stream("GET", "/stream/candles", params=params) as response:
            if response.status_code != 200:
                tally.failed[f"HTTP {response.status_code}"] += 1
                await asyncio.sleep(1.0)
                return
            opened = True
            tally.opened += 1
            event = ""
            try:
                async with asyncio.timeout(limit - time.time()) as scope:
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                            tally.messages[event] += 1
                            if event == "snapshot":
                                received += 1
                                if received == expected:
                                    tally.snapshot_s.append(time.time() - sent_at)
                                    scope.reschedule(loop.time() + deadline - time.time())
                        elif event == "error" and line.startswith("data: "):
                            message = json.loads(line[6:]).get("message", "")
                            tally.abnormal[f"error event: {message}"] += 1
                            return
            except TimeoutError:  # the client's own end of the session
                if received < expected:
                    tally.missing_snapshots += 1
                return
            tally.abnormal["stream ended by the server"] += 1
    except httpx.HTTPError as exc:
        if opened:
            tally.abnormal[type(exc).__name__] += 1
        else:
            tally.failed[type(exc).__name__] += 1
            await asyncio.sleep(1.0)


# -- REST load (one process) ----------------------------------------------------------------------


def _rest_process(
    base: str, symbols: list[str], rate: float, start_at: float, end_at: float, results: Any
) -> None:
    results.put({"role": "rest", **asyncio.run(_rest(base, symbols, rate, start_at, end_at))})


async def _rest(
    base: str, symbols: list[str], rate: float, start_at: float, end_at: float
) -> dict[str, Any]:
    import httpx

    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    gate = asyncio.Semaphore(REST_CONCURRENCY)
    rng = random.Random(11)
    pending: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(
        max_connections=REST_CONCURRENCY, max_keepalive_connections=REST_CONCURRENCY
    )
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as http:

        async def one(name: str, path: str, params: dict[str, Any] | None) -> None:
            began = time.perf_counter()
            try:
                response = await http.get(path, params=params)
            except httpx.HTTPError as exc:
                errors[f"{name} {type(exc).__name__}"] += 1
            else:
                statuses[name][response.status_code] += 1
                latencies[name].append(time.perf_counter() - began)
            finally:
                gate.release()

        i = 0
        while (at := start_at + i / rate) < end_at:
            await _sleep_until(at)
            await gate.acquire()
            if i % 10 == 0:
                name, path, params = "symbols", "/symbols", None
            elif i % 10 == 5:
                name, path, params = "healthz", "/healthz", None
            else:
                symbol = rng.choice(symbols)
                name, path = "candles", f"/candles/{symbol}"
                params = {"interval": "15m", "limit": 100}
            task = asyncio.create_task(one(name, path, params))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.gather(*pending)
    endpoints = {}
    for name, times in latencies.items():
        times.sort()
        endpoints[name] = {
            "requests": sum(statuses[name].values()),
            "statuses": {str(code): n for code, n in sorted(statuses[name].items())},
            "p50_ms": round(percentile(times, 0.50) * 1000, 1),
            "p99_ms": round(percentile(times, 0.99) * 1000, 1),
            "max_ms": round(times[-1] * 1000, 1),
        }
    return {"requests": i, "endpoints": endpoints, "errors": dict(errors)}


# -- the stack's side -----------------------------------------------------------------------------


def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS:", "Threads:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def _sample(embedded: Any, hub: Any, t: float) -> dict[str, Any]:
    runner = embedded.runner
    status = _proc_status()
    lag = runner.lag_ms()
    return {
        "t_s": round(t, 1),
        "rss_mib": round(status["VmRSS"] / 1024, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "threads": status["Threads"],
        "ws_clients": hub.ws_clients,
        "sse_clients": hub.sse_clients,
        "connections_total": hub.connections_total,
        "rejected_connections": hub.rejected_connections,
        "dropped_slow": hub.dropped_slow,
        "delivered": hub.delivered,
        "events": hub.events,
        "bars_in": runner.bars_in,
        "rows_written": runner.pipeline.stats.rows_written,
        "held_bars": sum(len(group) for group in runner.pipeline.resampler._bars.values()),
        "feed_lag_s": None if lag is None else round(lag / 1000, 1),
    }


def _columns(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [s[key] for s in samples] for key in samples[0]}


def _slope_per_10min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per 10 minutes."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return round(cov / var * 600, 2)


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The client processes' tallies of one kind, added up."""
    failed: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    abnormal: Counter[str] = Counter()
    waits: list[float] = []
    for part in parts:
        failed.update(part["failed"])
        messages.update(part["messages"])
        abnormal.update(part["abnormal"])
        waits.extend(part["snapshot_s"])
    waits.sort()
    return {
        "processes": len(parts),
        "connections": sum(p["opened"] for p in parts),
        "failed_connects": dict(failed),
        "messages": dict(sorted(messages.items())),
        "abnormal_closes": dict(abnormal),
        "missing_snapshots": sum(p["missing_snapshots"] for p in parts),
        "dashboards": sum(p["dashboards"] for p in parts),
        "close_errors": sum(p["close_errors"] for p in parts),
        "snapshot_wait_p50_ms": round(percentile(waits, 0.50) * 1000, 1),
        "snapshot_wait_p99_ms": round(percentile(waits, 0.99) * 1000, 1),
        "snapshot_wait_max_ms": round(waits[-1] * 1000, 1) if waits else None,
    }


async def run_async(
    symbols: int,
    speed: float,
    seconds: float,
    clients: int,
    sse_clients: int,
    rest_rate: float,
    burst_every_s: float,
    session_s: tuple[float, float],
    sample_s: float,
    trim_s: float,
    history_min: int,
    procs: int,
    db_dir: Path,
) -> dict[str, Any]:
    from launch.wiring import embedded_stack, serve
    from speedlayer.config import Settings
    from speedlayer.runtime import tune_gc

    session = (float(session_s[0]), float(session_s[1]))
    max_connections = 2 * (clients + sse_clients) + 100  # a burst's old and new connections
    settings = Settings(
        db=db_dir / "soak.db",
        source="simulator",
        sim_symbols=symbols,
        sim_speed=speed,
        sim_history_min=history_min,
        backfill_lookback_min=history_min,
        memory_trim_s=trim_s,
        live_max_connections=max_connections,
    )
    tune_gc()  # as `speedlayer up` does
    async with (
        embedded_stack(settings) as embedded,
        serve(embedded.app, backlog=4096) as port,
    ):
        sim, runner, feed = embedded.simulator, embedded.runner, embedded.feed
        assert sim is not None  # source="simulator"
        pipeline = runner.pipeline
        hub = embedded.app.state.resources.hub
        stats = feed.stats

        def caught_up() -> bool:
            """The pipeline has every bar the feed published, the hub every candle published."""
            return (
                runner.bars_in == stats.bars_published + stats.backfill_bars
                and hub.events + hub.stale_skipped == pipeline.stats.candles_published
            )

        log.info("backfilling %d minutes of %d symbols ...", history_min, symbols)
        began = time.time()
        await feed.backfill_idle()
        async with asyncio.timeout(600):
            await until(lambda: sim.minutes_sent >= 1 and caught_up(), 0.05)
        log.info("backfilled %d bars in %.0f s", stats.backfill_bars, time.time() - began)
        # The simulator stands in for Polygon: it keeps an hour of bars for backfill, not a day.
        sim._store.prune(sim.clock.now_ms() - SIM_KEEP_MIN * 60_000)

        names = sim.symbols
        ws_url, base = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
        start_at = time.time() + (5.0 if seconds < 300 else 15.0)  # time to start the processes
        end_at = start_at + seconds
        bursts = []
        at = start_at + burst_every_s
        while at < end_at - session[0]:
            bursts.append(at)
            at += burst_every_s
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        n = max(1, min(procs, clients))
        seeds = list(range(clients))
        workers = [
            ctx.Process(
                target=_ws_process,
                args=(ws_url, names, seeds[i::n], start_at, end_at, bursts, session, results),
            )
            for i in range(n if clients else 0)
        ]
        if sse_clients:
            sse_seeds = list(range(clients, clients + sse_clients))
            workers.append(
                ctx.Process(
                    target=_sse_process,
                    args=(base, names, sse_seeds, start_at, end_at, bursts, session, results),
                )
            )
        if rest_rate > 0:
            workers.append(
                ctx.Process(
                    target=_rest_process, args=(base, names, rest_rate, start_at, end_at, results)
                )
            )
        for proc in workers:
            proc.start()

        samples: list[dict[str, Any]] = []

        def sample(due: float | None = None) -> dict[str, Any]:
            sim._store.prune(sim.clock.now_ms() - SIM_KEEP_MIN * 60_000)
            now = time.time()
            row = _sample(embedded, hub, now - start_at)
            # How late the event loop ran the sampler: its lag behind the wall clock.
            row["loop_lag_ms"] = None if due is None else round((now - due) * 1000, 1)
            samples.append(row)
            return row

        async def sampler() -> None:
            k = 1
            while True:
                due = start_at + k * sample_s
                await _sleep_until(due)
                sample(due)
                k += 1

        await _sleep_until(start_at - 0.2)
        first = sample()  # before the first client connects
        sampling = asyncio.create_task(sampler(), name="soak-sampler")
        log.info(
            "%d WebSocket clients (%d processes), %d SSE, REST %g/s for %.0f s; bursts at %s s",
            clients,
            n,
            sse_clients,
            rest_rate,
            seconds,
            [round(b - start_at) for b in bursts],
        )
        collected: list[dict[str, Any]] = []
        for _ in workers:
            wait = max(0.0, end_at - time.time()) + SNAPSHOT_WAIT_S + 60
            try:
                collected.append(await asyncio.to_thread(results.get, True, wait))
            except queue.Empty:
                break
        for proc in workers:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.terminate()
        lost = len(workers) - len(collected)
        end = [s for s in samples if s["t_s"] <= seconds][-1]  # the last sample under load
        ended = sample()  # the clients have stopped
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await until(lambda: hub.clients == 0, 0.1)
        quiet = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await until(caught_up, 0.02)
                quiet = True
        counts = {
            "feed_bars_published": stats.bars_published,
            "feed_backfill_bars": stats.backfill_bars,
            "pipeline_bars_in": runner.bars_in,
            "pipeline_candles_published": pipeline.stats.candles_published,
            "hub_events": hub.events,
            "hub_stale_skipped": hub.stale_skipped,
        }
        await asyncio.sleep(trim_s + 1.0)  # a trim period passes
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        after = sample()
        problems = [p for p in (runner.problem(), feed.problem(), hub.problem()) if p is not None]
        hub_after = {
            "clients": hub.clients,
            "subscribed_pairs": len(hub._subs),
            "wildcards": hub.wildcards,
        }
        feed_state = {
            "reconnects": stats.reconnects,
            "rejected": dict(stats.rejected),
            "backfill_errors": dict(stats.backfill_errors),
            "publish_errors": stats.publish_errors,
            "queue_full_events": stats.queue_full_events,
            "last_disconnect": stats.last_disconnect,
        }
        sim_minutes = sim.minutes_sent

    by_role: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for part in collected:
        by_role[part["role"]].append(part)
    ws = _merge(by_role["ws"])
    sse = _merge(by_role["sse"])
    rest: dict[str, Any] = {"requests": 0, "endpoints": {}, "errors": {}}
    if by_role["rest"]:
        rest = by_role["rest"][0]
    rest = {k: v for k, v in rest.items() if k != "role"}
    rest["requests_per_s"] = round(rest["requests"] / seconds, 1)

    load = [s for s in samples if s["t_s"] <= seconds]
    half = [(s["t_s"], s["rss_mib"]) for s in load if s["t_s"] >= seconds / 2]
    rss = [s["rss_mib"] for s in load]
    figures: dict[str, Any] = {
        "symbols": symbols,
        "speed": speed,
        "sim_minute_s": round(1 / speed, 2) if speed else 60.0,
        "sim_minutes": sim_minutes,
        "history_min": history_min,
        "seconds": seconds,
        "clients": clients,
        "procs": n,
        "sse_clients": sse_clients,
        "rest_rate": rest_rate,
        "session_s": list(session),
        "snapshot": SNAPSHOT,
        "dashboard_share": DASHBOARD_SHARE,
        "dashboard_snapshot": DASHBOARD_SNAPSHOT,
        "burst_every_s": burst_every_s,
        "burst_at_s": [round(b - start_at, 1) for b in bursts],
        "sample_s": sample_s,
        "memory_trim_s": trim_s,
        "live_max_connections": max_connections,
        "permessage_deflate": True,  # uvicorn's default, as `speedlayer up` serves browsers
        "sim_keep_min": SIM_KEEP_MIN,
        "rss_mib": {
            "first": first["rss_mib"],
            "last": end["rss_mib"],
            "max": max(rss),
            "after": after["rss_mib"],
            "max_first_half": max(
                (s["rss_mib"] for s in load if s["t_s"] < seconds / 2), default=None
            ),
            "max_second_half": max((v for _, v in half), default=None),
            "slope_second_half_per_10min": _slope_per_10min(half),
        },
        "fds": _span(load, after, "fds"),
        "tasks": _span(load, after, "tasks"),
        "threads": _span(load, after, "threads"),
        "held_bars_max": max(s["held_bars"] for s in load),
        "loop_lag_max_ms": max((s["loop_lag_ms"] or 0.0 for s in load), default=None),
        "websocket": ws,
        "sse": sse,
        "rest": rest,
        "hub": {
            key: end[key] - first[key]
            for key in ("connections_total", "delivered", "events", "dropped_slow")
        }
        | {"rejected_connections": after["rejected_connections"]},
        "pipeline": {
            "bars_in": end["bars_in"] - first["bars_in"],
            "rows_written": end["rows_written"] - first["rows_written"],
        },
        "counts_at_end": counts,
        "feed": feed_state,
        "hub_after": hub_after,
        "client_processes_lost": lost,
    }
    figures["checks"] = _checks(figures, first, ended, after, quiet, problems, lost)
    figures["samples"] = _columns(samples)
    return figures


def _span(load: list[dict[str, Any]], after: dict[str, Any], key: str) -> dict[str, Any]:
    values = [s[key] for s in load]
    return {"start": values[0], "end": values[-1], "max": max(values), "after": after[key]}


def _checks(
    fig: dict[str, Any],
    first: dict[str, Any],
    ended: dict[str, Any],
    after: dict[str, Any],
    quiet: bool,
    problems: list[str],
    lost: int,
) -> list[dict[str, Any]]:
    ws, sse, rest = fig["websocket"], fig["sse"], fig["rest"]
    server_errors = sum(
        n
        for endpoint in rest["endpoints"].values()
        for code, n in endpoint["statuses"].items()
        if code.startswith("5")
    )

    errors = ws["messages"].get("error", 0) + sse["messages"].get("error", 0)
    missing = ws["missing_snapshots"] + sse["missing_snapshots"]
    candles = ws["messages"].get("candle", 0) + sse["messages"].get("candle", 0)
    feed, hub_after = fig["feed"], fig["hub_after"]
    feed_ok = (
        feed["reconnects"] == 0
        and not feed["rejected"]
        and not feed["backfill_errors"]
        and feed["publish_errors"] == 0
    )
    dropped = after["dropped_slow"] - first["dropped_slow"]
    flowing = [after["bars_in"] - ended["bars_in"], after["events"] - ended["events"]]
    tasks, fds = [first["tasks"], after["tasks"]], [first["fds"], after["fds"]]
    rows = [
        ("client processes that did not report", lost, lost == 0),
        (
            "failed connects (WebSocket, SSE)",
            [ws["failed_connects"], sse["failed_connects"]],
            not ws["failed_connects"] and not sse["failed_connects"],
        ),
        (
            "connections refused (live_max_connections)",
            after["rejected_connections"],
            after["rejected_connections"] == 0,
        ),
        (
            "WebSocket closes the client did not cause",
            ws["abnormal_closes"],
            not ws["abnormal_closes"],
        ),
        (
            "SSE streams ended by the server or an error event",
            sse["abnormal_closes"],
            not sse["abnormal_closes"],
        ),
        ("error messages received", errors, errors == 0),
        ("sessions without all their snapshots", missing, missing == 0),
        ("candle updates received", candles, candles > 0),
        (
            "REST 5xx responses and transport errors",
            [server_errors, rest["errors"]],
            server_errors == 0 and not rest["errors"] and rest["requests"] > 0,
        ),
        ("clients dropped as slow consumers", dropped, dropped == 0),
        ("feed reconnects, rejected events, backfill and publish errors", feed, feed_ok),
        (
            "the pipeline took in every bar the feed published, the hub every candle published",
            fig["counts_at_end"],
            quiet,
        ),
        ("pipeline, feed and hub report no problem", problems, not problems),
        (
            "candles still flowing at the end (bars in, hub events after the clients)",
            flowing,
            flowing[0] > 0 and flowing[1] > 0,
        ),
        (
            "clients left in the hub (connected, subscribed pairs, wildcards)",
            hub_after,
            not any(hub_after.values()),
        ),
        (
            f"asyncio tasks before and after the clients (at most {TASKS_MARGIN} more)",
            tasks,
            tasks[1] <= tasks[0] + TASKS_MARGIN,
        ),
        (
            f"open files before and after the clients (at most {FDS_MARGIN} more)",
            fds,
            fds[1] <= fds[0] + FDS_MARGIN,
        ),
    ]
    return [{"check": name, "value": value, "ok": bool(ok)} for name, value, ok in rows]


def run(
    symbols: int,
    speed: float,
    seconds: float,
    clients: int,
    sse_clients: int,
    rest_rate: float,
    burst_every_s: float,
    session_s: tuple[float, float],
    sample_s: float,
    trim_s: float,
    history_min: int,
    procs: int = 2,
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """The soak; the plot goes to ``plot_path`` (none without one)."""
    for name in ("httpx", "speedlayer.simulator.ws", "ingest.polygon.ws", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp:
        figures = asyncio.run(
            run_async(
                symbols,
                speed,
                seconds,
                clients,
                sse_clients,
                rest_rate,
                burst_every_s,
                session_s,
                sample_s,
                trim_s,
                history_min,
                procs,
                Path(tmp),
            )
        )
    if plot_path is not None:
        plot_soak(figures, plot_path)
        figures["plot"] = str(plot_path)
    failed = [c["check"] for c in figures["checks"] if not c["ok"]]
    if failed:
        log.warning("soak checks failed: %s", "; ".join(failed))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=12_000)
    parser.add_argument("--speed", type=float, default=0.25, help="simulated minutes per second")
    parser.add_argument("--seconds", type=float, default=1200.0, help="how long the clients run")
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients")
    parser.add_argument("--sse-clients", type=int, default=10)
    parser.add_argument("--rest-rate", type=float, default=50.0, help="REST requests per second")
    parser.add_argument("--burst-every-s", type=float, default=300.0)
    parser.add_argument("--session-s", default="5,30", help="a session's length: min,max s")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--trim-s", type=float, default=10.0, help="SPEEDLAYER_MEMORY_TRIM_S")
    parser.add_argument("--history-min", type=int, default=120, help="minutes backfilled")
    parser.add_argument("--procs", type=int, default=2, help="WebSocket client processes")
    parser.add_argument("--plot", type=Path, help="write the plot (PNG) here")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    low, high = (float(v) for v in args.session_s.split(","))
    figures = run(
        args.symbols,
        args.speed,
        args.seconds,
        args.clients,
        args.sse_clients,
        args.rest_rate,
        args.burst_every_s,
        (low, high),
        args.sample_s,
        args.trim_s,
        args.history_min,
        args.procs,
        args.plot,
    )
    text = json.dumps({k: v for k, v in figures.items() if k != "samples"}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    sys.exit(0 if all(c["ok"] for c in figures["checks"]) else 1)


if __name__ == "__main__":
    main()
