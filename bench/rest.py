"""REST query throughput against a no-op endpoint of the same app (benchmark 3).

    .venv/bin/python -m bench.rest --symbols 500 --seconds 15

The store: a SQLite file holding 90 days of 1h and 30 days of 15m candles (the default retention)
for ``symbols`` symbols, ending now. The server: ``speedlayer api``'s app (uvicorn, one process,
the same middleware: metrics, CORS, API-key check) on that file, in its own process, plus one
extra route, ``GET /noop``, that returns ``{}`` — the peer: everything but the query.

The load generator is wrk (Debian's package), a C program on its own thread; the server is one
Python process, so wrk is not the bottleneck. For each endpoint:

* saturation: ``wrk -t1 -c32`` for ``seconds``; ``GET /candles/{symbol}?interval=15m&limit=100``
  with a random symbol per request (a Lua script); requests/s;
* latency at a fixed rate below saturation: half the candle endpoint's saturated rate, paced by
  wrk's ``delay()`` hook over 8 connections; p50 and p99 as wrk reports them, and the rate wrk
  actually reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
URL_CANDLES = "/candles/{symbol}?interval=15m&limit=100"


def symbols_for(count: int) -> list[str]:
    return [f"S{i:04d}" for i in range(count)]


def history(symbols: list[str], interval: Any, days: int, now_ms: int) -> list[Any]:
    """``days`` of candles of ``interval`` for every symbol, ending at the bucket before now."""
    from speedlayer.models import Candle

    step = interval.interval_ms
    end = now_ms - now_ms % step
    starts = np.arange(end - days * DAY_MS, end, step, dtype=np.int64)
    rng = np.random.default_rng(len(symbols) * 31 + step)
    out: list[Any] = []
    for symbol in symbols:
        close = np.round(
            rng.uniform(10, 500) * np.exp(np.cumsum(rng.normal(0, 0.004, len(starts)))), 4
        )
        open_ = np.concatenate([[close[0]], close[:-1]])
        high = np.round(np.maximum(open_, close) * 1.002, 4)
        low = np.round(np.minimum(open_, close) * 0.998, 4)
        volume = np.floor(rng.lognormal(10, 1, len(starts)))
        n = len(starts)
        out.extend(
            map(
                Candle,
                [symbol] * n,
                [interval.name] * n,
                starts.tolist(),
                open_.tolist(),
                high.tolist(),
                low.tolist(),
                close.tolist(),
                volume.tolist(),
                ((open_ + close) / 2).round(4).tolist(),
                (volume // 100).astype(np.int64).tolist(),
                [step // 60_000] * n,
                [True] * n,
                [1] * n,
                [interval.ttl(int(s)) for s in starts.tolist()],
            )
        )
    return out


async def build_store(path: Path, symbols: list[str], hours_days: int, quarter_days: int) -> int:
    from speedlayer.clock import SystemClock
    from speedlayer.intervals import IntervalSet
    from speedlayer.store.sqlite import SQLiteStore

    intervals = IntervalSet(["1m", "15m", "1h"])
    now = int(time.time() * 1000)
    rows = 0
    async with SQLiteStore(path, intervals, SystemClock()) as store:
        for name, days in (("1h", hours_days), ("15m", quarter_days)):
            interval = intervals.get(name)
            for i in range(0, len(symbols), 50):
                candles = history(symbols[i : i + 50], interval, days, now)
                for j in range(0, len(candles), 20_000):
                    rows += await store.upsert(candles[j : j + 20_000])
    return rows


def serve(db: str, port: int) -> None:
    """The server process: the API's app on ``db`` plus ``GET /noop``."""
    import uvicorn

    from api.app import create_app
    from speedlayer.config import Settings

    app = create_app(Settings(db=Path(db), intervals=["1m", "15m", "1h"]))

    async def noop() -> dict[str, Any]:
        return {}

    app.add_api_route("/noop", noop, include_in_schema=False)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, Any]:
    """Run wrk; requests/s, p50 and p99 (ms) and non-2xx responses, as wrk reports them."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if p50 is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {
        "requests_per_s": round(rps, 1),
        "p50_ms": round(_ms(p50.group(1)), 2),
        "p99_ms": round(_ms(p99.group(1)), 2),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def _script(path: Path, symbols: list[str] | None, delay_ms: float | None) -> Path:
    lines = ["math.randomseed(7)"]
    if symbols is not None:
        listed = ", ".join(f'"{s}"' for s in symbols)
        lines += [
            f"local symbols = {{{listed}}}",
            "request = function()",
            "  local s = symbols[math.random(#symbols)]",
            f'  return wrk.format("GET", (string.gsub("{URL_CANDLES}", "{{symbol}}", s)))',
            "end",
        ]
    if delay_ms is not None:
        lines += ["function delay()", f"  return {delay_ms:.3f}", "end"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    symbols: int, seconds: float, hours_days: int = 90, quarter_days: int = 30
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian package wrk; `make bench` installs it)")
    names = symbols_for(symbols)
    with tempfile.TemporaryDirectory(prefix="rest_bench_") as tmp:
        db = Path(tmp) / "rest.db"
        began = time.perf_counter()
        rows = asyncio.run(build_store(db, names, hours_days, quarter_days))
        build_s = time.perf_counter() - began
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.rest", "--serve", str(db), "--port", str(port)],
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base + "/healthz", server)
            candles_script = _script(Path(tmp) / "candles.lua", names, None)
            noop_script = _script(Path(tmp) / "noop.lua", None, None)
            wrk(base + "/noop", noop_script, 2, 32)  # warm up both paths
            wrk(base + "/", candles_script, 2, 32)
            sat_candles = wrk(base + "/", candles_script, seconds, 32)
            sat_noop = wrk(base + "/noop", noop_script, seconds, 32)
            # Fixed rate: 8 connections, each pausing so that together they offer half the
            # candle endpoint's saturated rate (the pause is on top of each response's latency).
            rate = sat_candles["requests_per_s"] / 2
            delay_ms = 8 / rate * 1000
            fixed_candles = wrk(
                base + "/", _script(Path(tmp) / "c_fixed.lua", names, delay_ms), seconds, 8
            )
            fixed_noop = wrk(
                base + "/noop", _script(Path(tmp) / "n_fixed.lua", None, delay_ms), seconds, 8
            )
        finally:
            server.terminate()
            server.wait(10)
    return {
        "symbols": symbols,
        "days_1h": hours_days,
        "days_15m": quarter_days,
        "rows": rows,
        "store_build_s": round(build_s, 1),
        "target_rate_per_s": round(rate, 1),
        "candles": {"saturated": sat_candles, "fixed_rate": fixed_candles},
        "noop": {"saturated": sat_noop, "fixed_rate": fixed_noop},
        "ratio": round(sat_candles["requests_per_s"] / sat_noop["requests_per_s"], 3),
    }


def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the API server exited during start-up")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API server did not start within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--serve", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    print(json.dumps(run(args.symbols, args.seconds), indent=2))


if __name__ == "__main__":
    main()
