"""REST query throughput against a no-op endpoint of the same app (benchmark 3).

    .venv/bin/python -m bench.rest --symbols 500 --seconds 15

The store: a SQLite file holding 90 days of 1h and 30 days of 15m candles (the default retention)
for ``symbols`` symbols, ending now. The server: ``speedlayer api``'s app (uvicorn, one process,
the same middleware: metrics, CORS, API-key check) on that file, in its own process, plus one
extra route, ``GET /noop``, that returns ``{}`` — the peer: everything but the query. It is
started as ``speedlayer api`` starts it (launch/wiring.py), on an app factory
(``bench.rest:bench_app``, settings from ``SPEEDLAYER_*`` variables).

Nothing writes the file during the run, so after the warm-up every page comes from the API's page
cache (api/page_cache.py). Two more servers on the same file show the rest:

* ``uncached``: ``SPEEDLAYER_PAGE_CACHE_MB=0``, every page read from SQLite and encoded, which is
  what a page costs while the store is being written (any write invalidates the cache);
* ``workers``: two uvicorn worker processes sharing the port and the file, as
  ``speedlayer api --workers 2`` runs them (docs/deploy.md), each with its own page cache;
  candle and no-op requests/s relative to one worker; and the candle endpoint under uvicorn's
  own ``uvicorn --workers 2`` command line, which leaves Nagle's algorithm on.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
URL_CANDLES = "/candles/{symbol}?interval=15m&limit=100"
INTERVALS = ("1m", "15m", "1h")


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

    intervals = IntervalSet(list(INTERVALS))
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


def bench_app() -> Any:
    """The app factory the servers run: the API's app (settings from ``SPEEDLAYER_*``) plus
    ``GET /noop``."""
    from api.app import create_app

    app = create_app()

    async def noop() -> dict[str, Any]:
        return {}

    app.add_api_route("/noop", noop, include_in_schema=False)
    return app


def serve(port: int, workers: int) -> None:
    """The server process: :func:`bench_app` on uvicorn as ``speedlayer api [--workers N]``
    serves it (launch/wiring.py)."""
    from launch.wiring import serve_workers, uvicorn_server
    from speedlayer.config import Settings

    settings = Settings(port=port, log_level="warning")
    if workers > 1:
        serve_workers("bench.rest:bench_app", settings, workers, access_log=True)
    else:
        uvicorn_server(bench_app(), settings, access_log=True).run()


def start_server(
    db: Path, workers: int = 1, env: dict[str, str] | None = None, uvicorn_cli: bool = False
) -> Server:
    """:func:`serve` on ``db`` in its own process, on a free loopback port; with
    ``uvicorn_cli``, uvicorn's own command line instead (``uvicorn --factory ... --workers``)."""
    port = _free_port()
    command = [sys.executable, "-m", "bench.rest", "--serve", str(workers), "--port", str(port)]
    if uvicorn_cli:
        command = [sys.executable, "-m", "uvicorn", "--factory", "bench.rest:bench_app"]
        command += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    variables = {"SPEEDLAYER_DB": str(db), "SPEEDLAYER_INTERVALS": ",".join(INTERVALS)}
    proc = subprocess.Popen(
        command, env=os.environ | {"PYTHONUNBUFFERED": "1"} | variables | (env or {})
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    try:
        _wait_ready(server.base + "/healthz", proc)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def page_cache(self) -> dict[str, float]:
        """The page cache's hits and misses (of the worker that answers /metrics)."""
        import httpx

        text = httpx.get(self.base + "/metrics", timeout=10).text
        found = dict(re.findall(r"^speedlayer_page_cache_(hits|misses)_total (\S+)$", text, re.M))
        return {name: float(value) for name, value in found.items()}


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
        candles_script = _script(Path(tmp) / "candles.lua", names, None)
        noop_script = _script(Path(tmp) / "noop.lua", None, None)

        def saturate(server: Server) -> tuple[dict[str, Any], dict[str, Any]]:
            wrk(server.base + "/noop", noop_script, 2, 32)  # warm up both paths
            wrk(server.base + "/", candles_script, 2, 32)
            candles = wrk(server.base + "/", candles_script, seconds, 32)
            return candles, wrk(server.base + "/noop", noop_script, seconds, 32)

        server = start_server(db)
        try:
            sat_candles, sat_noop = saturate(server)
            # Fixed rate: 8 connections, each pausing so that together they offer half the
            # candle endpoint's saturated rate (the pause is on top of each response's latency).
            rate = sat_candles["requests_per_s"] / 2
            delay_ms = 8 / rate * 1000
            fixed_candles = wrk(
                server.base + "/", _script(Path(tmp) / "c_fixed.lua", names, delay_ms), seconds, 8
            )
            fixed_noop = wrk(
                server.base + "/noop",
                _script(Path(tmp) / "n_fixed.lua", None, delay_ms),
                seconds,
                8,
            )
            cache = server.page_cache()
        finally:
            server.stop()
        server = start_server(db, env={"SPEEDLAYER_PAGE_CACHE_MB": "0"})
        try:
            wrk(server.base + "/", candles_script, 2, 32)
            uncached = wrk(server.base + "/", candles_script, seconds, 32)
        finally:
            server.stop()
        server = start_server(db, workers=2)
        try:
            two_candles, two_noop = saturate(server)
        finally:
            server.stop()
        server = start_server(db, workers=2, uvicorn_cli=True)
        try:
            wrk(server.base + "/", candles_script, 2, 32)
            cli_candles = wrk(server.base + "/", candles_script, seconds, 32)
        finally:
            server.stop()
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
        "page_cache": cache,
        "uncached": {
            "saturated": uncached,
            "ratio": round(uncached["requests_per_s"] / sat_noop["requests_per_s"], 3),
        },
        "workers": {
            "workers": 2,
            "candles": two_candles,
            "noop": two_noop,
            "candles_vs_1": round(two_candles["requests_per_s"] / sat_candles["requests_per_s"], 3),
            "noop_vs_1": round(two_noop["requests_per_s"] / sat_noop["requests_per_s"], 3),
            # uvicorn's own `--workers 2`: Nagle left on (launch/wiring.py serve_workers)
            "uvicorn_cli_candles": cli_candles,
        },
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
    parser.add_argument("--serve", type=int, metavar="WORKERS", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.serve)
        return
    print(json.dumps(run(args.symbols, args.seconds), indent=2))


if __name__ == "__main__":
    main()
