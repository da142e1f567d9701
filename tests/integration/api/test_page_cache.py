"""The page cache of GET /candles/{symbol} (api/page_cache.py) never serves a stale page.

Two `speedlayer api` processes serve the same SQLite file: one with the page cache (the default),
one without (``SPEEDLAYER_PAGE_CACHE_MB=0``). Candles are changed by a third process writing the
file through the store, as a pipeline or a replay beside the API would; after every write the
cached server must answer exactly what the uncached one answers, byte for byte, and show the
change. A candle whose ttl passes while nothing is written must vanish from a cached page too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.synthetic import RandomWalk, write_csv
from tests.conftest import SPEEDLAYER, ApiServer, free_port, run_cli
from tests.waiting import until

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
SYMBOLS = ["PCA", "PCB"]

# Another process writing candles (JSON list of candle objects) into the file, through the store.
WRITER = """
import asyncio, sys, msgspec
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.models import Candle
from speedlayer.store.sqlite import SQLiteStore

async def main(db, payload):
    candles = msgspec.json.decode(payload, type=list[Candle])
    async with SQLiteStore(db, Settings().interval_set, SystemClock()) as store:
        assert await store.upsert(candles) == len(candles)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def write_candles(db: Path, candles: list[dict[str, Any]]) -> None:
    subprocess.run(
        [sys.executable, "-c", WRITER, str(db), json.dumps(candles)], check=True, timeout=60
    )


@dataclass
class Pair:
    db: Path
    cached: ApiServer
    plain: ApiServer


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("page_cache")
    now_ms = int(time.time() * 1000)
    end_ms = now_ms - now_ms % HOUR_MS
    minutes = 6 * 60
    csv_path = tmp / "bars.csv"
    write_csv(
        RandomWalk(SYMBOLS, seed=5).bars(end_ms - minutes * MINUTE_MS, minutes), str(csv_path)
    )
    db = tmp / "cache.db"
    run_cli("replay", str(csv_path), "--db", str(db))
    cached = ApiServer(db)
    plain = ApiServer(db, {"SPEEDLAYER_PAGE_CACHE_MB": "0"})
    cached.start()
    try:
        plain.start()
        try:
            yield Pair(db, cached, plain)
        finally:
            plain.stop()
    finally:
        cached.stop()


def metric(server: ApiServer, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


QUERIES: list[dict[str, Any]] = [
    {"interval": "15m", "limit": 10},
    {"interval": "15m", "limit": 10, "order": "desc"},
    {"interval": "1m", "limit": 100},
    {"interval": "5m"},
    {"interval": "1h", "limit": 2},
]


def pages(server: ApiServer, symbol: str, query: dict[str, Any]) -> list[bytes]:
    """Every page of ``query``, following next_cursor, as the bytes served."""
    out = []
    params = dict(query)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while True:
            resp = http.get(f"/candles/{symbol}", params=params)
            assert resp.status_code == 200, resp.text
            out.append(resp.content)
            cursor = resp.json()["next_cursor"]
            if cursor is None:
                return out
            params = {**query, "cursor": cursor}


def assert_same(pair: Pair) -> None:
    for symbol in SYMBOLS:
        for query in QUERIES:
            first = pages(pair.cached, symbol, query)
            assert pages(pair.cached, symbol, query) == first  # the second walk is from the cache
            assert first == pages(pair.plain, symbol, query), (symbol, query)


def test_writes_by_another_process_are_never_hidden_by_the_cache(pair: Pair) -> None:
    assert_same(pair)
    hits = metric(pair.cached, "speedlayer_page_cache_hits_total")
    assert hits > 0, "the cached server served nothing from its cache"
    assert metric(pair.plain, "speedlayer_page_cache_hits_total") == 0
    for round_ in range(3):
        # change a candle on the first page of each interval and one in the middle of 1m
        changed: list[dict[str, Any]] = []
        for interval, index in (("15m", 0), ("5m", 3), ("1h", 1), ("1m", 150)):
            query = {"interval": interval, "limit": 1000}
            candles = json.loads(pages(pair.plain, "PCA", query)[0])["candles"]
            candle = candles[index]
            changed.append(
                {**candle, "close": round(candle["close"] + 0.5 + round_, 4),
                 "revision": candle["revision"] + 1}
            )  # fmt: skip
        write_candles(pair.db, changed)
        for candle in changed:
            query = {"interval": candle["interval"], "limit": 1000}
            served = json.loads(pages(pair.cached, "PCA", query)[0])["candles"]
            assert candle in served, f"round {round_}: the change to {candle} is not served"
        assert_same(pair)
    assert metric(pair.cached, "speedlayer_page_cache_hits_total") > hits


def test_a_candle_expiring_leaves_a_cached_page(pair: Pair) -> None:
    """Candles whose ttl passes in a few seconds, with no write after: the cached page holding
    them is served until then, and after it they are gone from the page."""
    now_s = int(time.time())
    first_hour = json.loads(pages(pair.plain, "PCB", {"interval": "1h"})[0])["candles"]
    short = [{**c, "revision": c["revision"] + 1, "ttl": now_s + 8} for c in first_hour[:2]]
    write_candles(pair.db, short)
    query = {"interval": "1h", "limit": 3}
    before = json.loads(pages(pair.cached, "PCB", query)[0])["candles"]
    assert before[:2] == short  # (read well within the 8 s)
    assert pages(pair.cached, "PCB", query) == pages(pair.plain, "PCB", query)
    asyncio.run(until(lambda: time.time() > now_s + 8.5, within=30, what="the ttl to pass"))
    after = pages(pair.cached, "PCB", query)
    assert [c["timestamp"] for c in json.loads(after[0])["candles"]] == [
        c["timestamp"] for c in first_hour[2:5]
    ]
    assert after == pages(pair.plain, "PCB", query)


def test_workers_serve_the_shared_file_fresh(pair: Pair) -> None:
    """`speedlayer api --workers 2`: both processes serve the file, and after another process
    writes, no connection (whichever worker takes it) gets the page from before."""
    port = free_port()
    proc = subprocess.Popen(
        [SPEEDLAYER, "api", "--db", str(pair.db), "--port", str(port), "--workers", "2"],
        env={**os.environ, "SPEEDLAYER_LOG_LEVEL": "warning"},
    )
    url = f"http://127.0.0.1:{port}/candles/PCA"
    query: dict[str, Any] = {"interval": "30m", "limit": 5}
    try:
        asyncio.run(until(lambda: _answers(url, query), within=60, what="the workers to start"))
        assert len(_workers(proc.pid)) == 2
        # new connections each time: the kernel hands them to either worker
        before = {httpx.get(url, params=query, timeout=30).content for _ in range(20)}
        assert len(before) == 1
        candle = json.loads(before.pop())["candles"][0]
        changed = {**candle, "close": candle["close"] + 1, "revision": candle["revision"] + 1}
        write_candles(pair.db, [changed])
        for _ in range(20):
            resp = httpx.get(url, params=query, timeout=30)
            assert resp.status_code == 200
            assert resp.json()["candles"][0] == changed
            assert resp.content == pages(pair.plain, "PCA", query)[0]
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str, query: dict[str, Any]) -> bool:
    try:
        return httpx.get(url, params=query, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes under ``pid``: children started by multiprocessing's spawn
    (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found
