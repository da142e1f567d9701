"""Run the benchmarks; write ``bench/results.json`` and ``docs/benchmarks.md``.

    .venv/bin/python -m bench --readme README.md   # everything at full size (make bench)
    .venv/bin/python -m bench --only rest      # one benchmark
    .venv/bin/python -m bench --size smoke --out /tmp/r.json --doc /tmp/b.md   # the tests' run
    .venv/bin/python -m bench --only soak      # the soak, about 22 minutes (make soak)

Each benchmark compares the project with a peer run in the same process or the same run where
there is one (pandas, polars and DuckDB, a no-op endpoint, the bare SQLite engine), because the
machines are shared and noisy: the ratio means more than an absolute time. Runs at full size take
about 25 minutes. ``--readme`` also writes the summary table into the README, between its
bench-table markers.
The soak (bench/soak.py) runs only when named, and its result is kept by runs of the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import flink, history, live, plots, resampler, rest, soak, store_writes
from bench.common import machine
from bench.report import render, update_readme
from speedlayer.progress import Progress, progress_mode

# The Flink job's full size: the resampler benchmark's 1M bars, and an options-like universe of
# 100,000 symbols a minute (docs/flink.md#benchmark).
FLINK_SYMBOLS, FLINK_MINUTES = 2000, 500
FLINK_SCALE_SYMBOLS, FLINK_SCALE_MINUTES = 100_000, 5

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "resampler": {"symbols": 2000, "minutes": 500},
        "store_writes": {"symbols": 2000, "minutes": 60},
        "history": {"symbols": 2000, "minutes": 500},
        "rest": {"symbols": 500, "seconds": 15},
        "live": {
            "symbols": 12_000,
            "speed": 0.1,
            "bursts": 3,
            "clients": 1000,
            "runs": 3,
            "compare_runs": 3,
            "scan": (2000, 4000, 6000, 8000, 10_000, 12_000),
        },
        "flink": {
            "symbols": FLINK_SYMBOLS,
            "minutes": FLINK_MINUTES,
            "parallelisms": (1, 2),
            "kafka_symbols": FLINK_SCALE_SYMBOLS,
            "kafka_minutes": FLINK_SCALE_MINUTES,
            "kafka_parallelism": 2,
        },
        # 20 minutes of the full market (a simulated minute every 4 s) under 1,000 churning
        # WebSocket clients, all reconnecting every 5 minutes, SSE streams and REST requests.
        "soak": {
            "symbols": 12_000,
            "speed": 0.25,
            "seconds": 1200,
            "clients": 1000,
            "sse_clients": 10,
            "rest_rate": 50,
            "burst_every_s": 300,
            "session_s": (5, 30),
            "sample_s": 10,
            "trim_s": 10,
            "history_min": 120,
            "procs": 2,
        },
    },
    "smoke": {
        "resampler": {"symbols": 20, "minutes": 30},
        "store_writes": {"symbols": 20, "minutes": 10},
        "history": {"symbols": 20, "minutes": 30},
        "rest": {"symbols": 3, "seconds": 1, "hours_days": 3, "quarter_days": 2},
        "live": {
            "symbols": 100,
            "speed": 2.0,
            "bursts": 2,
            "clients": 4,
            "runs": 2,
            "compare_runs": 1,
            "scan": (8,),
        },
        "flink": {
            "symbols": 10,
            "minutes": 12,
            "parallelisms": (2,),
            "kafka_symbols": 40,
            "kafka_minutes": 2,
            "kafka_parallelism": 2,
            "heap": "768m",
        },
        "soak": {
            "symbols": 30,
            "speed": 2.0,
            "seconds": 20,
            "clients": 20,
            "sse_clients": 2,
            "rest_rate": 20,
            "burst_every_s": 8,
            "session_s": (2, 6),
            "sample_s": 1,
            "trim_s": 3,
            "history_min": 30,
            "procs": 1,
        },
    },
}
RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "resampler": resampler.run,
    "store_writes": store_writes.run,
    "history": history.run,
    "rest": rest.run,
    "live": live.run,
    "flink": flink.run,
    "soak": soak.run,
}
# Run only when named (--only): the soak takes 20 minutes on its own (make soak).
ON_REQUEST = {"soak"}


class PhaseHandler(logging.Handler):
    """Shows the running benchmark's last log message as its phase in the progress."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("bench") and record.name != "bench.__main__":
            self._progress.update(phase=record.getMessage()[:60])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", help="comma-separated: " + ",".join(RUNNERS))
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument(
        "--readme", type=Path, help="also put the summary table in this README (make bench)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    names = args.only.split(",") if args.only else [n for n in RUNNERS if n not in ON_REQUEST]
    unknown = set(names) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    # A partial run updates its entries in an existing results file and keeps the others; a run
    # of them all keeps those run only on request (of the same size).
    previous: dict[str, Any] = {}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        if args.only:
            previous = old.get("runs", {})
        elif old.get("size") == args.size:
            previous = {n: r for n, r in old.get("runs", {}).items() if n in ON_REQUEST}
    runs = dict(previous)
    # In a terminal, a bar on stderr: which benchmark, of how many, and its last logged phase;
    # elsewhere a log line every 30 s.
    progress = Progress(
        "bench",
        total=len(names),
        unit="benchmarks",
        mode=progress_mode(args.quiet),
        every_s=30,
        rate=False,
    )
    phases = PhaseHandler(progress)
    logging.getLogger().addHandler(phases)
    with progress:
        for done, name in enumerate(names):
            progress.update(completed=done, status=name, phase="starting")
            params = SIZES[args.size][name]
            logging.info("running %s %s", name, params)
            began = time.perf_counter()
            figures = RUNNERS[name](**params)
            runs[name] = {
                "params": params,
                "seconds": round(time.perf_counter() - began, 1),
                "machine": machine(),
                "figures": figures,
            }
        progress.update(completed=len(names), status="plots and report", phase="")
    logging.getLogger().removeHandler(phases)
    command = "python -m bench " + " ".join(sys.argv[1:])
    results = {"size": args.size, "command": command.strip(), "runs": runs}
    for path in plots.write(results, args.doc.parent):  # the pictures the report shows
        logging.info("wrote %s", path)
    results["benchmarks"] = render(results, args.doc)
    if args.readme is not None and not update_readme(results, args.readme):
        logging.warning("%s has no bench-table markers: its table is not updated", args.readme)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["benchmarks"], indent=2))


if __name__ == "__main__":
    main()
