"""``GET /candles/SHY?interval=1d`` with exchange alignment serves session candles
(docs/design.md#exchange-time-candles): SHY of realbars/lean, 2008-03-07 (EST) and 2008-03-10
(EDT), replayed with `speedlayer replay` and served by `speedlayer api`, both configured with
``SPEEDLAYER_CANDLE_ALIGNMENT=exchange``."""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import pandas as pd

from tests.conftest import ApiServer, run_cli
from tests.integration.cli.test_replay import read_csv_bars
from tests.oracle import oracle_candles, session_buckets, values_close

ENV = {
    "SPEEDLAYER_CANDLE_ALIGNMENT": "exchange",
    "SPEEDLAYER_INTERVALS": "1m,5m,1h,4h,1d",
    "SPEEDLAYER_RETENTION": "*=30y",  # the bars are from 2008
}


def ms(text: str) -> int:
    return int(pd.Timestamp(text).value // 1_000_000)


def test_daily_candles_are_regular_sessions(realbars: Path, tmp_path: Path) -> None:
    source = realbars / "lean" / "bars_1m.csv"
    shy = tmp_path / "shy.csv"
    with source.open(newline="") as src, shy.open("w", newline="") as dst:
        reader = csv.reader(src)
        writer = csv.writer(dst)
        writer.writerow(next(reader))
        writer.writerows(row for row in reader if row[0] == "SHY")
    db = tmp_path / "shy.db"
    run_cli("replay", str(shy), "--db", str(db), "--retention", "*=30y", env=ENV)
    server = ApiServer(db, ENV)
    server.start()
    try:
        resp = httpx.get(f"{server.url}/candles/SHY", params={"interval": "1d"}, timeout=30)
        hours = httpx.get(f"{server.url}/candles/SHY", params={"interval": "1h"}, timeout=30)
    finally:
        server.stop()
    assert resp.status_code == 200, resp.text
    candles = resp.json()["candles"]
    opens = [ms("2008-03-07 14:30Z"), ms("2008-03-10 13:30Z")]  # 09:30 EST, 09:30 EDT
    closes = [ms("2008-03-07 21:00Z"), ms("2008-03-10 20:00Z")]
    assert [c["timestamp"] for c in candles] == opens
    bars = read_csv_bars(shy)
    expected = oracle_candles(bars, {"1d": session_buckets(opens, closes)})
    for candle, close in zip(candles, closes, strict=True):
        assert candle["interval"] == "1d" and candle["final"]
        want = expected[("1d", "SHY", candle["timestamp"])]
        got = (candle["open"], candle["high"], candle["low"], candle["close"], candle["volume"],
               candle["vwap"], candle["trades"], candle["bars"])  # fmt: skip
        assert values_close(got, want), (got, want)
        assert candle["ttl"] == close // 1000 + 30 * 365 * 86_400
    # Outside-session bars are in the hour candles, not in the days.
    assert hours.status_code == 200
    hour_bars = sum(c["bars"] for c in hours.json()["candles"])
    assert hour_bars == len({b.t for b in bars}) > sum(c["bars"] for c in candles)
