"""Turn the benchmark runs into ``bench/results.json`` entries and ``docs/benchmarks.md``, with
the pictures of bench/plots.py.

    .venv/bin/python -m bench.report    # docs/benchmarks.md and its plots again from the results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.plots import LATENCY_PNG, PEERS_PNG, available

INTRO = """\
# Benchmarks

Written by `{command}` (`make bench`; the benchmarks' code is in `bench/`). Each benchmark
compares the project with a peer run in the same process or the same run where there is one,
because the machines are shared and noisy: read the ratios before the absolute figures, and repeat
a run before reading much into a difference under ~30 %. The tests run every benchmark at a tiny
size (`tests/integration/bench/test_bench_smoke.py`) so none of them rots.

Machine: {cores} cores, {cpu}, Python {python}, {platform}.

| # | benchmark | figure | peer | ratio | target | met |
|---|---|---|---|---|---|---|
"""


IN_PROCESS = "the same with the API in the pipeline's process (speedlayer up)"


def _stack_shape(workers: int) -> str:
    if workers:
        return (
            "the API in a process of its own reading the pipeline's bus over the relay "
            "(`speedlayer up --workers 1`, docs/design.md#api-processes)"
        )
    return "the API in the pipeline's process (`speedlayer up`)"


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    text = f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"
    return f"{text}{unit}"


def entries(runs: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "resampler" in runs:
        cases = runs["resampler"]["figures"]["cases"]
        out.append(
            {
                "name": "resampler",
                "figures": {
                    case: {
                        "streaming_bars_per_s": c["streaming"]["bars_per_s"],
                        "streaming_candle_updates_per_s": c["streaming"]["candle_updates_per_s"],
                        "batch_bars_per_s": c["batch"]["bars_per_s"],
                    }
                    for case, c in cases.items()
                },
                "peer": {
                    case: {name: p["bars_per_s"] for name, p in c["peers"].items()}
                    for case, c in cases.items()
                },
                "peer_name": "pandas vectorised group-by, polars lazy, DuckDB SQL (batch)",
                "ratio": {case: c["batch_ratio"][c["fastest_peer"]] for case, c in cases.items()},
                "target": "batch: >= 1x the fastest peer in order and out of order",
                "met": all(c["batch_ratio"][c["fastest_peer"]] >= 1 for c in cases.values()),
            }
        )
    if "live" in runs:
        burst = runs["live"]["figures"]["burst"]
        base = runs["live"]["figures"].get("in_process")
        out.append(
            {
                "name": "full_market_burst",
                "figures": {k: v for k, v in burst.items() if k != "per_burst"},
                "peer": (
                    None
                    if base is None
                    else {k: v for k, v in base["burst"].items() if k != "per_burst"}
                ),
                "peer_name": None if base is None else IN_PROCESS,
                "ratio": None,
                "target": "every burst of every run: p99 < 100 ms, stored and published <= 50 ms "
                "after the last bar",
                "met": burst["stored_after_last_bar_ms_worst"] <= 50
                and burst["latency_p99_ms_worst"] < 100,
            }
        )
    if "rest" in runs:
        rest = runs["rest"]["figures"]
        out.append(
            {
                "name": "rest",
                "figures": rest["candles"],
                "peer": rest["noop"],
                "peer_name": "GET /noop of the same app",
                "ratio": rest["ratio"],
                "target": ">= 0.8 of the no-op endpoint's requests/s",
                "met": rest["ratio"] >= 0.8,
            }
        )
    if "live" in runs and "fanout" in runs["live"]["figures"]:
        fan = runs["live"]["figures"]["fanout"]["fanout"]
        base = runs["live"]["figures"].get("in_process")
        base_fan = None if base is None else base.get("fanout")
        out.append(
            {
                "name": "websocket_fanout",
                "figures": fan,
                "peer": base_fan,
                "peer_name": None if base_fan is None else IN_PROCESS,
                "ratio": None,
                "target": "1,000 subscribers: p99 < 250 ms in every run, none dropped",
                "met": fan["clients"] >= 1000
                and fan["latency_p99_ms"] < 250
                and fan["dropped_slow"] == 0
                and fan["failed_connections"] == 0,
            }
        )
    if "store_writes" in runs:
        store = runs["store_writes"]["figures"]
        out.append(
            {
                "name": "store_writes",
                "figures": {"candles_per_s": store["store_candles_per_s"]},
                "peer": {"candles_per_s": store["sqlite3_candles_per_s"]},
                "peer_name": "sqlite3 executemany, same statement and schema",
                "ratio": store["ratio"],
                "target": None,
                "met": None,
            }
        )
    if "flink" in runs:
        fig = runs["flink"]["figures"]
        same = fig["same_bars"]
        embedded = same["embedded"]["bars_per_s"]
        jobs = {f"{r['environment']}_p{r['parallelism']}": r for r in same["flink"]}
        out.append(
            {
                "name": "flink",
                "figures": {
                    name: {
                        "bars_per_s": r["bars_per_s"],
                        "startup_s": r["startup_s"],
                        "peak_rss_mib": r.get("peak_rss_mib"),
                        "check": r["check"]["result"],
                    }
                    for name, r in jobs.items()
                }
                | {"bars": same["bars"]},
                "peer": {"bars_per_s": embedded},
                "peer_name": "the embedded resampler, same bars",
                "ratio": {name: r["ratio"] for name, r in jobs.items()},
                "target": "1M bars at parallelism 1 and 2, candles equal",
                "met": same["bars"] >= 1_000_000
                and all(r["check"]["result"] == "equal" for r in jobs.values()),
            }
        )
    if "soak" in runs:
        soak = runs["soak"]["figures"]
        checks = soak["checks"]
        out.append(
            {
                "name": "soak",
                "figures": {
                    "duration": _duration(soak["seconds"]),
                    "symbols": soak["symbols"],
                    "clients": soak["clients"],
                    "sse_clients": soak["sse_clients"],
                    "rest_rate": soak["rest_rate"],
                    "rss_mib": soak["rss_mib"],
                    "fds": soak["fds"],
                    "tasks": soak["tasks"],
                    "websocket_connections": soak["websocket"]["connections"],
                    "sse_connections": soak["sse"]["connections"],
                    "rest_requests": soak["rest"]["requests"],
                    "checks": len(checks),
                    "checks_failed": [c["check"] for c in checks if not c["ok"]],
                },
                "peer": None,
                "peer_name": None,
                "ratio": None,
                "target": "nothing dropped; tasks and open files back to their start",
                "met": all(c["ok"] for c in checks),
            }
        )
    if "history" in runs:
        hist = runs["history"]["figures"]
        out.append(
            {
                "name": "history",
                "figures": {
                    "bars": hist["bars"],
                    "candles": hist["candles"],
                    "replay_seconds": hist["replay"]["seconds"],
                    "replay_bars_per_s": hist["replay"]["bars_per_s"],
                    "streaming_replay_seconds": hist["streaming_replay"]["seconds"],
                },
                "peer": {"seconds": hist["bound"]["seconds"]},
                "peer_name": "sqlite3 alone (the store's statement) writing the same final candles",
                "ratio": hist["ratio"],
                "target": ">= 0.7 of the bare engine writing the same final candles",
                "met": hist["ratio"] >= 0.7,
            }
        )
    return out


def _summary_rows(items: list[dict[str, Any]]) -> list[str]:
    rows = []
    for i, e in enumerate(items, 1):
        met = {True: "yes", False: "**no**", None: "—"}[e["met"]]
        target = e["target"] or "—"
        f, p = e["figures"], e["peer"] or {}
        if e["name"] == "resampler":
            for case in ("in_order", "disordered"):
                label = case.replace("_", " ")
                peers = p[case]
                fastest = max(peers, key=lambda name: peers[name])
                rows.append(
                    f"| {i} | resampler streaming (live, per-bar updates), {label} | "
                    f"{_fmt(f[case]['streaming_bars_per_s'])} bars/s, "
                    f"{_fmt(f[case]['streaming_candle_updates_per_s'])} candle updates/s | — "
                    "(no peer updates candles per bar) | — | — | — |"
                )
                rows.append(
                    f"| {i} | resampler batch (history, columnar), {label} | "
                    f"{_fmt(f[case]['batch_bars_per_s'])} bars/s | "
                    f"{_fmt(peers[fastest])} bars/s ({fastest}; "
                    + ", ".join(f"{name} {_fmt(v)}" for name, v in peers.items())
                    + f") | {e['ratio'][case]:.2f}x | {target} | {met} |"
                )
        elif e["name"] == "history":
            rows.append(
                f"| {i} | history replay into SQLite ({_fmt(f['bars'])} bars, "
                f"{_fmt(f['candles'])} final candles) | {_fmt(f['replay_seconds'], ' s')} "
                f"({_fmt(f['replay_bars_per_s'])} bars/s; streaming replay "
                f"{_fmt(f['streaming_replay_seconds'], ' s')}) | "
                f"{_fmt(p['seconds'], ' s')} (bare engine, writing only) | {e['ratio']:.2f} | "
                f"{target} | {met} |"
            )
        elif e["name"] == "full_market_burst":
            rows.append(
                f"| {i} | full-market burst ({_fmt(f['bars_per_burst'])} bars) | "
                f"bar -> subscriber p50 {_fmt(f['latency_p50_ms_median'], ' ms')}, "
                f"p99 {_fmt(f['latency_p99_ms_worst'], ' ms')}, "
                f"max {_fmt(f['latency_max_ms_worst'], ' ms')}; stored + published "
                f"{_fmt(f['stored_after_last_bar_ms_worst'], ' ms')} after the last bar | "
                + (
                    "— | — |"
                    if not p
                    else f"p99 {_fmt(p['latency_p99_ms_worst'], ' ms')}, stored "
                    f"{_fmt(p['stored_after_last_bar_ms_worst'], ' ms')} (API in the pipeline's "
                    "process) | — |"
                )
                + f" {target} | {met} |"
            )
        elif e["name"] == "rest":
            rows.append(
                f"| {i} | REST `/candles` 15m, limit 100 | "
                f"{_fmt(f['saturated']['requests_per_s'])} req/s; at "
                f"{_fmt(f['fixed_rate']['requests_per_s'])} req/s: p50 "
                f"{_fmt(f['fixed_rate']['p50_ms'], ' ms')}, p99 "
                f"{_fmt(f['fixed_rate']['p99_ms'], ' ms')} | "
                f"{_fmt(p['saturated']['requests_per_s'])} req/s (no-op) | "
                f"{e['ratio']:.2f} | {target} | {met} |"
            )
        elif e["name"] == "websocket_fanout":
            rows.append(
                f"| {i} | WebSocket fan-out, {f['clients']:,} clients | "
                f"{_fmt(f['messages_per_s'])} msgs/s, p99 {_fmt(f['latency_p99_ms'], ' ms')}, "
                f"{f['dropped_slow']} dropped | "
                + (
                    "— | — |"
                    if not p
                    else f"p99 {_fmt(p['latency_p99_ms'], ' ms')}, {p['dropped_slow']} dropped "
                    "(API in the pipeline's process) | — |"
                )
                + f" {target} | {met} |"
            )
        elif e["name"] == "flink":
            for name, r in e["figures"].items():
                if name == "bars":
                    continue
                rows.append(
                    f"| {i} | Flink SQL job, {name.replace('_', ', ')} "
                    f"({_fmt(f['bars'])} bars; candles {r['check']}) | "
                    f"{_fmt(r['bars_per_s'])} bars/s after {_fmt(r['startup_s'], ' s')} of "
                    f"start-up, {_fmt(r['peak_rss_mib'], ' MiB')} | "
                    f"{_fmt(p['bars_per_s'])} bars/s (embedded) | {e['ratio'][name]:.3f} | "
                    f"{target} | {met} |"
                )
        elif e["name"] == "store_writes":
            rows.append(
                f"| {i} | store writes (SQLite, batches) | "
                f"{_fmt(f['candles_per_s'])} candles/s | "
                f"{_fmt(p['candles_per_s'])} candles/s (bare engine) | "
                f"{e['ratio']:.2f} | {target} | {met} |"
            )
        elif e["name"] == "soak":
            rss = f["rss_mib"]
            rows.append(
                f"| {i} | [soak](#soak), {f['duration']}: {f['symbols']:,} symbols, "
                f"{f['clients']:,} WebSocket clients with churn, {f['sse_clients']} SSE, REST "
                f"{_fmt(f['rest_rate'])}/s | RSS {_fmt(rss['first'])} -> {_fmt(rss['last'])} MiB "
                f"(max {_fmt(rss['max'])}), {_fmt(rss['slope_second_half_per_10min'])} MiB per "
                f"10 min over the second half; {f['websocket_connections']:,} WebSocket "
                f"connections, {f['rest_requests']:,} requests; "
                f"{f['checks'] - len(f['checks_failed'])} of {f['checks']} checks passed | — | — | "
                f"{target} | {met} |"
            )
    return rows


def _details(runs: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "resampler" in runs:
        run = runs["resampler"]
        fig = run["figures"]
        lines += [
            "",
            "## 1. Resampler throughput (`bench/resampler.py`)",
            "",
            f"{fig['symbols']:,} symbols x {fig['minutes']} minutes of bars, every interval "
            f"({', '.join(fig['intervals'])}). **Streaming** is the live resampler: per-bar "
            "incremental updates of every interval's candle, frame by frame, finalizing and "
            "evicting. **Batch** is history: all bars at once, last write wins, final candles "
            "only: the project's columnar path (`processors/columnar.py`, what `speedlayer "
            "replay` uses; its time includes building the `Candle` structs the store takes) "
            "against the strongest form of each peer. polars and DuckDB use every core, pandas "
            "and the project one. The columnar candles are checked bit for bit against the "
            "streaming resampler's, the peers' equal up to float summation order. Ratios are the "
            f"project's bars/s over the peer's. Run {run['machine']['date']}, {run['seconds']} s.",
            "",
            "| case | bars | streaming bars/s | candle updates/s | columnar bars/s (Candle "
            "objects) | pandas | polars | DuckDB | columnar / fastest | peak MiB streaming, "
            "columnar, pandas, polars, DuckDB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for case, c in fig["cases"].items():
            peers, stream, batch = c["peers"], c["streaming"], c["batch"]
            fastest = c["fastest_peer"]
            memory = [stream["peak_rss_mib"], batch["peak_rss_mib"]] + [
                peers[name]["peak_rss_mib"] for name in ("pandas", "polars", "duckdb")
            ]
            lines.append(
                f"| {case} | {c['bars']:,} | {stream['bars_per_s']:,} | "
                f"{stream['candle_updates_per_s']:,} | {batch['bars_per_s']:,} "
                f"({batch['objects_seconds']} s of {batch['seconds']} s) | "
                + " | ".join(
                    f"{peers[name]['bars_per_s']:,}" for name in ("pandas", "polars", "duckdb")
                )
                + f" | {c['batch_ratio'][fastest]} ({fastest}) | "
                + ", ".join(str(m) for m in memory)
                + " |"
            )
    if "live" in runs:
        run = runs["live"]
        fig = run["figures"]
        lines += [
            "",
            "## 2 and 4. Full-market bursts and WebSocket fan-out (`bench/live.py`)",
            "",
            f"{fig['symbols']:,} symbols, simulator at {fig['speed']} simulated minutes per "
            f"second, {_stack_shape(fig.get('workers', 0))}. "
            f"Run {run['machine']['date']}, {run['seconds']} s. Latency per bar: from "
            "the simulator's write of its frame to the monitor's receipt of the last of its "
            "7 candle updates (the burst phase's monitor; the fan-out phase has none). "
            f"{fig.get('runs', 1)} run(s), each on a fresh stack. What the pipeline's process "
            "did during each burst (bench/tail.py): garbage collection pauses, the event loop's "
            "longest stall, and the pipeline's longest resample (event loop), store write "
            "(writer thread) and publish (onto the in-process bus) of one batch.",
            "",
            "| run | phase | minute | bars | p50 | p99 | max | send spread | stored after last "
            "bar | GC pauses (max) | loop stall max | resample max | write max | publish max |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for phase in ("burst", "fanout"):
            if phase not in fig:
                continue
            for row in fig[phase]["per_burst"]:
                cells = [
                    _fmt(row[key], " ms")
                    for key in (
                        "latency_p50_ms",
                        "latency_p99_ms",
                        "latency_max_ms",
                        "send_spread_ms",
                        "stored_after_last_bar_ms",
                    )
                ]
                tail = row.get("tail")
                if tail:
                    cells += [
                        f"{tail['gc_collections']}: {_fmt(tail['gc_pause_ms_total'], ' ms')} "
                        f"({_fmt(tail['gc_pause_ms_max'], ' ms')})",
                        _fmt(tail["loop_late_ms_max"], " ms"),
                        *(_fmt(tail[p]["ms_max"], " ms") for p in ("resample", "write", "publish")),
                    ]
                else:
                    cells += ["—"] * 5
                lines.append(
                    f"| {row.get('run', 1)} | {phase} | {row['minute']} | {row['bars']:,} | "
                    + " | ".join(cells)
                    + " |"
                )
        if LATENCY_PNG in available(runs):
            lines += ["", f"![latency distributions of the bursts and the fan-out]({LATENCY_PNG})"]
        if "fanout" in fig:
            fan = fig["fanout"]["fanout"]
            lines += [
                "",
                f"Fan-out: {fan['clients']:,} clients x 10 symbols x 1m,15m; "
                f"{fan['messages']:,} messages received ({fan['messages_per_s']:,}/s over the "
                f"window), hub -> client p50 {fan['latency_p50_ms']} ms, p99 "
                f"{fan['latency_p99_ms']} ms, max {fan['latency_max_ms']} ms; "
                f"{fan['dropped_slow']} dropped, {fan['failed_connections']} failed connections"
                + (
                    f"; p99 per run: {', '.join(f'{x} ms' for x in fan['latency_p99_ms_per_run'])}."
                    if "latency_p99_ms_per_run" in fan
                    else "."
                ),
            ]
            if "cpu_s" in fan:  # the worst run's CPU over its window
                cpu = fan["cpu_s"]
                if cpu.get("api"):
                    server = (
                        f"the pipeline's process {cpu['pipeline']} s (event loop, store writer "
                        f"thread and simulator), the API's process {cpu['api']} s"
                    )
                else:
                    server = (
                        f"the server's process {cpu['server']} s (event loop, store writer "
                        "thread, simulator and API, one interpreter lock)"
                    )
                lines[-1] += (
                    f" CPU over that run's {cpu['window']} s window: {server}, the client "
                    f"processes {cpu['clients']} s."
                )
        if "in_process" in fig:
            base = fig["in_process"]
            line = (
                f"For comparison, {base['runs']} run(s) of the same phases with "
                f"{_stack_shape(0)}: burst p99 worst "
                f"{_fmt(base['burst']['latency_p99_ms_worst'], ' ms')}, stored after the last "
                f"bar worst {_fmt(base['burst']['stored_after_last_bar_ms_worst'], ' ms')}"
            )
            if "fanout" in base:
                line += (
                    f"; fan-out p99 {base['fanout']['latency_p99_ms']} ms "
                    f"({base['fanout']['dropped_slow']} dropped)"
                )
            lines += ["", line + "."]
        if fig.get("gc_per_run"):
            per_run = "; ".join(
                f"run {i}: "
                + ", ".join(
                    f"gen {gen} x{c['count']} (longest {_fmt(c['ms_max'], ' ms')})"
                    for gen, c in collections.items()
                )
                for i, collections in enumerate(fig["gc_per_run"], 1)
            )
            lines += ["", f"Garbage collections over each whole run: {per_run}."]
        if "scan" in fig:
            scan = fig["scan"]
            tried = ", ".join(
                f"{t['clients']:,}: p99 {t['latency_p99_ms']} ms, {t['dropped_slow']} dropped"
                for t in scan["tried"]
            )
            largest = scan["largest_clients"]
            lines += [
                "",
                f"Largest fan-out with a p99 under {scan['bound_ms'] / 1000:g} s (each count once, "
                f"2 bursts, on one more fresh stack): "
                f"{'none of those tried' if largest is None else f'{largest:,} clients'} "
                f"({tried}).",
            ]
    if "rest" in runs:
        run = runs["rest"]
        fig = run["figures"]
        lines += [
            "",
            "## 3. REST query throughput (`bench/rest.py`)",
            "",
            f"{fig['symbols']:,} symbols, {fig['rows']:,} stored candles ({fig['days_1h']} days of "
            f"1h, {fig['days_15m']} of 15m); wrk, 32 connections to saturate, 8 at the fixed "
            f"rate. Run {run['machine']['date']}, {run['seconds']} s.",
            "",
            "| endpoint | saturated req/s | fixed-rate req/s | p50 | p99 |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, label in (("candles", "`/candles/{symbol}?interval=15m&limit=100`"),):
            c = fig[name]
            lines.append(
                f"| {label} | {c['saturated']['requests_per_s']:,} | "
                f"{c['fixed_rate']['requests_per_s']:,} | {c['fixed_rate']['p50_ms']} ms | "
                f"{c['fixed_rate']['p99_ms']} ms |"
            )
        n = fig["noop"]
        lines.append(
            f"| `/noop` | {n['saturated']['requests_per_s']:,} | "
            f"{n['fixed_rate']['requests_per_s']:,} | {n['fixed_rate']['p50_ms']} ms | "
            f"{n['fixed_rate']['p99_ms']} ms |"
        )
        if "uncached" in fig:
            cache, unc, w = fig["page_cache"], fig["uncached"], fig["workers"]
            hits, misses = cache.get("hits", 0), cache.get("misses", 0)
            lines += [
                "",
                f"Nothing writes the file meanwhile, so the candle pages come from the page cache "
                f"({hits:,.0f} hits, {misses:,.0f} misses). Without it "
                f"(`SPEEDLAYER_PAGE_CACHE_MB=0`: what every page costs while the store is being "
                f"written) {unc['saturated']['requests_per_s']:,} req/s, {unc['ratio']:.2f} of "
                f"the no-op. `speedlayer api --workers {w['workers']}` on the same file: candles "
                f"{w['candles']['requests_per_s']:,} req/s ({w['candles_vs_1']:.2f} of one "
                f"worker), no-op {w['noop']['requests_per_s']:,} ({w['noop_vs_1']:.2f}); uvicorn's "
                f"own `uvicorn --workers {w['workers']}` (Nagle left on, docs/deploy.md): candles "
                f"{w['uvicorn_cli_candles']['requests_per_s']:,} req/s.",
            ]
    if "store_writes" in runs:
        run = runs["store_writes"]
        fig = run["figures"]
        lines += [
            "",
            "## 5. Store writes (`bench/store_writes.py`)",
            "",
            f"{fig['candles']:,} candle updates in {fig['batches']} batches (mean "
            f"{fig['mean_batch']:,}): the store {fig['store_candles_per_s']:,} candles/s, the "
            f"bare engine {fig['sqlite3_candles_per_s']:,} candles/s. "
            f"Run {run['machine']['date']}, {run['seconds']} s.",
        ]
    if "flink" in runs:
        lines += _flink_details(runs["flink"])
    if "soak" in runs:
        lines += _soak_details(runs["soak"])
    if "history" in runs:
        run = runs["history"]
        fig = run["figures"]
        ours, before, bound = fig["replay"], fig["streaming_replay"], fig["bound"]
        lines += [
            "",
            "## 8. History replay (`bench/history.py`)",
            "",
            f"A CSV of {fig['bars']:,} bars ({fig['symbols']:,} symbols x {fig['minutes']} "
            "minutes, 2.5 % late, 2.5 % sent twice) replayed into a new SQLite database, every "
            f"interval: {fig['candles']:,} final candles. The replay (`replay_files`, as "
            "`speedlayer replay`; reading and validating the CSV included) against the bare "
            "engine upserting the same final candle rows (sorted by key, one transaction, the "
            "store's statement: 50 rows to a statement): "
            "ratio = bound seconds / replay seconds. The streaming replay is the path before the "
            "columnar one; both leave identical tables (checked). "
            f"Run {run['machine']['date']}, {run['seconds']} s.",
            "",
            "| run | seconds | bars/s | rows written | peak MiB |",
            "|---|---:|---:|---:|---:|",
            f"| replay (columnar) | {ours['seconds']} | {ours['bars_per_s']:,} | "
            f"{ours['rows_written']:,} | {ours['peak_rss_mib']} |",
            f"| streaming replay (before) | {before['seconds']} | {before['bars_per_s']:,} | "
            f"{before['rows_written']:,} | {before['peak_rss_mib']} |",
            f"| bound: sqlite3 alone, same final rows | {bound['seconds']} | — | "
            f"{fig['candles']:,} | — |",
            *(
                [
                    f"| sqlite3 alone, one row to a statement | "
                    f"{fig['bound_single_row']['seconds']} | — | {fig['candles']:,} | — |"
                ]
                if "bound_single_row" in fig
                else []
            ),
            "",
            f"Ratio {fig['ratio']} (the streaming replay: {fig['streaming_ratio']}); the columnar "
            f"replay is {fig['speedup']}x the streaming one.",
        ]
    lines += [
        "",
        "Earlier fan-out runs at 200 to 4,000 clients, with and without permessage-deflate: "
        "[benchmarks-fanout.md](benchmarks-fanout.md).",
    ]
    return lines


def _flink_details(run: dict[str, Any]) -> list[str]:
    fig = run["figures"]
    same, scale = fig["same_bars"], fig["scale"]
    emb = same["embedded"]
    lines = [
        "",
        "## 6. The Flink SQL job (`bench/flink.py`)",
        "",
        f"{same['bars']:,} disordered bars ({fig['symbols']:,} symbols x {fig['minutes']} "
        f"minutes, 2.5 % late, 2.5 % sent twice), intervals {', '.join(fig['intervals'])}. "
        f"The embedded resampler: {emb['bars_per_s']:,} bars/s, {emb['candle_updates']:,} "
        f"candle updates, peak {emb['peak_rss_mib']} MiB. Start-up is the process start to the "
        "job running (CLI, JVM, planning, submitting); processing is running to finished on the "
        "job's clock (deploying the tasks, reading, every interval, writing); memory is the "
        "whole process tree's peak.",
        "",
        "| job | start-up | processing | bars/s | of embedded | updates | peak RSS | candles |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in same["flink"]:
        check = r["check"]
        lines.append(
            f"| {r['environment']}, parallelism {r['parallelism']} | {r['startup_s']} s | "
            f"{r['processing_s']} s | {_fmt(r['bars_per_s'])} | {r['ratio']:.4f} | "
            f"{_fmt(r['candle_updates'])} | {_fmt(r.get('peak_rss_mib'), ' MiB')} | "
            f"{check['result']} ({check['candles']:,}; VWAP within "
            f"{check['vwap_max_rel_diff']:.2g}) |"
        )
    if "skipped" in scale:
        lines += ["", f"Scale run skipped: {scale['skipped']}."]
    else:
        check = scale.get("check", {})
        lines += [
            "",
            f"Scale: {scale['symbols']:,} option-like symbols x {scale['minutes']} minutes "
            f"({_fmt(scale.get('bars'))} bars) published to Kafka, the job (parallelism "
            f"{scale['parallelism']}) and `speedlayer sink` into SQLite: the job "
            f"{_fmt(scale.get('bars_per_s'))} bars/s, the last candle stored "
            f"{_fmt(scale.get('last_stored_after_running_s'), ' s')} after the job was running, "
            f"{_fmt(scale.get('candles_stored'))} of {_fmt(scale.get('candles_expected'))} "
            f"candles, {check.get('result', '—')} to the embedded resampler's; peak "
            f"{_fmt(scale.get('peak_rss_mib'), ' MiB')}.",
        ]
    lines += ["", f"Run {run['machine']['date']}, {run['seconds']} s."]
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return text.replace("|", "\\|")


def _soak_details(run: dict[str, Any]) -> list[str]:
    fig = run["figures"]
    ws, sse, rest = fig["websocket"], fig["sse"], fig["rest"]
    rss = fig["rss_mib"]
    low, high = fig["session_s"]
    procs = f"{fig['procs']} process" + ("es" if fig["procs"] != 1 else "")
    lines = [
        "",
        '<a id="soak"></a>',
        "",
        "## 7. Soak (`bench/soak.py`, `make soak`)",
        "",
        f"{fig['symbols']:,} symbols, a simulated minute every {fig['sim_minute_s']:g} s "
        f"({fig['sim_minutes']:,} simulated minutes, after {fig['history_min']} backfilled), "
        f"for {_duration(fig['seconds'])}: {fig['clients']:,} WebSocket clients in {procs}, "
        f"each connecting, subscribing with a snapshot (3 symbols x 2 intervals, "
        f"{fig['snapshot']:,} candles; {fig['dashboard_share'] * 100:g} % of the sessions like the "
        f"dashboard, 1 symbol x 7 intervals, {fig['dashboard_snapshot']:,} candles), reading "
        f"{low:g}-{high:g} s and closing, and all of them reconnecting "
        f"at once every {fig['burst_every_s']:g} s ({len(fig['burst_at_s'])} bursts); "
        f"{fig['sse_clients']} SSE streams likewise; REST {fig['rest_rate']:g} requests/s. "
        "Served as `speedlayer up` serves (permessage-deflate on); the API trims its heap every "
        f"{fig['memory_trim_s']:g} s (`SPEEDLAYER_MEMORY_TRIM_S`). The figures are the whole "
        f"stack's process, sampled every {fig['sample_s']:g} s. "
        f"Run {run['machine']['date']}, {run['seconds']} s.",
        "",
        "| figure | start | end | max | after the clients |",
        "|---|---:|---:|---:|---:|",
        f"| resident memory (MiB) | {rss['first']} | {rss['last']} | {rss['max']} | "
        f"{rss['after']} |",
    ]
    for key, label in (("fds", "open files"), ("tasks", "asyncio tasks"), ("threads", "threads")):
        span = fig[key]
        lines.append(
            f"| {label} | {span['start']} | {span['end']} | {span['max']} | {span['after']} |"
        )
    lines += [
        "",
        f"Resident memory: at most {_fmt(rss['max_first_half'])} MiB in the first half and "
        f"{_fmt(rss['max_second_half'])} MiB in the second; over the second half it moved "
        f"{_fmt(rss['slope_second_half_per_10min'])} MiB per 10 minutes (least squares). The "
        f"resampler held up to {fig['held_bars_max']:,} bars (those of its open buckets, up to "
        "4h15m of the market). The sampler ran at most "
        f"{_fmt(fig['loop_lag_max_ms'], ' ms')} late (the event loop's lag).",
        "",
        "| clients | connections | messages | snapshots complete after p50 / p99 / max | "
        "sessions missing snapshots | closes the client did not cause |",
        "|---|---:|---|---|---:|---|",
    ]
    for label, c in (("WebSocket", ws), ("SSE", sse)):
        messages = ", ".join(f"{kind} {n:,}" for kind, n in c["messages"].items()) or "—"
        closes = _cell(c["abnormal_closes"]) if c["abnormal_closes"] else "none"
        lines.append(
            f"| {label} | {c['connections']:,} | {messages} | {_fmt(c['snapshot_wait_p50_ms'])} / "
            f"{_fmt(c['snapshot_wait_p99_ms'])} / {_fmt(c['snapshot_wait_max_ms'], ' ms')} | "
            f"{c['missing_snapshots']} | {closes} |"
        )
    lines += [
        "",
        f"REST: {rest['requests']:,} requests ({rest['requests_per_s']:g}/s), transport errors: "
        f"{_cell(rest['errors']) if rest['errors'] else 'none'}.",
        "",
        "| endpoint | requests | statuses | p50 | p99 | max |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, e in rest["endpoints"].items():
        path = {
            "candles": "`/candles/{symbol}?interval=15m&limit=100`",
            "symbols": "`/symbols`",
            "healthz": "`/healthz`",
        }.get(name, name)
        statuses = ", ".join(f"{code}: {n:,}" for code, n in e["statuses"].items())
        lines.append(
            f"| {path} | {e['requests']:,} | {statuses} | {e['p50_ms']} ms | {e['p99_ms']} ms | "
            f"{e['max_ms']} ms |"
        )
    hub, pipe = fig["hub"], fig["pipeline"]
    lines += [
        "",
        f"Hub: {hub['connections_total']:,} connections, {hub['delivered']:,} messages "
        f"delivered, {hub['events']:,} candle updates fanned out, {hub['dropped_slow']} dropped "
        f"as slow consumers. Pipeline: {pipe['bars_in']:,} bars in, {pipe['rows_written']:,} "
        "candle rows written.",
        "",
        "![soak](soak.png)",
        "",
        "| check | value | passed |",
        "|---|---|---|",
    ]
    for c in fig["checks"]:
        lines.append(f"| {c['check']} | `{_cell(c['value'])}` | {'yes' if c['ok'] else '**no**'} |")
    return lines


def render(results: dict[str, Any], doc: Path) -> list[dict[str, Any]]:
    runs = results["runs"]
    items = entries(runs)
    any_run = next(iter(runs.values()))
    head = INTRO.format(command=results["command"], **any_run["machine"])
    pictures = (
        f"\n![speedlayer against its peers, the ratio on each peer's bar]({PEERS_PNG})\n"
        if PEERS_PNG in available(runs)
        else ""
    )
    text = (
        head + "\n".join(_summary_rows(items)) + "\n" + pictures + "\n".join(_details(runs)) + "\n"
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return items


README_START = "<!-- bench-table: written by `make bench` from bench/results.json -->"
README_END = "<!-- /bench-table -->"


def update_readme(results: dict[str, Any], readme: Path) -> bool:
    """Put the summary table of ``results`` between the README's bench-table markers, so the
    README's figures are always those of the last run; False if the README has no markers."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    header = INTRO[INTRO.index("| # |") :]
    table = header + "\n".join(_summary_rows(entries(results["runs"]))) + "\n"
    table = table.replace("](#", "](docs/benchmarks.md#")  # links into the details
    readme.write_text(text[: start + len(README_START)] + "\n" + table + text[end:])
    return True


def main() -> None:
    """Write the document (and with --readme the README's table) and the plots again from a
    results file, without running a benchmark."""
    from bench.plots import write

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--results", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--readme", type=Path, help="also put the summary table in this README")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    for path in write(results, args.doc.parent):
        print(path)
    render(results, args.doc)
    print(args.doc)
    if args.readme is not None and update_readme(results, args.readme):
        print(args.readme)


if __name__ == "__main__":
    main()
