"""The Polygon-compatible aggregates endpoint against the official `massive` REST client.

A real `speedlayer api` serves a database filled by `speedlayer replay` of real bars
(tests/compat_data.py). Expectations come from outside the endpoint:

- the bars themselves (read with the csv module) for the 1-minute aggregates;
- the simulator's REST aggregates endpoint (ingest/simulator/rest.py, the reference for Polygon's
  answer) serving the same file, through the same client: the same results, page by page;
- the resampler's stored candles, through `speedlayer candles`, for the sizes the API computes
  from the 1-minute candles: a second database replayed with another interval set stores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import massive  # type: ignore[import-untyped]
import pytest
from massive.exceptions import BadResponse  # type: ignore[import-untyped]

from ingest.simulator import PolygonSimulator, SimulatorConfig
from ingest.synthetic import RandomWalk, write_csv
from speedlayer.models import Bar
from tests.compat_data import (
    BTC,
    DAY_MS,
    EQUITIES,
    OTHER_INTERVALS,
    RETENTION,
    read_bars,
    replay,
    stored,
    write_bars,
)
from tests.conftest import ApiServer
from tests.integration.api.test_api_more import LoggedApiServer

MIN = 60_000
HOUR = 60 * MIN
KEY = "polygon-compat-key-1"
Row = tuple[Any, ...]


@dataclass
class Setup:
    csv: Path
    bars: list[Bar]
    db_a: Path  # default intervals
    db_b: Path  # OTHER_INTERVALS
    a: ApiServer
    b: ApiServer
    first: int
    last: int


@pytest.fixture(scope="module")
def setup(realbars: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("polygon")
    csv_path = write_bars(realbars, tmp / "bars.csv")
    bars = read_bars(csv_path)
    db_a, db_b = tmp / "a.db", tmp / "b.db"
    replay(db_a, csv_path)
    other = {"SPEEDLAYER_INTERVALS": OTHER_INTERVALS}
    replay(db_b, csv_path, env=other)
    a = ApiServer(db_a, env={"SPEEDLAYER_RETENTION": RETENTION})
    b = ApiServer(db_b, env={**other, "SPEEDLAYER_RETENTION": RETENTION})
    a.start()
    b.start()
    yield Setup(csv_path, bars, db_a, db_b, a, b, min(x.t for x in bars), max(x.t for x in bars))
    a.stop()
    b.stop()


def client(base: str, key: str = "k") -> Any:
    return massive.RESTClient(api_key=key, base=base, retries=0, read_timeout=30)


def aggs(base: str, *args: Any, **kwargs: Any) -> list[Row]:
    """list_aggs through the official client, as tuples of every field it parses."""
    return [
        (a.timestamp, a.open, a.high, a.low, a.close, a.volume, a.vwap, a.transactions)
        for a in client(base).list_aggs(*args, **kwargs)
    ]


def bar_rows(bars: list[Bar], symbol: str, lo: int = -(2**62), hi: int = 2**62) -> list[Row]:
    return [
        (b.t, b.o, b.h, b.l, b.c, b.v, b.vw, b.n)
        for b in sorted(bars, key=lambda b: b.t)
        if b.symbol == symbol and lo <= b.t < hi
    ]


def candle_rows(rows: list[dict[str, Any]]) -> list[Row]:
    return [
        (c["timestamp"], c["open"], c["high"], c["low"], c["close"], c["volume"], c["vwap"],
         c["trades"])
        for c in rows
    ]  # fmt: skip


def pages(base: str, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every page of a query, following next_url (its path and query, as the official client)."""
    out = []
    url: str | None = path
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": "Bearer k"}) as http:
        while url:
            resp = http.get(url, params=params if url == path else None)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            out.append(page)
            next_url = page.get("next_url")
            if next_url is not None:
                assert "cursor=" in next_url and "apiKey" not in next_url
                parsed = httpx.URL(next_url)
                url = parsed.raw_path.decode()
            else:
                url = None
    return out


@contextlib.asynccontextmanager
async def simulator(csv_path: Path, after_ms: int) -> AsyncIterator[PolygonSimulator]:
    """The simulator replaying the file, every bar already history (served by REST)."""
    config = SimulatorConfig(replay=[str(csv_path)], start_ms=after_ms, history_minutes=0)
    sim = PolygonSimulator(config)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


# -- the simulator and the bars -------------------------------------------------------------------


async def test_one_minute_aggs_equal_the_bars_and_the_simulators(setup: Setup) -> None:
    frm, to = setup.first, setup.last
    async with simulator(setup.csv, setup.last + DAY_MS) as sim:
        for symbol in (*EQUITIES, BTC):
            ours = await asyncio.to_thread(aggs, setup.a.url, symbol, 1, "minute", frm, to,
                                           limit=50_000)  # fmt: skip
            theirs = await asyncio.to_thread(aggs, sim.rest_url, symbol, 1, "minute", frm, to,
                                             limit=50_000)  # fmt: skip
            expected = bar_rows(setup.bars, symbol)
            assert len(expected) > 300, symbol
            assert ours == expected, symbol
            assert theirs == expected, symbol
        assert any(row[6] is None for row in ours) and any(row[7] is None for row in ours)
        # the client following next_url through small pages gets the same bars from both
        for base in (setup.a.url, sim.rest_url):
            paged = await asyncio.to_thread(aggs, base, "AAPL", 1, "minute", frm, to, limit=97)
            assert paged == bar_rows(setup.bars, "AAPL"), base


@pytest.mark.parametrize(
    ("multiplier", "timespan", "limit"),
    [(1, "minute", 997), (5, "minute", 997), (3, "minute", 500), (1, "hour", 1000),
     (3, "hour", 700), (10, "minute", 3)],
)  # fmt: skip
async def test_pages_equal_the_simulators_page_by_page(
    setup: Setup, multiplier: int, timespan: str, limit: int
) -> None:
    """Same pages (whole buckets, `limit` counting 1-minute bars, next_url), same values: the
    simulator rounds a multi-bar VWAP to 4 decimals (as Polygon does), the speed layer does not."""
    symbol = "MSFT"
    path = f"/v2/aggs/ticker/{symbol}/range/{multiplier}/{timespan}/{setup.first}/{setup.last}"
    async with simulator(setup.csv, setup.last + DAY_MS) as sim:
        for sort in ("asc", "desc"):
            params = {"limit": limit, "sort": sort}
            ours = await asyncio.to_thread(pages, setup.a.url, path, params)
            theirs = await asyncio.to_thread(pages, sim.rest_url, path, params)
            assert len(ours) == len(theirs) > 1
            for mine, ref in zip(ours, theirs, strict=True):
                assert (mine["queryCount"], mine["resultsCount"]) == (
                    ref["queryCount"], ref["resultsCount"],
                )  # fmt: skip
                assert mine["queryCount"] <= limit or mine["resultsCount"] == 1
                for got, want in zip(mine["results"], ref["results"], strict=True):
                    vw, ref_vw = got.pop("vw", None), want.pop("vw", None)
                    assert got == want
                    # one bar: its own vw; more: the simulator's is ours rounded
                    assert ref_vw == vw or ref_vw == round(vw, 4), (got, vw, ref_vw)
            times = [r["t"] for page in ours for r in page["results"]]
            assert times == sorted(times, reverse=sort == "desc")
            assert len(set(times)) == len(times)


# -- computed sizes equal the resampler's stored candles ------------------------------------------


@pytest.mark.parametrize(
    ("multiplier", "timespan", "interval", "computed_on"),
    [(3, "minute", "3m", "a"), (10, "minute", "10m", "a"), (3, "hour", "3h", "a"),
     (5, "minute", "5m", "b"), (15, "minute", "15m", "b"), (1, "hour", "1h", "b"),
     (4, "hour", "4h", "b")],
)  # fmt: skip
def test_computed_sizes_equal_the_stored_candles(
    setup: Setup, multiplier: int, timespan: str, interval: str, computed_on: str
) -> None:
    """Server a stores the default intervals, server b OTHER_INTERVALS: each computes from its
    1-minute candles what the other stores, and both answer the resampler's candles exactly."""
    computed, reading = (setup.a, setup.b) if computed_on == "a" else (setup.b, setup.a)
    db = setup.db_b if computed_on == "a" else setup.db_a
    env = {"SPEEDLAYER_INTERVALS": OTHER_INTERVALS} if computed_on == "a" else None
    for symbol in ("AAPL", "UGA", BTC):
        want = candle_rows(stored(db, symbol, interval, env))
        assert want, (symbol, interval)
        args = (symbol, multiplier, timespan, setup.first, setup.last)
        assert aggs(computed.url, *args, limit=50_000) == want, (symbol, interval)
        assert aggs(reading.url, *args, limit=50_000) == want, (symbol, interval)
        # small pages: the same candles, whole buckets per page
        assert aggs(computed.url, *args, limit=37) == want, (symbol, interval)


def test_day_buckets_need_a_day_interval(setup: Setup) -> None:
    frm, to = date(2017, 9, 3), date(2017, 9, 4)
    want = candle_rows(stored(setup.db_b, BTC, "1d", {"SPEEDLAYER_INTERVALS": OTHER_INTERVALS}))
    assert [row[0] for row in want] == [17_412 * DAY_MS, 17_413 * DAY_MS]
    assert aggs(setup.b.url, "X:BTCUSD", 1, "day", frm, to) == want
    with pytest.raises(BadResponse) as info:
        aggs(setup.a.url, "X:BTCUSD", 1, "day", frm, to)
    assert "interval of a day is configured" in str(info.value)


# -- dates, tickers, sorting --------------------------------------------------------------------


def test_dates_are_whole_utc_days_and_rest_tickers_resolve(setup: Setup) -> None:
    day = 17_413 * DAY_MS  # 2017-09-04, BTC trades around the clock
    want = bar_rows(setup.bars, BTC, day, day + DAY_MS)
    assert len(want) == 1440
    for frm, to in (("2017-09-04", "2017-09-04"), (date(2017, 9, 4), date(2017, 9, 4))):
        assert aggs(setup.a.url, "X:BTCUSD", 1, "minute", frm, to) == want
    assert aggs(setup.a.url, BTC, 1, "minute", "2017-09-04", "2017-09-04") == want
    both = aggs(setup.a.url, "X:BTCUSD", 1, "hour", "2017-09-03", "2017-09-04")
    assert [row[0] for row in both] == [17_412 * DAY_MS + h * HOUR for h in range(48)]
    body = httpx.get(f"{setup.a.url}/v2/aggs/ticker/X:BTCUSD/range/1/hour/2017-09-04/2017-09-04"
                     ).json()  # fmt: skip
    assert body["ticker"] == "X:BTCUSD" and body["resultsCount"] == 24


def test_get_aggs_sort_desc_and_the_answers_shape(setup: Setup) -> None:
    rest = client(setup.a.url)
    asc = aggs(setup.a.url, "SPY", 15, "minute", setup.first, setup.last)
    desc = [
        (a.timestamp, a.open, a.high, a.low, a.close, a.volume, a.vwap, a.transactions)
        for a in rest.get_aggs("SPY", 15, "minute", setup.first, setup.last, sort="desc")
    ]
    assert desc == asc[::-1]
    body = httpx.get(
        f"{setup.a.url}/v2/aggs/ticker/SPY/range/15/minute/{setup.first}/{setup.last}",
        params={"adjusted": "true", "limit": 50},
    ).json()
    assert list(body) == ["ticker", "queryCount", "resultsCount", "adjusted", "results",
                          "status", "request_id", "next_url"]  # fmt: skip
    assert body["status"] == "OK" and body["adjusted"] is False  # never split-adjusted
    spy = bar_rows(setup.bars, "SPY")
    held = [sum(1 for row in spy if r["t"] <= row[0] < r["t"] + 15 * MIN) for r in body["results"]]
    assert body["queryCount"] == sum(held) <= 50 < sum(held) + 15  # whole buckets within limit
    assert len(body["request_id"]) == 32
    first = body["results"][0]
    assert list(first) == ["v", "vw", "o", "c", "h", "l", "t", "n"]
    assert isinstance(first["v"], int)  # integral volumes as integers, as Polygon sends them
    empty = httpx.get(f"{setup.a.url}/v2/aggs/ticker/NOPE/range/1/minute/2019-02-11/2019-02-12")
    assert empty.status_code == 200
    assert "results" not in empty.json() and empty.json()["resultsCount"] == 0
    assert empty.json()["queryCount"] == 0 and "next_url" not in empty.json()


def test_paging_at_least_one_whole_bucket_per_page(setup: Setup) -> None:
    path = f"/v2/aggs/ticker/AAPL/range/2/hour/{setup.first}/{setup.last}"
    got = pages(setup.a.url, path, {"limit": 2})
    aapl = bar_rows(setup.bars, "AAPL")
    for page in got:  # one bucket each, though it holds far more than 2 bars
        assert page["resultsCount"] == 1
        t = page["results"][0]["t"]
        assert page["queryCount"] == sum(1 for row in aapl if t <= row[0] < t + 2 * HOUR) > 2
    assert sum(page["queryCount"] for page in got) == len(aapl)
    expected = aggs(setup.a.url, "AAPL", 2, "hour", setup.first, setup.last)
    assert [page["results"][0]["t"] for page in got] == [row[0] for row in expected]
    # a computed size too
    path = f"/v2/aggs/ticker/AAPL/range/7/minute/{setup.first}/{setup.last}"
    got = pages(setup.a.url, path, {"limit": 3, "sort": "desc"})
    want = aggs(setup.a.url, "AAPL", 7, "minute", setup.first, setup.last)
    assert [r["t"] for page in got for r in page["results"]] == [row[0] for row in want][::-1]


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "needle"),
    [
        ("/AAPL/range/1/fortnight/2019-02-11/2019-02-12", "", "timespan 'fortnight' is invalid"),
        ("/AAPL/range/1/week/2019-02-11/2019-02-12", "", "'week' is not supported"),
        ("/AAPL/range/1/second/2019-02-11/2019-02-12", "", "'second' is not supported"),
        ("/AAPL/range/1/day/2019-02-11/2019-02-12", "", "1d"),
        ("/AAPL/range/50001/minute/2019-02-11/2019-02-12", "", "50000 minutes"),
        ("/AAPL/range/x/minute/2019-02-11/2019-02-12", "", "multiplier"),
        ("/AAPL/range/0/minute/2019-02-11/2019-02-12", "", "multiplier"),
        ("/AAPL/range/1/minute/yesterday/2019-02-12", "", "from"),
        ("/AAPL/range/1/minute/2019-02-11/2019-02-30", "", "to '2019-02-30' is not a valid"),
        ("/AAPL/range/1/minute/2019-02-11/12345678901234567", "", "out of range"),
        ("/A%20B/range/1/minute/2019-02-11/2019-02-12", "", "ticker"),
        ("/AAPL/range/1/minute/2019-02-11/2019-02-12", "limit=0", "limit"),
        ("/AAPL/range/1/minute/2019-02-11/2019-02-12", "limit=ten", "limit"),
        ("/AAPL/range/1/minute/2019-02-11/2019-02-12", "sort=sideways", "sort"),
        ("/AAPL/range/1/minute/2019-02-11/2019-02-12", "adjusted=maybe", "adjusted"),
        ("/AAPL/range/1/minute/2019-02-11/2019-02-12", "cursor=%25%25%25", "cursor"),
    ],
)
def test_bad_parameters_are_polygons_400(setup: Setup, path: str, query: str, needle: str) -> None:
    resp = httpx.get(f"{setup.a.url}/v2/aggs/ticker{path}?{query}")
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"status", "request_id", "error"} and body["status"] == "ERROR"
    assert needle in body["error"], body


def test_the_official_client_surfaces_errors(setup: Setup) -> None:
    with pytest.raises(BadResponse) as info:
        aggs(setup.a.url, "AAPL", 1, "month", "2019-02-01", "2019-02-28")
    assert "'month' is not supported" in str(info.value)


# -- retention, the forming bucket, auth, DELAYED -------------------------------------------------


@dataclass
class Live:
    server: LoggedApiServer
    bars: list[Bar]  # the shifted AAPL bars
    recent: list[Bar]  # ZZZ up to the current minute


@pytest.fixture(scope="module")
def live(realbars: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """AAPL's week moved to 8.5 days ago (by whole days: buckets stay aligned) under the default
    retention, so its first days are past the 7 days of 1-minute candles; ZZZ up to now, so its
    newest buckets are forming. API keys on; the feed is Polygon's delayed one."""
    tmp = tmp_path_factory.mktemp("polygon-live")
    now = int(time.time() * 1000)
    first = 1_549_895_400_000  # AAPL's first bar, 2019-02-11T14:30Z
    shift = (now - 8 * DAY_MS - DAY_MS // 2 - first) // DAY_MS * DAY_MS
    csv_path = write_bars(realbars, tmp / "aapl.csv", shift_ms=shift, symbols=["AAPL"])
    recent_path = tmp / "zzz.csv"
    start = now - now % MIN - 5 * HOUR
    write_csv(RandomWalk(["ZZZ"], seed=3).bars(start, 5 * 60 + 1), str(recent_path))
    db = tmp / "live.db"
    replay(db, csv_path, retention="1m=7d")  # the default retention
    replay(db, recent_path, retention="1m=7d")
    env = {
        "SPEEDLAYER_API_KEYS": KEY,
        "SPEEDLAYER_LOG_LEVEL": "info",
        "SPEEDLAYER_SOURCE": "polygon",
        "SPEEDLAYER_POLYGON_WS_URL": "wss://delayed.massive.com",
    }
    server = LoggedApiServer(db, tmp / "api.log", env=env)
    server.start()
    yield Live(server, read_bars(csv_path), read_bars(recent_path))
    server.stop()


def _get(live: Live, path: str, **params: Any) -> dict[str, Any]:
    resp = httpx.get(live.server.url + path, params=params, headers={"X-API-Key": KEY}, timeout=30)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_ranges_beyond_the_retention_say_so(live: Live) -> None:
    frm, to = live.bars[0].t, live.bars[-1].t
    before = int(time.time() * 1000)
    one = _get(live, f"/v2/aggs/ticker/AAPL/range/1/minute/{frm}/{to}", limit=50_000)
    three = _get(live, f"/v2/aggs/ticker/AAPL/range/3/minute/{frm}/{to}", limit=50_000)
    after = int(time.time() * 1000)
    oldest = before - 7 * DAY_MS - 2 * MIN  # 1-minute candles older than this have expired
    assert "1m candles are kept for 7 days: buckets before " in one["message"]
    assert "computed from the 1-minute candles, which are kept for 7 days" in three["message"]
    times = [r["t"] for r in one["results"]]
    assert times and min(times) >= oldest
    expected = [b.t for b in live.bars if b.t >= after - 7 * DAY_MS]
    assert set(expected) <= set(times)
    assert one["status"] == "DELAYED" and three["status"] == "DELAYED"
    # a computed bucket is served only when none of its minutes has expired
    buckets = {r["t"]: r for r in three["results"]}
    assert min(buckets) >= oldest
    for t, result in buckets.items():
        inside = [b for b in live.bars if t <= b.t < t + 3 * MIN]
        assert result["v"] == sum(b.v for b in inside)
        assert result["o"] == inside[0].o and result["c"] == inside[-1].c
    assert len(buckets) >= len({t - t % (3 * MIN) for t in expected}) - 1
    recent = _get(live, f"/v2/aggs/ticker/AAPL/range/1/minute/{after - DAY_MS}/{after}")
    assert "message" not in recent


def test_the_forming_bucket_is_included(live: Live) -> None:
    now = int(time.time() * 1000)
    body = _get(live, f"/v2/aggs/ticker/ZZZ/range/1/hour/{now - 3 * HOUR}/{now}")
    newest = body["results"][-1]
    latest = _get(live, "/candles/ZZZ/latest", interval="1h")
    assert latest["final"] is False and newest["t"] == latest["timestamp"]
    assert (newest["o"], newest["c"], newest["v"]) == (
        latest["open"], latest["close"], latest["volume"],
    )  # fmt: skip
    computed = _get(live, f"/v2/aggs/ticker/ZZZ/range/3/hour/{now - 6 * HOUR}/{now}")["results"]
    last_bar = max(live.recent, key=lambda b: b.t)
    assert computed[-1]["t"] <= last_bar.t < computed[-1]["t"] + 3 * HOUR
    assert computed[-1]["c"] == last_bar.c


def test_polygon_keys_and_polygon_auth_errors(live: Live) -> None:
    url = live.server.url
    frm, to = live.recent[0].t, live.recent[-1].t
    expected = bar_rows(live.recent, "ZZZ", frm, to + 1)
    # the official client sends the key as a Bearer header and pages without it
    got = [
        (a.timestamp, a.open, a.high, a.low, a.close, a.volume, a.vwap, a.transactions)
        for a in client(url, KEY).list_aggs("ZZZ", 1, "minute", frm, to, limit=100)
    ]
    assert got == expected
    path = f"/v2/aggs/ticker/ZZZ/range/1/minute/{frm}/{to}"
    ways: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"apiKey": KEY}, {}),
        ({"api_key": KEY}, {}),
        ({}, {"X-API-Key": KEY}),
        ({}, {"Authorization": f"Bearer {KEY}"}),
    ]
    for params, headers in ways:
        resp = httpx.get(url + path, params={**params, "limit": 100}, headers=headers)
        assert resp.status_code == 200, (params, headers, resp.text)
        assert KEY not in resp.json()["next_url"]
    for params, headers, error in (
        ({}, {}, "API Key was not provided"),
        ({"apiKey": "wrong"}, {}, "Unknown API Key"),
        ({}, {"Authorization": "Bearer wrong"}, "Unknown API Key"),
    ):
        resp = httpx.get(url + path, params=params, headers=headers)
        assert resp.status_code == 401
        body = resp.json()
        assert set(body) == {"status", "request_id", "error"}
        assert (body["status"], body["error"]) == ("ERROR", error)
    with pytest.raises(BadResponse, match="Unknown API Key"):
        client(url, "wrong").get_aggs("ZZZ", 1, "minute", frm, to)
    # the rest of the API takes the Polygon forms of the key too, and keeps its own errors
    assert httpx.get(url + "/symbols", headers={"Authorization": f"Bearer {KEY}"}).json() == {
        "symbols": ["AAPL", "ZZZ"]
    }
    assert httpx.get(url + "/symbols", params={"apiKey": KEY}).status_code == 200
    wrong = httpx.get(url + "/symbols", params={"apiKey": "wrong"})
    assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    time.sleep(0.3)  # let the server flush its access log
    log = live.server.log_text()
    assert "GET /v2/aggs/ticker/ZZZ/range/1/minute/" in log
    assert KEY not in log and "apiKey" not in log and "wrong" not in log
