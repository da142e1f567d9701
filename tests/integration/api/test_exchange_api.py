"""``GET /candles/SHY?interval=1d`` with exchange alignment serves session candles
(docs/design.md#exchange-time-candles): SHY of realbars/lean, 2008-03-07 (EST) and 2008-03-10
(EDT), replayed with `speedlayer replay` and served by `speedlayer api`, both configured with
``SPEEDLAYER_CANDLE_ALIGNMENT=exchange``.

The Polygon-compatible aggregates on the same server: ``1/day`` is the session ``1d`` and
``1/hour`` the exchange-aligned ``1h`` (ranges snap to those buckets, pages follow them), and a
size of an hour or more that is not configured is Polygon's 400 saying why."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

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


OPENS = [ms("2008-03-07 14:30Z"), ms("2008-03-10 13:30Z")]  # 09:30 EST, 09:30 EDT


@dataclass
class Served:
    csv: Path
    server: ApiServer


@pytest.fixture(scope="module")
def served(realbars: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("exchange-api")
    source = realbars / "lean" / "bars_1m.csv"
    shy = tmp / "shy.csv"
    with source.open(newline="") as src, shy.open("w", newline="") as dst:
        reader = csv.reader(src)
        writer = csv.writer(dst)
        writer.writerow(next(reader))
        writer.writerows(row for row in reader if row[0] == "SHY")
    db = tmp / "shy.db"
    run_cli("replay", str(shy), "--db", str(db), "--retention", "*=30y", env=ENV)
    server = ApiServer(db, ENV)
    server.start()
    yield Served(shy, server)
    server.stop()


def candles(served: Served, interval: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{served.server.url}/candles/SHY", params={"interval": interval}, timeout=30)
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()["candles"]
    return rows


def aggs(served: Served, path: str, status: int = 200, **params: Any) -> dict[str, Any]:
    url = path if path.startswith("http") else f"{served.server.url}/v2/aggs/ticker/SHY/{path}"
    resp = httpx.get(url, params=params, timeout=30)
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


def polygon(candle: dict[str, Any]) -> dict[str, Any]:
    """A stored candle as a Polygon aggregate (SHY's bars carry no VWAP or trade count)."""
    return {"v": candle["volume"], "o": candle["open"], "c": candle["close"],
            "h": candle["high"], "l": candle["low"], "t": candle["timestamp"]}  # fmt: skip


def test_daily_candles_are_regular_sessions(served: Served) -> None:
    shy = served.csv
    resp = httpx.get(f"{served.server.url}/candles/SHY", params={"interval": "1d"}, timeout=30)
    hours = httpx.get(f"{served.server.url}/candles/SHY", params={"interval": "1h"}, timeout=30)
    assert resp.status_code == 200, resp.text
    candles = resp.json()["candles"]
    opens = OPENS
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


def test_polygon_day_bars_are_sessions(served: Served) -> None:
    sessions = candles(served, "1d")
    assert [c["timestamp"] for c in sessions] == OPENS
    body = aggs(served, "range/1/day/2008-03-01/2008-03-31")
    assert body["status"] == "OK" and body["resultsCount"] == 2
    assert body["results"] == [polygon(c) for c in sessions]
    assert body["queryCount"] == sum(c["bars"] for c in sessions)  # regular-hours bars only
    # a date is a whole UTC day: the Friday alone; Saturday to Monday holds Monday's session
    assert aggs(served, "range/1/day/2008-03-07/2008-03-07")["results"] == [polygon(sessions[0])]
    assert aggs(served, "range/1/day/2008-03-08/2008-03-10")["results"] == [polygon(sessions[1])]
    # a page holds at least one bucket: limit=1 pages session by session, both ways
    for sort, order in (("asc", sessions), ("desc", sessions[::-1])):
        first = aggs(served, "range/1/day/2008-03-01/2008-03-31", limit=1, sort=sort)
        assert first["results"] == [polygon(order[0])] and "next_url" in first
        second = aggs(served, first["next_url"])
        assert second["results"] == [polygon(order[1])] and "next_url" not in second


def test_polygon_hour_bars_are_exchange_aligned(served: Served) -> None:
    hours = candles(served, "1h")
    assert {c["timestamp"] % 3_600_000 for c in hours} == {1_800_000}  # :30 New York
    body = aggs(served, f"range/1/hour/{hours[0]['timestamp']}/{ms('2008-03-11 00:00Z')}")
    assert body["results"] == [polygon(c) for c in hours]
    # 10:45 EDT snaps back to the 10:30 bucket, 12:10 EDT forward to the end of the 11:30 one
    body = aggs(served, f"range/1/hour/{ms('2008-03-10 14:45Z')}/{ms('2008-03-10 16:10Z')}")
    want = [c for c in hours if ms("2008-03-10 14:30Z") <= c["timestamp"] < ms("2008-03-10 16:30Z")]
    assert len(want) == 2 and body["results"] == [polygon(c) for c in want]


@pytest.mark.parametrize("size", ["2/hour", "3/hour", "90/minute", "2/day"])
def test_polygon_refuses_unconfigured_sizes_of_an_hour_or_more(served: Served, size: str) -> None:
    body = aggs(served, f"range/{size}/2008-03-07/2008-03-10", 400)
    assert set(body) == {"status", "request_id", "error"} and body["status"] == "ERROR"
    assert "not a configured interval" in body["error"], body
    assert "exchange-aligned" in body["error"] and "UTC-aligned" in body["error"], body
    # minute sizes below an hour are still computed from the 1-minute candles
    assert aggs(served, "range/30/minute/2008-03-07/2008-03-10")["resultsCount"] > 0
