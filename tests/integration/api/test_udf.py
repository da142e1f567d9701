"""The TradingView UDF datafeed (`/udf/...`) over a real `speedlayer api`.

The expected shapes are written here from the UDF protocol as TradingView describes it (the
Charting Library's "UDF" page, and what its `UDFCompatibleDatafeed` adapter reads):

- `GET /config` -> the datafeed configuration: `supported_resolutions`, `supports_search` /
  `supports_group_request` (exactly one true), `supports_marks`, `supports_timescale_marks`,
  `supports_time`, `exchanges` [{value, name, desc}], `symbols_types` [{name, value}];
- `GET /symbols?symbol=S` -> symbol information (name, ticker, description, type, session,
  exchange, listed_exchange, timezone, format, minmov, pricescale, has_intraday,
  supported_resolutions, intraday_multipliers, ...); an answer carrying `s` is an error
  (`{"s": "error", "errmsg": "unknown_symbol"}`);
- `GET /search?query=&type=&exchange=&limit=` -> an array of {symbol, full_name, description,
  exchange, ticker, type};
- `GET /history?symbol=&resolution=&from=&to=&countback=` -> `{"s": "ok", "t": [...], "o": [...],
  "h": [...], "l": [...], "c": [...], "v": [...]}`, bar times in Unix SECONDS, `from` inclusive
  and `to` exclusive, oldest first; with `countback`, that many bars before `to` (countback has
  priority over `from`); `{"s": "no_data", "nextTime": t}` when the range is empty (`nextTime`:
  the time of the closest bar before it, if any); `{"s": "error", "errmsg": ...}` on errors;
- `GET /time` -> the server's Unix time in seconds, as plain text.

Bar values must be the stored candles (read through `speedlayer candles`), also for resolutions
the API computes from the 1-minute candles (stored by a second database with other intervals).

With exchange-aligned candles (`SPEEDLAYER_CANDLE_ALIGNMENT=exchange`, a third database), stocks
are listed in the exchange's time zone with its regular session (TradingView's `HHMM-HHMM` in
that zone), and daily bars carry "a trading day at 00:00 UTC, not the session start" (the
Charting Library's `Bar.time`): the session candles of 2019-02-11..15 (opening 14:30Z) are
stamped 00:00Z of their day.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat_data import (
    BTC,
    OTHER_INTERVALS,
    RETENTION,
    replay,
    stored,
    write_bars,
)
from tests.conftest import ApiServer

MIN_S = 60
MON = 1_549_895_400  # 2019-02-11T14:30Z, the first regular session of the eqker bars
TUE = MON + 86_400
MON_DAY = 1_549_843_200  # 2019-02-11T00:00Z
DAY_S = 86_400
EXCHANGE_ENV = {
    "SPEEDLAYER_CANDLE_ALIGNMENT": "exchange",
    "SPEEDLAYER_INTERVALS": "1m,5m,1h,4h,1d",
    "SPEEDLAYER_RETENTION": RETENTION,
}
SYMBOL_INFO_KEYS = {
    "name", "ticker", "description", "type", "session", "exchange", "listed_exchange",
    "timezone", "format", "minmov", "pricescale", "has_intraday", "supported_resolutions",
    "intraday_multipliers",
}  # fmt: skip
SEARCH_ITEM_KEYS = {"symbol", "full_name", "description", "exchange", "ticker", "type"}
COLUMNS = ("t", "o", "h", "l", "c", "v")


@dataclass
class Setup:
    db_a: Path
    db_b: Path
    a: ApiServer  # the default intervals
    b: ApiServer  # OTHER_INTERVALS (3m, 10m, 3h, 1d stored)


@pytest.fixture(scope="module")
def setup(realbars: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("udf")
    csv_path = write_bars(realbars, tmp / "bars.csv")
    db_a, db_b = tmp / "a.db", tmp / "b.db"
    other = {"SPEEDLAYER_INTERVALS": OTHER_INTERVALS}
    replay(db_a, csv_path)
    replay(db_b, csv_path, env=other)
    a = ApiServer(db_a, env={"SPEEDLAYER_RETENTION": RETENTION})
    b = ApiServer(db_b, env={**other, "SPEEDLAYER_RETENTION": RETENTION})
    a.start()
    b.start()
    yield Setup(db_a, db_b, a, b)
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def exchange(realbars: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One database and server with exchange-aligned candles (``a`` and ``b`` are the same)."""
    tmp = tmp_path_factory.mktemp("udf-exchange")
    csv_path = write_bars(realbars, tmp / "bars.csv", symbols=("AAPL", BTC))
    db = tmp / "exchange.db"
    replay(db, csv_path, env=EXCHANGE_ENV)
    server = ApiServer(db, env=EXCHANGE_ENV)
    server.start()
    yield Setup(db, db, server, server)
    server.stop()


def get(server: ApiServer, path: str, status: int = 200, **params: Any) -> Any:
    resp = httpx.get(server.url + path, params=params, timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


def history(server: ApiServer, status: int = 200, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = get(server, "/udf/history", status, **params)
    return body


def columns(candles: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Stored candles as the UDF columns (times in seconds)."""
    return {
        "t": [c["timestamp"] // 1000 for c in candles],
        "o": [c["open"] for c in candles],
        "h": [c["high"] for c in candles],
        "l": [c["low"] for c in candles],
        "c": [c["close"] for c in candles],
        "v": [c["volume"] for c in candles],
    }


def assert_ok(body: dict[str, Any], expected: dict[str, list[Any]]) -> None:
    assert body["s"] == "ok", body
    assert set(body) == {"s", *COLUMNS}
    assert {len(body[k]) for k in COLUMNS} == {len(expected["t"])}
    assert body["t"] == sorted(body["t"])
    assert {k: body[k] for k in COLUMNS} == expected


# -- config, time, symbols, search ----------------------------------------------------------------


def test_config(setup: Setup) -> None:
    config = get(setup.a, "/udf/config")
    assert {
        "supported_resolutions", "supports_search", "supports_group_request", "supports_marks",
        "supports_timescale_marks", "supports_time", "exchanges", "symbols_types",
    } <= set(config)  # fmt: skip
    assert (config["supports_search"], config["supports_group_request"]) == (True, False)
    assert config["supports_time"] is True
    assert config["supports_marks"] is False and config["supports_timescale_marks"] is False
    # the default intervals, plus minute counts computed from the 1-minute candles
    assert config["supported_resolutions"] == [
        "1", "2", "3", "5", "10", "15", "30", "45", "60", "120", "180", "240",
    ]  # fmt: skip
    assert all(set(e) == {"value", "name", "desc"} for e in config["exchanges"])
    assert all(set(t) == {"name", "value"} for t in config["symbols_types"])
    # with a day interval configured, days are offered as 1D
    other = get(setup.b, "/udf/config")["supported_resolutions"]
    assert other == ["1", "2", "3", "10", "45", "180", "1D"]


def test_time(setup: Setup) -> None:
    resp = httpx.get(setup.a.url + "/udf/time")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert resp.text.isdigit() and abs(int(resp.text) - time.time()) < 10


def test_symbols(setup: Setup) -> None:
    info = get(setup.a, "/udf/symbols", symbol="AAPL")
    assert set(info) >= SYMBOL_INFO_KEYS and "s" not in info
    assert (info["name"], info["ticker"], info["type"]) == ("AAPL", "AAPL", "stock")
    assert (info["timezone"], info["session"], info["format"]) == ("Etc/UTC", "24x7", "price")
    assert (info["minmov"], info["pricescale"]) == (1, 100)
    assert info["has_intraday"] is True and info["has_daily"] is False
    assert info["supported_resolutions"] == get(setup.a, "/udf/config")["supported_resolutions"]
    assert info["intraday_multipliers"] == info["supported_resolutions"]
    # the full name search gives, and Polygon's REST form of a crypto pair
    assert get(setup.a, "/udf/symbols", symbol="SPEEDLAYER:AAPL") == info
    btc = get(setup.a, "/udf/symbols", symbol="X:BTCUSD")
    assert (btc["name"], btc["ticker"], btc["type"]) == (BTC, BTC, "crypto")
    assert btc["volume_precision"] == 8
    assert btc["pricescale"] == 100  # about 4,500 USD: cents
    assert get(setup.b, "/udf/symbols", symbol="AAPL")["has_daily"] is True
    for unknown in ("NOPE", "", "not a symbol"):
        body = get(setup.a, "/udf/symbols", 404, symbol=unknown)
        assert body == {"s": "error", "errmsg": "unknown_symbol"}
    assert get(setup.a, "/udf/symbols", 400) == {"s": "error", "errmsg": "symbol is required"}


def test_search(setup: Setup) -> None:
    found = get(setup.a, "/udf/search", query="a", type="", exchange="", limit=30)
    assert isinstance(found, list) and all(set(item) == SEARCH_ITEM_KEYS for item in found)
    assert [item["symbol"] for item in found] == ["AAPL", "UGA"]  # starts-with first
    assert found[0] == {
        "symbol": "AAPL", "full_name": "SPEEDLAYER:AAPL", "description": "AAPL",
        "exchange": "SPEEDLAYER", "ticker": "AAPL", "type": "stock",
    }  # fmt: skip
    assert [i["symbol"] for i in get(setup.a, "/udf/search", query="A", limit=1)] == ["AAPL"]
    assert [i["symbol"] for i in get(setup.a, "/udf/search", type="crypto")] == [BTC]
    assert len(get(setup.a, "/udf/search")) == 5
    assert get(setup.a, "/udf/search", query="A", exchange="NYSE") == []
    assert get(setup.a, "/udf/search", 400, limit="lots")["s"] == "error"


# -- history ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "resolution", "interval", "oracle"),
    [("a", "15", "15m", "a"), ("a", "60", "1h", "a"), ("a", "1", "1m", "a"),
     ("a", "3", "3m", "b"), ("a", "10", "10m", "b"), ("a", "180", "3h", "b"),
     ("b", "5", "5m", "a"), ("b", "240", "4h", "a"), ("b", "1D", "1d", "b")],
)  # fmt: skip
def test_history_is_the_stored_candles(
    setup: Setup, server: str, resolution: str, interval: str, oracle: str
) -> None:
    """[from, to): a bar starting before `from` is left out (even when `to` reaches into it),
    one starting at `to` too. Computed resolutions give the other database's stored candles."""
    api = setup.a if server == "a" else setup.b
    db, env = (
        (setup.db_a, None)
        if oracle == "a"
        else (setup.db_b, {"SPEEDLAYER_INTERVALS": OTHER_INTERVALS})
    )
    for symbol in ("AAPL", "UGA", BTC):
        candles = stored(db, symbol, interval, env)
        assert len(candles) >= 2, (symbol, interval)
        first, last = candles[len(candles) // 3], candles[max(1, 2 * len(candles) // 3)]
        frm = first["timestamp"] // 1000 - 1  # just before a bar: it is in
        to = last["timestamp"] // 1000  # a bar's start: it is out
        want = [c for c in candles if frm <= c["timestamp"] // 1000 < to]
        body = history(api, symbol=symbol, resolution=resolution, **{"from": frm, "to": to})
        assert_ok(body, columns(want))
        everything = history(
            api, symbol=symbol, resolution=resolution, **{"from": 0, "to": 2_000_000_000}
        )
        assert_ok(everything, columns(candles))


@pytest.mark.parametrize(("resolution", "interval"), [("5", "5m"), ("3", "3m"), ("10", "10m")])
def test_countback_takes_the_newest_bars_before_to(
    setup: Setup, resolution: str, interval: str
) -> None:
    db, env = (
        (setup.db_a, None)
        if interval == "5m"
        else (setup.db_b, {"SPEEDLAYER_INTERVALS": OTHER_INTERVALS})
    )
    candles = stored(db, "AAPL", interval, env)
    to = TUE + 60 * MIN_S  # Tuesday 15:30Z: the newest bars before it span Monday's close
    before = [c for c in candles if c["timestamp"] // 1000 < to]
    for count in (1, 7, 40, 5000):
        body = history(setup.a, symbol="AAPL", resolution=resolution, countback=count,
                       **{"from": to - 60, "to": to})  # fmt: skip
        assert_ok(body, columns(before[-count:]))


def test_no_data_and_next_time(setup: Setup) -> None:
    bars = stored(setup.db_a, "AAPL", "1m")
    evening, morning = MON + 7 * 3600, TUE - 30 * MIN_S  # 21:30Z Monday .. 14:00Z Tuesday
    last_monday = max(c["timestamp"] // 1000 for c in bars if c["timestamp"] // 1000 < evening)
    for resolution in ("5", "7"):
        body = history(setup.a, symbol="AAPL", resolution=resolution,
                       **{"from": evening, "to": morning})  # fmt: skip
        assert body["s"] == "no_data"
        size = int(resolution) * MIN_S
        assert body == {"s": "no_data", "nextTime": last_monday - last_monday % size}
    # the names /udf/symbols accepts work here too
    window: dict[str, Any] = {"resolution": "15", "from": MON, "to": TUE}
    aapl = history(setup.a, symbol="AAPL", **window)
    assert aapl["s"] == "ok" and history(setup.a, symbol="SPEEDLAYER:AAPL", **window) == aapl
    btc: dict[str, Any] = {"resolution": "60", "from": 17_413 * 86_400, "to": 17_414 * 86_400}
    assert len(history(setup.a, symbol="X:BTCUSD", **btc)["t"]) == 24
    assert history(setup.a, symbol="X:BTCUSD", **btc) == history(setup.a, symbol=BTC, **btc)
    # nothing before the range either; an unknown symbol has no data
    assert history(setup.a, symbol="AAPL", resolution="5", **{"from": 0, "to": MON}) == {
        "s": "no_data"
    }
    for unknown in ("NOPE", "not a symbol", "SPEEDLAYER:"):
        body = history(setup.a, symbol=unknown, resolution="5", **{"from": 0, "to": TUE})
        assert body == {"s": "no_data"}


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"resolution": "1W"}, "weeks"),
        ({"resolution": "1M"}, "months"),
        ({"resolution": "1S"}, "seconds"),
        ({"resolution": "1D"}, "not supported"),  # no day interval on this server
        ({"resolution": "99999"}, "not supported"),
        ({"resolution": "fifteen"}, "invalid"),
        ({"from": "yesterday"}, "from must be an integer"),
        ({"to": "99999999999999"}, "to must be an integer"),
        ({"countback": "0"}, "countback"),
        ({"symbol": None}, "symbol is required"),
        ({"from": None}, "from is required"),
    ],
)
def test_history_errors(setup: Setup, params: dict[str, Any], needle: str) -> None:
    query = {"symbol": "AAPL", "resolution": "5", "from": MON, "to": TUE, **params}
    body = history(setup.a, 400, **{k: v for k, v in query.items() if v is not None})
    assert set(body) == {"s", "errmsg"} and body["s"] == "error"
    assert needle in body["errmsg"], body


# -- exchange-aligned candles ---------------------------------------------------------------------


def test_exchange_alignment_lists_stocks_in_exchange_time(exchange: Setup) -> None:
    resolutions = ["1", "2", "3", "5", "10", "45", "60", "240", "1D"]  # no computed hours
    assert get(exchange.a, "/udf/config")["supported_resolutions"] == resolutions
    info = get(exchange.a, "/udf/symbols", symbol="AAPL")
    assert (info["timezone"], info["session"]) == ("America/New_York", "0930-1600")
    assert info["supported_resolutions"] == resolutions and info["has_daily"] is True
    assert info["intraday_multipliers"] == resolutions[:-1]
    btc = get(exchange.a, "/udf/symbols", symbol="X:BTCUSD")
    assert (btc["timezone"], btc["session"]) == ("Etc/UTC", "24x7")
    for resolution in ("120", "180"):
        body = history(exchange.a, 400, symbol="AAPL", resolution=resolution,
                       **{"from": MON, "to": TUE})  # fmt: skip
        assert "not supported" in body["errmsg"] and "exchange-aligned" in body["errmsg"], body


def test_exchange_hour_bars_are_the_stored_candles(exchange: Setup) -> None:
    candles = stored(exchange.db_a, "AAPL", "1h", EXCHANGE_ENV)
    assert {c["timestamp"] % 3_600_000 for c in candles} == {1_800_000}  # :30 New York
    # `from` and `to` 10 minutes before a bar: that bar is in, the one at `to`'s side out
    frm = candles[2]["timestamp"] // 1000 - 600
    to = candles[-3]["timestamp"] // 1000 - 600
    want = [c for c in candles if frm <= c["timestamp"] // 1000 < to]
    assert_ok(history(exchange.a, symbol="AAPL", resolution="60", **{"from": frm, "to": to}),
              columns(want))  # fmt: skip


def test_exchange_daily_bars_are_sessions_on_their_trading_day(exchange: Setup) -> None:
    sessions = stored(exchange.db_a, "AAPL", "1d", EXCHANGE_ENV)
    assert [c["timestamp"] // 1000 for c in sessions] == [MON + k * DAY_S for k in range(5)]
    days = [MON_DAY + k * DAY_S for k in range(5)]  # Monday..Friday at 00:00Z

    def bars(selected: list[int]) -> dict[str, list[Any]]:
        want = columns([sessions[k] for k in selected])
        return {**want, "t": [days[k] for k in selected]}

    everything = history(exchange.a, symbol="AAPL", resolution="1D",
                         **{"from": 0, "to": 2_000_000_000})  # fmt: skip
    assert_ok(everything, bars([0, 1, 2, 3, 4]))
    # from Tuesday noon (after Tuesday 00:00: out) to Thursday 01:00 (Thursday 00:00 is before
    # it, though its session opens later: in)
    window = {"from": days[1] + DAY_S // 2, "to": days[3] + 3600}
    assert_ok(history(exchange.a, symbol="AAPL", resolution="1D", **window), bars([2, 3]))
    back = history(exchange.a, symbol="AAPL", resolution="D", countback=2,
                   **{"from": days[4], "to": days[4]})  # fmt: skip
    assert_ok(back, bars([2, 3]))
    weekend = {"from": days[4] + DAY_S, "to": days[4] + 3 * DAY_S}
    assert history(exchange.a, symbol="AAPL", resolution="1D", **weekend) == {
        "s": "no_data", "nextTime": days[4],
    }  # fmt: skip


# -- OpenAPI -------------------------------------------------------------------------------------


def test_openapi_documents_both_sets_with_their_tags(setup: Setup) -> None:
    spec = httpx.get(setup.a.url + "/openapi.json", timeout=30).json()
    paths = spec["paths"]
    polygon = paths["/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}"]["get"]
    assert polygon["tags"] == ["Polygon-compatible"]
    assert {p["name"] for p in polygon["parameters"]} == {
        "ticker", "multiplier", "timespan", "from", "to", "adjusted", "sort", "limit", "cursor",
        "apiKey",
    }  # fmt: skip
    ok = polygon["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/PolygonAggs")
    bad = polygon["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert bad.endswith("/PolygonError")
    for path in ("/udf/config", "/udf/symbols", "/udf/search", "/udf/history", "/udf/time"):
        assert paths[path]["get"]["tags"] == ["TradingView UDF"], path
    history_op = paths["/udf/history"]["get"]
    assert {p["name"]: p["required"] for p in history_op["parameters"]} == {
        "symbol": True, "resolution": True, "from": True, "to": True, "countback": False,
    }  # fmt: skip
    schema = history_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert schema.endswith("/UdfHistory")
    assert "text/plain" in paths["/udf/time"]["get"]["responses"]["200"]["content"]
