"""REST API contract (see the README), exercised over HTTP against the real `speedlayer api` server.

Data is prepared the way an operator would: a CSV of recent 1-minute bars (relative to now, so
nothing has expired under the default retention) replayed with `speedlayer replay` into a fresh
SQLite file, then one `speedlayer api` process serves it for the whole module.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from ingest.synthetic import RandomWalk, write_csv
from tests.conftest import ApiServer, run_cli

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
# 26 hours of bars ending at the start of the current hour: always crosses one UTC midnight
# (for date-only start/end), and 1m has more candles than the default page of 1000.
MINUTES = 26 * 60
SYMBOLS = ["AAPL", "MSFT", "BRK.B", "X:BTCUSD"]  # the bars' symbols, as the CSV has them
STORED = ["AAPL", "MSFT", "BRK.B", "BTC-USD"]  # ... and as they are stored (docs/design.md#symbols)
CANDLE_KEYS = {
    "symbol", "interval", "timestamp", "open", "high", "low", "close", "volume", "vwap",
    "trades", "bars", "final", "revision", "ttl",
}  # fmt: skip
INTERVALS = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
INTERVAL_MS = {
    "1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS, "2h": 2 * HOUR_MS, "4h": 4 * HOUR_MS,
}  # fmt: skip
DEFAULT_RETENTION_S = {
    "1m": 604800, "5m": 604800, "15m": 2592000, "30m": 2592000,
    "1h": 7776000, "2h": 7776000, "4h": 7776000,
}  # fmt: skip
TABLES = {
    "1m": "speed_layer_ohlcv_1min", "5m": "speed_layer_ohlcv_5min",
    "15m": "speed_layer_ohlcv_15min", "30m": "speed_layer_ohlcv_30min",
    "1h": "speed_layer_ohlcv_1h", "2h": "speed_layer_ohlcv_2h", "4h": "speed_layer_ohlcv_4h",
}  # fmt: skip
MAX_PAGE = 10_000  # Settings.max_page default
DEFAULT_PAGE = 1000

Candle = dict[str, Any]


@dataclass
class Served:
    server: ApiServer
    db: Path
    first_ms: int  # first bar's minute
    end_ms: int  # start of the hour the data ends at (exclusive)


def _hour_start(now_ms: int) -> int:
    return now_ms - now_ms % HOUR_MS


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("api")
    end_ms = _hour_start(int(time.time() * 1000))
    first_ms = end_ms - MINUTES * MINUTE_MS
    csv_path = tmp / "bars.csv"
    count = write_csv(RandomWalk(SYMBOLS, seed=11).bars(first_ms, MINUTES), str(csv_path))
    assert count == MINUTES * len(SYMBOLS)  # the first 10 walks trade every minute
    db = tmp / "api.db"
    run_cli("replay", str(csv_path), "--db", str(db))
    server = ApiServer(db)
    server.start()
    try:
        yield Served(server, db, first_ms, end_ms)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.server.url, timeout=30) as http:
        yield http


def candles_path(symbol: str) -> str:
    return "/candles/" + quote(symbol, safe="")


def get_page(client: httpx.Client, symbol: str, **params: Any) -> dict[str, Any]:
    resp = client.get(candles_path(symbol), params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def get_all(client: httpx.Client, symbol: str, interval: str) -> list[Candle]:
    """Every candle in one page of the maximum size (the data set is far below it)."""
    body = get_page(client, symbol, interval=interval, limit=MAX_PAGE)
    assert body["next_cursor"] is None
    candles: list[Candle] = body["candles"]
    return candles


def cli_candles(db: Path, symbol: str, interval: str) -> list[Candle]:
    proc = run_cli("candles", symbol, "--interval", interval, "--format", "json", "--db", str(db))
    rows: list[Candle] = json.loads(proc.stdout)
    return rows


def walk_pages(
    client: httpx.Client, symbol: str, limit: int, **params: Any
) -> tuple[list[Candle], int]:
    """Follow next_cursor to the end; return all candles and the number of pages."""
    out: list[Candle] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = {**params, "limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        body = get_page(client, symbol, **query)
        pages += 1
        assert len(body["candles"]) <= limit
        out.extend(body["candles"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out, pages
        assert isinstance(cursor, str) and cursor
        assert len(body["candles"]) == limit, "a page before the last one must be full"
        assert pages <= 20_000, "pagination does not terminate"


def stamps(candles: list[Candle]) -> list[int]:
    return [c["timestamp"] for c in candles]


def assert_error(resp: httpx.Response, status: int, code: str, *needles: str) -> str:
    assert resp.status_code == status, f"{resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].split(";")[0].strip() == "application/json"
    body = resp.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    message: str = body["message"]
    assert isinstance(message, str) and message
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    return message


def isolated_get(served: Served, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
    """A request on its own connection: a server error may drop the connection, and must not
    break the shared client of the other tests."""
    return httpx.get(
        served.server.url + path, params=params, headers={"Connection": "close"}, timeout=30
    )


def craft_cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# -- candles: shape and values -----------------------------------------------------------------


def test_candles_page_shape(client: httpx.Client, served: Served) -> None:
    resp = client.get("/candles/AAPL", params={"interval": "15m"})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"symbol", "interval", "candles", "next_cursor"}
    assert body["symbol"] == "AAPL"
    assert body["interval"] == "15m"
    assert body["next_cursor"] is None
    candles = body["candles"]
    assert len(candles) == MINUTES // 15
    for c in candles:
        assert set(c) == CANDLE_KEYS
        assert c["symbol"] == "AAPL" and c["interval"] == "15m"
        assert c["timestamp"] % (15 * MINUTE_MS) == 0
        assert c["bars"] == 15
        assert isinstance(c["final"], bool)
        assert isinstance(c["revision"], int) and c["revision"] >= 1
        assert c["low"] <= min(c["open"], c["close"]) <= max(c["open"], c["close"]) <= c["high"]
        assert c["ttl"] == (c["timestamp"] + 15 * MINUTE_MS) // 1000 + DEFAULT_RETENTION_S["15m"]
    assert stamps(candles) == list(range(served.first_ms, served.end_ms, 15 * MINUTE_MS))


@pytest.mark.parametrize("interval", INTERVALS)
def test_candles_equal_cli_output(client: httpx.Client, served: Served, interval: str) -> None:
    api = get_all(client, "AAPL", interval)
    cli = cli_candles(served.db, "AAPL", interval)
    assert cli, "the CLI printed no candles; the fixture data is wrong"
    assert api == cli


@pytest.mark.parametrize(
    ("symbol", "stored"),
    [("MSFT", "MSFT"), ("BRK.B", "BRK.B"), ("X:BTCUSD", "BTC-USD"), ("btc/usd", "BTC-USD")],
)
def test_candles_equal_cli_output_other_symbols(
    client: httpx.Client, served: Served, symbol: str, stored: str
) -> None:
    """Bars written as X:BTCUSD are stored as BTC-USD (docs/design.md#symbols); the API and the
    CLI find them by any form of the pair."""
    api = get_all(client, symbol, "15m")
    assert api and api == cli_candles(served.db, symbol, "15m")
    assert {c["symbol"] for c in api} == {stored}


def test_default_interval_is_1m_and_default_order_is_ascending(client: httpx.Client) -> None:
    body = get_page(client, "AAPL", limit=50)
    assert body["interval"] == "1m"
    ts = stamps(body["candles"])
    assert len(ts) == 50
    assert ts == sorted(ts)
    assert all(b - a == MINUTE_MS for a, b in itertools.pairwise(ts))


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("15min", "15m"), ("15", None), ("60m", "1h"), ("60min", "1h"), ("1hour", "1h"),
     ("120m", "2h"), ("4H", "4h"), ("5minutes", "5m"), ("240m", "4h")],
)  # fmt: skip
def test_interval_aliases(client: httpx.Client, alias: str, canonical: str | None) -> None:
    resp = client.get("/candles/AAPL", params={"interval": alias})
    if canonical is None:  # a number without a unit is not an interval
        assert_error(resp, 422, "invalid_parameter", "interval")
        return
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["interval"] == canonical
    assert body["candles"], "an alias returned no candles"
    assert {c["interval"] for c in body["candles"]} == {canonical}
    assert body["candles"] == get_all(client, "AAPL", canonical)[: len(body["candles"])]


def test_unknown_valid_symbol_gives_empty_list(client: httpx.Client) -> None:
    resp = client.get("/candles/ZZZZ", params={"interval": "15m"})
    assert resp.status_code == 200
    assert resp.json() == {"symbol": "ZZZZ", "interval": "15m", "candles": [], "next_cursor": None}


def test_default_page_size_is_1000(client: httpx.Client) -> None:
    first = get_page(client, "MSFT", interval="1m")
    assert len(first["candles"]) == DEFAULT_PAGE
    assert first["next_cursor"] is not None
    rest = get_page(client, "MSFT", interval="1m", cursor=first["next_cursor"])
    assert len(rest["candles"]) == MINUTES - DEFAULT_PAGE
    assert rest["next_cursor"] is None
    assert first["candles"] + rest["candles"] == get_all(client, "MSFT", "1m")


# -- start / end -------------------------------------------------------------------------------


def _iso_z(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_offset(ms: int, hours: int, minutes: int = 0) -> str:
    tz = timezone(timedelta(hours=hours, minutes=minutes if hours >= 0 else -minutes))
    return datetime.fromtimestamp(ms / 1000, tz).isoformat()


_TIME_FORMS: dict[str, Callable[[int], str]] = {
    "epoch_ms": str,
    "iso_z": _iso_z,
    "iso_lower_z": lambda ms: _iso_z(ms).lower().replace("t", "T"),
    "iso_millis_z": lambda ms: (
        datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    ),
    "iso_plus_0530": lambda ms: _iso_offset(ms, 5, 30),
    "iso_minus_0400": lambda ms: _iso_offset(ms, -4),
    "iso_utc_offset": lambda ms: _iso_offset(ms, 0),
    "iso_naive_is_utc": lambda ms: _iso_z(ms)[:-1],
}


@pytest.mark.parametrize("form", list(_TIME_FORMS))
def test_start_inclusive_end_exclusive(client: httpx.Client, form: str) -> None:
    full = get_all(client, "AAPL", "15m")
    ts = stamps(full)
    fmt = _TIME_FORMS[form]
    start, end = ts[5], ts[20]
    assert fmt(start) != fmt(end)
    body = get_page(client, "AAPL", interval="15m", start=fmt(start), end=fmt(end))
    assert stamps(body["candles"]) == ts[5:20]
    assert body["candles"] == full[5:20]
    assert body["next_cursor"] is None
    # start alone, end alone
    assert get_page(client, "AAPL", interval="15m", start=fmt(start))["candles"] == full[5:]
    assert get_page(client, "AAPL", interval="15m", end=fmt(end))["candles"] == full[:20]


def test_unaligned_epoch_bounds(client: httpx.Client) -> None:
    full = get_all(client, "AAPL", "15m")
    ts = stamps(full)
    # start one ms after a bucket start excludes it; end one ms after a bucket start includes it
    body = get_page(client, "AAPL", interval="15m", start=ts[5] + 1, end=ts[20] + 1)
    assert stamps(body["candles"]) == ts[6:21]
    body = get_page(client, "AAPL", interval="15m", start=ts[5] - 1, end=ts[20] - 1)
    assert stamps(body["candles"]) == ts[5:20]


def test_start_equal_end_is_empty(client: httpx.Client) -> None:
    ts = stamps(get_all(client, "AAPL", "15m"))
    body = get_page(client, "AAPL", interval="15m", start=ts[3], end=ts[3])
    assert body["candles"] == [] and body["next_cursor"] is None


def test_date_only_start_and_end(client: httpx.Client, served: Served) -> None:
    full = get_all(client, "AAPL", "15m")
    # The first UTC midnight after the first bar; the data spans 26 h, so it lies inside.
    midnight = served.first_ms - served.first_ms % DAY_MS + DAY_MS
    assert served.first_ms < midnight < served.end_ms
    day = datetime.fromtimestamp(midnight / 1000, UTC).strftime("%Y-%m-%d")
    after = [c for c in full if c["timestamp"] >= midnight]
    before = [c for c in full if c["timestamp"] < midnight]
    assert after and before
    assert get_page(client, "AAPL", interval="15m", start=day)["candles"] == after
    assert get_page(client, "AAPL", interval="15m", end=day)["candles"] == before
    previous = datetime.fromtimestamp((midnight - DAY_MS) / 1000, UTC).strftime("%Y-%m-%d")
    assert get_page(client, "AAPL", interval="15m", start=previous, end=day)["candles"] == before


def test_range_outside_data_is_empty(client: httpx.Client, served: Served) -> None:
    for params in (
        {"end": served.first_ms},
        {"start": served.end_ms},
        {"start": "2001-01-01", "end": "2001-01-02"},
    ):
        body = get_page(client, "AAPL", interval="5m", **params)
        assert body["candles"] == [] and body["next_cursor"] is None, params


# -- order, limit, cursor ----------------------------------------------------------------------


def test_order_desc_is_reverse_of_asc(client: httpx.Client) -> None:
    asc = get_all(client, "MSFT", "5m")
    desc = get_page(client, "MSFT", interval="5m", order="desc", limit=MAX_PAGE)
    assert desc["next_cursor"] is None
    assert desc["candles"] == asc[::-1]
    explicit = get_page(client, "MSFT", interval="5m", order="asc", limit=MAX_PAGE)
    assert explicit["candles"] == asc


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", [1, 5, 29])
def test_limit(client: httpx.Client, order: str, limit: int) -> None:
    full = get_all(client, "AAPL", "15m")
    expected = full if order == "asc" else full[::-1]
    body = get_page(client, "AAPL", interval="15m", order=order, limit=limit)
    assert body["candles"] == expected[:limit]
    assert body["next_cursor"] is not None


def test_limit_at_max_page_is_accepted(client: httpx.Client) -> None:
    body = get_page(client, "AAPL", interval="1m", limit=MAX_PAGE)
    assert len(body["candles"]) == MINUTES


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize(
    ("interval", "limit"), [("15m", 1), ("15m", 7), ("15m", 50), ("1m", 7), ("1m", 50)]
)
def test_cursor_walk_yields_full_set(
    client: httpx.Client, interval: str, limit: int, order: str
) -> None:
    full = get_all(client, "AAPL", interval)
    expected = full if order == "asc" else full[::-1]
    walked, pages = walk_pages(client, "AAPL", limit, interval=interval, order=order)
    assert len(stamps(walked)) == len(set(stamps(walked))), "a candle repeated across pages"
    assert walked == expected
    assert pages == math.ceil(len(full) / limit)


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", [1, 4, 13])
def test_cursor_walk_within_range(client: httpx.Client, order: str, limit: int) -> None:
    full = get_all(client, "BRK.B", "15m")
    ts = stamps(full)
    inside = full[10:62]
    expected = inside if order == "asc" else inside[::-1]
    walked, pages = walk_pages(
        client,
        "BRK.B",
        limit,
        interval="15m",
        order=order,
        start=_iso_z(ts[10]),
        end=ts[62],
    )
    assert walked == expected
    assert pages == math.ceil(len(inside) / limit)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_last_page_exactly_full_has_null_cursor(client: httpx.Client, order: str) -> None:
    count = len(get_all(client, "AAPL", "1h"))
    assert count == MINUTES // 60
    whole = get_page(client, "AAPL", interval="1h", order=order, limit=count)
    assert len(whole["candles"]) == count
    assert whole["next_cursor"] is None
    # limit dividing the count: the last page is full and still ends the walk
    walked, pages = walk_pages(client, "AAPL", count // 2, interval="1h", order=order)
    assert pages == 2 and len(walked) == count
    # one short: a second page with one candle
    first = get_page(client, "AAPL", interval="1h", order=order, limit=count - 1)
    assert first["next_cursor"] is not None
    second = get_page(
        client, "AAPL", interval="1h", order=order, limit=count - 1, cursor=first["next_cursor"]
    )
    assert len(second["candles"]) == 1
    assert second["next_cursor"] is None


def test_cursor_accepted_with_interval_alias(client: httpx.Client) -> None:
    first = get_page(client, "AAPL", interval="15m", limit=3)
    second = get_page(client, "AAPL", interval="15min", limit=3, cursor=first["next_cursor"])
    assert second["interval"] == "15m"
    assert second["candles"] == get_all(client, "AAPL", "15m")[3:6]


@pytest.mark.parametrize(
    ("issued", "reused"),
    [
        ({"interval": "15m", "order": "asc"}, {"interval": "1m", "order": "asc"}),
        ({"interval": "15m", "order": "asc"}, {"interval": "15m", "order": "desc"}),
        ({"interval": "1h", "order": "desc"}, {"interval": "1h", "order": "asc"}),
        ({"interval": "1h", "order": "desc"}, {"interval": "30m", "order": "desc"}),
    ],
)
def test_cursor_with_other_interval_or_order_is_422(
    client: httpx.Client, issued: dict[str, str], reused: dict[str, str]
) -> None:
    cursor = get_page(client, "AAPL", limit=2, **issued)["next_cursor"]
    assert cursor is not None
    resp = client.get("/candles/AAPL", params={**reused, "limit": 2, "cursor": cursor})
    assert_error(resp, 422, "invalid_parameter", "cursor")


# -- bad parameters ----------------------------------------------------------------------------

BAD_QUERIES: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
    ("interval_syntax", {"interval": "7x"}, ("interval", "7x")),
    ("interval_not_configured", {"interval": "3m"}, ("interval", "3m", "not configured")),
    ("interval_empty", {"interval": ""}, ("interval",)),
    ("interval_zero", {"interval": "0m"}, ("interval", "0m")),
    ("limit_zero", {"limit": "0"}, ("limit",)),
    ("limit_negative", {"limit": "-1"}, ("limit",)),
    ("limit_not_a_number", {"limit": "abc"}, ("limit",)),
    ("limit_fraction", {"limit": "1.5"}, ("limit",)),
    ("limit_above_max_page", {"limit": str(MAX_PAGE + 1)}, ("limit", str(MAX_PAGE))),
    ("limit_huge", {"limit": "9" * 30}, ("limit",)),
    ("start_not_a_time", {"start": "notatime"}, ("notatime",)),
    ("end_not_a_time", {"end": "2024-13-45"}, ("2024-13-45",)),
    ("start_empty", {"start": ""}, ("time",)),
    ("start_bad_offset", {"start": "2024-01-02T00:00:00+99:00"}, ("2024-01-02T00:00:00+99:00",)),
    ("end_before_start", {"start": "2024-01-02", "end": "2024-01-01"}, ("end", "start")),
    ("end_before_start_ms", {"start": "1549895401000", "end": "1549895400999"}, ("end", "start")),
    ("order_sideways", {"order": "sideways"}, ("order",)),
    ("order_upper", {"order": "DESC"}, ("order",)),
    ("cursor_garbage", {"cursor": "garbage"}, ("cursor",)),
    ("cursor_punctuation", {"cursor": "!!!"}, ("cursor",)),
    ("cursor_empty", {"cursor": ""}, ("cursor",)),
    ("cursor_not_ascii", {"cursor": "é"}, ("cursor",)),
    ("cursor_too_many_parts", {"cursor": craft_cursor("1m:asc:1:2")}, ("cursor",)),
    ("cursor_not_a_number", {"cursor": craft_cursor("1m:asc:soon")}, ("cursor",)),
]


@pytest.mark.parametrize(
    ("params", "needles"), [(p, n) for _, p, n in BAD_QUERIES], ids=[i for i, _, _ in BAD_QUERIES]
)
def test_bad_parameter_is_422(
    served: Served, params: dict[str, str], needles: tuple[str, ...]
) -> None:
    resp = isolated_get(served, "/candles/AAPL", params)
    assert_error(resp, 422, "invalid_parameter", *needles)


@pytest.mark.parametrize(
    "symbol",
    ["<script>", "A B", " AAPL", "AAPL ", " ", "-AAPL", ".AAPL", "A" * 41, "ÄPL", "A\x00B",
     "A;B", "A'B", "A\"B", "A%B", "A?B", "A#B"],
)  # fmt: skip
def test_invalid_symbol_is_422(served: Served, symbol: str) -> None:
    resp = isolated_get(served, candles_path(symbol), {"interval": "15m"})
    assert_error(resp, 422, "invalid_parameter", "symbol")


@pytest.mark.parametrize(
    ("params", "needles"),
    [
        ({"start": "9" * 25}, ("start",)),
        ({"end": "-" + "9" * 25}, ("end",)),
        ({"start": str(2**63)}, ("start",)),
        ({"start": "1549895400000", "end": str(2**64)}, ("end",)),
    ],
    ids=["start_huge", "end_huge_negative", "start_2p63", "end_2p64"],
)
def test_out_of_range_epoch_is_422_not_500(
    served: Served, params: dict[str, str], needles: tuple[str, ...]
) -> None:
    """Epoch numbers beyond 64 bits are bad input: 422 with a message, never a 500."""
    resp = isolated_get(served, "/candles/AAPL", params)
    message = assert_error(resp, 422, "invalid_parameter")
    assert any(n in message for n in (*needles, *params.values())), message


@pytest.mark.parametrize(
    "params",
    [{"start": "1796281200"}, {"end": "1796281200"}, {"start": "0"}, {"end": "-60000"}],
    ids=["start_seconds", "end_seconds", "start_zero", "end_negative"],
)
def test_numeric_time_below_1e11_is_422_looks_like_seconds(
    served: Served, params: dict[str, str]
) -> None:
    """Numeric times are epoch ms; one below 10^11 (before 1973-03-03) is a mistake in seconds,
    never silently a date in 1970."""
    resp = isolated_get(served, "/candles/AAPL", params)
    message = assert_error(resp, 422, "invalid_parameter", *params)
    assert "looks like epoch seconds; pass milliseconds (×1000) or ISO 8601" in message


def test_early_times_in_iso_and_ms_from_1e11_are_accepted(client: httpx.Client) -> None:
    for params in ({"start": "1970-01-01T00:00:00Z"}, {"start": str(10**11)}):
        resp = client.get("/candles/AAPL", params=params)
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("params", "raw"),
    [
        ({"order": "asc"}, "1m:asc:" + "9" * 25),
        ({"order": "desc"}, "1m:desc:-" + "9" * 25),
        ({"order": "asc"}, f"1m:asc:{2**63 - 1}"),
    ],
    ids=["asc_huge", "desc_huge_negative", "asc_int64_max"],
)
def test_forged_cursor_out_of_range_is_422_not_500(
    served: Served, params: dict[str, str], raw: str
) -> None:
    resp = isolated_get(served, "/candles/AAPL", {**params, "cursor": craft_cursor(raw)})
    assert_error(resp, 422, "invalid_parameter", "cursor")


_SWEEP_VALUES = [
    "", " ", "%", "\x00", "'", "NaN", "inf", "-inf", "1e309", "0x10", "١٢", "9" * 40,
    "-" + "9" * 40, "2024-02-30", "2024-01-02T25:00:00Z", "x" * 2000, "null", "[]", "{}", "--",
    "1,2",
]  # fmt: skip


@pytest.mark.parametrize("param", ["interval", "start", "end", "limit", "order", "cursor"])
def test_parameter_sweep_never_gives_500(served: Served, param: str) -> None:
    """Whatever a client sends, the answer is 200 or a JSON error, never a server error."""
    failures = []
    for value in _SWEEP_VALUES:
        resp = isolated_get(served, "/candles/AAPL", {param: value})
        ctype = resp.headers.get("content-type", "").split(";")[0]
        if resp.status_code >= 500 or ctype != "application/json":
            failures.append((value[:50], resp.status_code, resp.text[:80]))
        elif resp.status_code != 200:
            assert set(resp.json()) == {"error", "message"}
    assert not failures, f"{param}: {failures}"


def test_unknown_route_is_json_404(client: httpx.Client) -> None:
    # GET /candles (and /candles/, redirected to it) exists since issue 4: latest candles of
    # several symbols; tests/integration/api/test_api_more.py covers it.
    # (/candles/AAPL/extra is the range route of a ticker "AAPL/extra": tickers may hold "/")
    for path in ("/nope", "/candlesx/AAPL", "/v1/candles/AAPL"):
        resp = client.get(path, follow_redirects=True)
        assert_error(resp, 404, "not_found")


def test_wrong_method_is_json_405(client: httpx.Client) -> None:
    resp = client.post("/candles/AAPL")
    assert_error(resp, 405, "method_not_allowed")


# -- intervals, symbols, health, docs ----------------------------------------------------------


def test_intervals_with_default_retention(client: httpx.Client) -> None:
    resp = client.get("/intervals")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"intervals"}
    items = body["intervals"]
    assert [i["name"] for i in items] == INTERVALS
    for item in items:
        name = item["name"]
        assert set(item) == {"name", "interval_ms", "retention_s", "retention", "table"}
        assert item["interval_ms"] == INTERVAL_MS[name]
        assert item["retention_s"] == DEFAULT_RETENTION_S[name]
        assert item["retention"] == f"{DEFAULT_RETENTION_S[name] // 86400}d"
        assert item["table"] == TABLES[name]


@pytest.mark.parametrize(
    ("setting", "changed"),
    [
        ("15m=1d", {"15m": 86400}),
        ("1m=3d,4h=365d", {"1m": 3 * 86400, "4h": 365 * 86400}),
        ("*=10y,5m=2w", {**{n: 3650 * 86400 for n in INTERVALS}, "5m": 14 * 86400}),
    ],
)
def test_intervals_report_retention_from_environment(
    api_server_factory: Callable[..., ApiServer], setting: str, changed: dict[str, int]
) -> None:
    server = api_server_factory(env={"SPEEDLAYER_RETENTION": setting})
    body = httpx.get(server.url + "/intervals", timeout=10).json()
    got = {i["name"]: i["retention_s"] for i in body["intervals"]}
    assert got == {**DEFAULT_RETENTION_S, **changed}
    by_name = {i["name"]: i for i in body["intervals"]}
    for name, seconds in changed.items():
        assert by_name[name]["retention"] == f"{seconds / 86400:g}d"


def test_symbols(client: httpx.Client) -> None:
    resp = client.get("/symbols")
    assert resp.status_code == 200
    assert resp.json() == {"symbols": sorted(STORED)}


def test_healthz(client: httpx.Client) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_readyz(client: httpx.Client) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready"}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/components/schemas/")
    resolved: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def test_openapi_documents_candles(client: httpx.Client) -> None:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    spec = resp.json()
    op = spec["paths"]["/candles/{symbol}"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {"symbol", "interval", "start", "end", "limit", "order", "cursor"}
    assert params["symbol"]["in"] == "path" and params["symbol"]["required"] is True
    for name in ("interval", "start", "end", "limit", "order", "cursor"):
        assert params[name]["in"] == "query"
        assert params[name]["required"] is False
    assert set(params["order"]["schema"]["enum"]) == {"asc", "desc"}

    error = op["responses"]["422"]["content"]["application/json"]["schema"]
    error_schema = _resolve(spec, error)
    assert set(error_schema["properties"]) == {"error", "message"}
    assert set(error_schema.get("required", [])) == {"error", "message"}

    ok = _resolve(spec, op["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(ok["properties"]) == {"symbol", "interval", "candles", "next_cursor"}
    item = _resolve(spec, ok["properties"]["candles"]["items"])
    assert set(item["properties"]) == CANDLE_KEYS
    for path in ("/intervals", "/symbols", "/healthz", "/readyz"):
        assert "get" in spec["paths"][path], path


def test_docs_page(client: httpx.Client) -> None:
    resp = client.get("/docs")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "swagger" in resp.text.lower()
    assert "/openapi.json" in resp.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/candles/AAPL?interval=15m", 200),
        ("/candles/ZZZZ", 200),
        ("/intervals", 200),
        ("/symbols", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/openapi.json", 200),
        ("/candles/AAPL?interval=7x", 422),
        ("/candles/AAPL?limit=abc", 422),
        ("/nope", 404),
    ],
)
def test_json_content_type(client: httpx.Client, path: str, status: int) -> None:
    resp = client.get(path)
    assert resp.status_code == status
    assert resp.headers["content-type"].split(";")[0].strip() == "application/json"
    resp.json()


# -- retention ---------------------------------------------------------------------------------


@dataclass
class Aged:
    server: ApiServer
    db: Path
    old_start: int  # 10 days before the current hour: 1m/5m expired, 15m and longer not
    recent_start: int
    end_ms: int


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aged]:
    """OLDX: 2 hours of bars 10 days ago and the last hour; OLDY: only the old 2 hours."""
    tmp = tmp_path_factory.mktemp("aged")
    end_ms = _hour_start(int(time.time() * 1000))
    old_start = end_ms - 10 * DAY_MS
    recent_start = end_ms - 60 * MINUTE_MS
    csv_path = tmp / "old.csv"
    old = RandomWalk(["OLDX", "OLDY"], seed=3).bars(old_start, 120)
    recent = RandomWalk(["OLDX"], seed=4).bars(recent_start, 60)
    write_csv(itertools.chain(old, recent), str(csv_path))
    db = tmp / "old.db"
    run_cli("replay", str(csv_path), "--db", str(db))
    server = ApiServer(db)
    server.start()
    try:
        yield Aged(server, db, old_start, recent_start, end_ms)
    finally:
        server.stop()


def test_expired_candles_are_not_returned(aged: Aged) -> None:
    """Bars from 10 days ago: their 1m and 5m candles (7 days) have expired, 15m+ (30/90 days)
    have not. Recent bars of the same symbol are returned at every interval."""
    old_start, recent_start, end_ms = aged.old_start, aged.recent_start, aged.end_ms
    now_s = time.time()
    with httpx.Client(base_url=aged.server.url, timeout=30) as http:

        def fetch(interval: str, symbol: str = "OLDX", **params: Any) -> list[Candle]:
            body = get_page(http, symbol, interval=interval, limit=MAX_PAGE, **params)
            candles: list[Candle] = body["candles"]
            assert all(c["ttl"] > now_s for c in candles), "an expired candle was returned"
            return candles

        # 1m/5m: only the recent hour
        assert stamps(fetch("1m")) == list(range(recent_start, end_ms, MINUTE_MS))
        assert stamps(fetch("5m")) == list(range(recent_start, end_ms, 5 * MINUTE_MS))
        assert fetch("1m", end=recent_start) == []
        assert fetch("5m", start=old_start, end=old_start + DAY_MS) == []
        assert fetch("1m", "OLDY") == []
        assert fetch("5m", "OLDY") == []
        # 15m / 30m / 1h: the old buckets are still there
        old_15 = list(range(old_start, old_start + 120 * MINUTE_MS, 15 * MINUTE_MS))
        recent_15 = list(range(recent_start, end_ms, 15 * MINUTE_MS))
        assert stamps(fetch("15m")) == old_15 + recent_15
        assert fetch("15m") == cli_candles(aged.db, "OLDX", "15m")
        assert stamps(fetch("15m", "OLDY")) == old_15
        assert len(fetch("30m", end=recent_start)) == 4
        assert len(fetch("1h", end=recent_start)) == 2
        assert len(fetch("1h", "OLDY")) == 2


def test_symbols_lists_symbol_with_only_longer_interval_data(aged: Aged) -> None:
    """/symbols is documented as "Symbols with data": OLDY's 1m candles have expired but its
    15m..4h candles are served by /candles, so it has data and must be listed."""
    with httpx.Client(base_url=aged.server.url, timeout=30) as http:
        assert get_page(http, "OLDY", interval="15m")["candles"], "fixture: OLDY has 15m data"
        resp = http.get("/symbols")
        assert resp.status_code == 200
        assert resp.json() == {"symbols": ["OLDX", "OLDY"]}
