"""Client SDKs generated from ``/openapi.json`` work (README#client-sdks).

A real `speedlayer api` (uvicorn, API keys on) serves a database filled by `speedlayer replay`.
Its OpenAPI document, fetched over the socket, is fed to the two generators the README names:

- ``openapi-python-client``: the generated package is imported and fetches candles (every page,
  following ``next_cursor``), the latest candle and a 404, through its ``AuthenticatedClient``.
  The expected candles come from `speedlayer candles`, which reads the database directly.
- ``openapi-typescript``: the generated types are type-checked (``tsc --noEmit --strict``)
  against a small program that reads a candle page, and a program that misuses them must fail.

Neither generated client is kept in the repository.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from ingest.synthetic import RandomWalk, write_csv
from tests.conftest import NODE_MODULES, ApiServer, require, run_cli

MINUTE_MS = 60_000
MINUTES = 3 * 60
SYMBOLS = ["AAPL", "MSFT"]
KEY = "generated-clients-key-1"
PACKAGE = "speedlayer_client"  # the generated package's import name
VENV_BIN = Path(sys.executable).parent
GENERATOR = VENV_BIN / "openapi-python-client"
OPENAPI_TS = NODE_MODULES / ".bin" / "openapi-typescript"
TSC = NODE_MODULES / ".bin" / "tsc"


@dataclass
class Served:
    server: ApiServer
    db: Path
    spec: Path  # /openapi.json as the server sent it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("sdk")
    now = int(time.time() * 1000)
    first = now - now % (60 * MINUTE_MS) - MINUTES * MINUTE_MS
    csv_path = tmp / "bars.csv"
    write_csv(RandomWalk(SYMBOLS, seed=23).bars(first, MINUTES), str(csv_path))
    db = tmp / "sdk.db"
    run_cli("replay", str(csv_path), "--db", str(db))
    server = ApiServer(db, env={"SPEEDLAYER_API_KEYS": KEY})
    server.start()
    try:
        resp = httpx.get(server.url + "/openapi.json", headers={"X-API-Key": KEY}, timeout=30)
        assert resp.status_code == 200, resp.text
        spec = tmp / "openapi.json"
        spec.write_bytes(resp.content)
        yield Served(server, db, spec)
    finally:
        server.stop()


def _run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    # the generator formats its output with ruff, found on the PATH
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def sdk(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generated Python package, imported from a temporary directory."""
    out = tmp_path_factory.mktemp("python-sdk") / PACKAGE
    proc = _run(
        [GENERATOR, "generate", "--path", served.spec, "--output-path", out, "--meta", "none"],
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    sys.path.insert(0, str(out.parent))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out.parent))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def cli_candles(db: Path, symbol: str, interval: str) -> list[dict[str, Any]]:
    proc = run_cli("candles", symbol, "--interval", interval, "--format", "json", "--db", str(db))
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def _module(sdk: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{sdk.__name__}.{name}")


def test_operations_have_the_route_names(served: Served) -> None:
    spec = json.loads(served.spec.read_text())
    listed = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    ids = set(listed)
    assert len(ids) == len(listed)  # one function per operation in a generated client
    assert {"get_candles", "get_latest", "get_intervals", "get_symbols", "aggregates"} <= ids


@pytest.mark.parametrize("interval", ["1m", "15m"])
def test_python_client_fetches_the_stored_candles(
    served: Served, sdk: ModuleType, interval: str
) -> None:
    get_candles = _module(sdk, "api.default.get_candles")
    models = _module(sdk, "models")
    client = sdk.AuthenticatedClient(base_url=served.server.url, token=KEY, timeout=30.0)
    member = f"INTERVAL_{interval.upper()}"
    got: list[dict[str, Any]] = []
    cursor: Any = _module(sdk, "types").UNSET
    pages = 0
    with client:
        while True:
            page = get_candles.sync(
                "AAPL",
                client=client,
                interval=getattr(models.GetCandlesInterval, member),
                limit=50,
                cursor=cursor,
            )
            assert isinstance(page, models.CandlePage), page
            assert (page.symbol, page.interval) == ("AAPL", interval)
            assert all(isinstance(c, models.CandleOut) for c in page.candles)
            got += [c.to_dict() for c in page.candles]
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    expected = cli_candles(served.db, "AAPL", interval)
    assert len(expected) > 1
    assert got == expected
    assert pages == -(-len(expected) // 50)


def test_python_client_latest_and_errors(served: Served, sdk: ModuleType) -> None:
    get_latest = _module(sdk, "api.default.get_latest")
    get_intervals = _module(sdk, "api.default.get_intervals")
    models = _module(sdk, "models")
    with sdk.AuthenticatedClient(base_url=served.server.url, token=KEY, timeout=30.0) as client:
        latest = get_latest.sync("MSFT", client=client, interval=models.GetLatestInterval("5m"))
        assert isinstance(latest, models.CandleOut), latest
        assert latest.to_dict() == cli_candles(served.db, "MSFT", "5m")[-1]
        missing = get_latest.sync_detailed("ZZZZ", client=client)
        assert missing.status_code == 404
        assert isinstance(missing.parsed, models.ErrorBody)
        assert "ZZZZ" in missing.parsed.message
        intervals = get_intervals.sync(client=client)
        assert isinstance(intervals, models.IntervalList)
        names = {iv.name for iv in intervals.intervals}
        assert names == {member.value for member in models.GetCandlesInterval}
    with sdk.Client(base_url=served.server.url, timeout=30.0) as anonymous:
        refused = get_latest.sync_detailed("MSFT", client=anonymous)
        assert refused.status_code == 401


LIVE_TS = """\
import type { components, operations } from "./schema";

type Candle = components["schemas"]["CandleOut"];
type Page = operations["get_candles"]["responses"][200]["content"]["application/json"];

export function closes(page: Page): number[] {
  return page.candles.map((candle: Candle) => candle.close);
}

export function vwap(candle: Candle): number | null {
  return candle.vwap ?? null;
}

export const next: string | null = ({} as Page).next_cursor;
"""

WRONG_TS = """\
import type { components } from "./schema";

export const stamp: string = ({} as components["schemas"]["CandleOut"]).timestamp;
"""


def test_typescript_types_check(served: Served, tmp_path: Path) -> None:
    require(OPENAPI_TS.exists() and TSC.exists(), "openapi-typescript/typescript: run npm ci")
    proc = _run([OPENAPI_TS, served.spec, "--output", tmp_path / "schema.d.ts"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    schema = (tmp_path / "schema.d.ts").read_text()
    assert "CandleOut: {" in schema and "get_candles: {" in schema
    options = ["--noEmit", "--strict", "--module", "nodenext", "--target", "es2022"]
    (tmp_path / "live.ts").write_text(LIVE_TS)
    ok = _run([TSC, *options, "live.ts"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "wrong.ts").write_text(WRONG_TS)
    wrong = _run([TSC, *options, "wrong.ts"], cwd=tmp_path)
    assert wrong.returncode != 0
    assert "not assignable to type 'string'" in wrong.stdout
