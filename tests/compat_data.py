"""Real bars for the compatibility endpoints' tests (Polygon aggregates, TradingView UDF).

Four eqker_2019 tickers (a week of regular sessions; UGA is sparse) and two whole UTC days of
Coinbase BTCUSD from the lean set, stored under Polygon's WebSocket form ``BTC-USD`` (REST
clients ask for ``X:BTCUSD``). The sources carry no VWAP or trade count, so most rows get one
(derived from the row, deterministic) and some are left without, which exercises the rule that
VWAP and trades sum over the bars that carry them. Parsed here with the csv module, not by
ingest/, so the bars are an oracle of their own.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from speedlayer.models import Bar
from tests.conftest import run_cli

DAY_MS = 86_400_000
EQUITIES = ("AAPL", "MSFT", "SPY", "UGA")
BTC = "BTC-USD"
BTC_DAYS = (17_412, 17_413)  # 2017-09-03 and 2017-09-04, 1,440 bars each
HEADER = ("symbol", "market", "t", "o", "h", "l", "c", "v", "vw", "n")
RETENTION = "*=100y"  # the bars are from 2014-2019
# A second interval set: sizes the default set lacks are stored here (the resampler's own
# candles, the oracle for the sizes the API computes), and the default ones are not.
OTHER_INTERVALS = "1m,3m,10m,3h,1d"


def _rows(realbars: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with (realbars / "eqker_2019" / "bars_1m.csv").open(newline="") as handle:
        rows += [row for row in csv.DictReader(handle) if row["symbol"] in EQUITIES]
    with (realbars / "lean" / "bars_1m.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if (
                row["symbol"] == "BTCUSD"
                and row["market"] == "crypto:coinbase"
                and int(row["t"]) // DAY_MS in BTC_DAYS
            ):
                rows.append({**row, "symbol": BTC})
    for i, row in enumerate(rows):
        high, low, close = float(row["h"]), float(row["l"]), float(row["c"])
        if i % 4:
            row["vw"] = repr(round((high + low + close) / 3, 4))
        if i % 3:
            row["n"] = str((i * 37) % 900 + 1)
    return rows


def write_bars(realbars: Path, path: Path, shift_ms: int = 0, symbols: Iterable[str] = ()) -> Path:
    """The CSV (``shift_ms`` added to every time; only ``symbols`` if given)."""
    wanted = set(symbols)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for row in _rows(realbars):
            if wanted and row["symbol"] not in wanted:
                continue
            writer.writerow([*(row[k] for k in HEADER[:2]), int(row["t"]) + shift_ms,
                             *(row[k] for k in HEADER[3:])])  # fmt: skip
    return path


def read_bars(path: Path) -> list[Bar]:
    """The bars of a CSV written by ``write_bars``, in file order."""
    with path.open(newline="") as handle:
        return [_bar(row) for row in csv.DictReader(handle)]


def _bar(row: dict[str, str]) -> Bar:
    return Bar(
        row["symbol"], int(row["t"]), float(row["o"]), float(row["h"]), float(row["l"]),
        float(row["c"]), float(row["v"]), float(row["vw"]) if row["vw"] else None,
        int(row["n"]) if row["n"] else None,
    )  # fmt: skip


def replay(
    db: Path, csv_path: Path, env: dict[str, str] | None = None, retention: str = RETENTION
) -> None:
    proc = run_cli(
        "replay", str(csv_path), "--db", str(db), "--retention", retention, "--json", env=env
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rejected"] == 0, summary


def stored(
    db: Path, symbol: str, interval: str, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The stored candles, through `speedlayer candles` (the store, not the API)."""
    proc = run_cli(
        "candles", symbol, "--interval", interval, "--db", str(db), "--format", "json", env=env
    )
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows
