"""A TradingView UDF datafeed (the Charting Library's "Universal Data Feed" HTTP protocol) over the
speed layer's candles, for ``new Datafeeds.UDFCompatibleDatafeed("http://host:port/udf")``:

- ``GET /udf/config``: the datafeed's configuration (resolutions, search, server time);
- ``GET /udf/symbols?symbol=``: one symbol's information, or ``{"s": "error", "errmsg":
  "unknown_symbol"}`` (404);
- ``GET /udf/search?query=&type=&exchange=&limit=``: matching symbols, a JSON array;
- ``GET /udf/history?symbol=&resolution=&from=&to=&countback=``: bars as columns, ``{"s": "ok",
  "t": [...], "o": [...], "h": [...], "l": [...], "c": [...], "v": [...]}`` with ``t`` in Unix
  SECONDS, oldest first; ``{"s": "no_data", "nextTime": ...}`` when the range is empty
  (``nextTime``: the start of the newest bar before ``from``, omitted when there is none);
- ``GET /udf/time``: the server time, Unix seconds as plain text.

History: bars whose start is in ``[from, to)`` (``to`` exclusive, as the protocol says), or, with
``countback``, the newest ``countback`` bars before ``to`` whatever ``from`` says (the protocol
gives countback the priority); at most ``settings.max_page`` bars per answer, the newest ones. The
forming bar is included, so the adapter's periodic refresh shows it moving. Resolutions are
minutes (``1``, ``5``, ..., ``240``), served from the configured interval of that size or computed
from the 1-minute candles (api/aggregates.py, as the Polygon-compatible endpoint does); ``1D``
and other day multiples only when a day interval is configured; seconds, weeks and months never.
Bad parameters get ``{"s": "error", "errmsg": ...}`` with status 400. Bar times are bucket
starts, aligned to the Unix epoch in UTC; symbols are listed in the ``Etc/UTC`` time zone with a
``24x7`` session.

With exchange-aligned candles (``SPEEDLAYER_CANDLE_ALIGNMENT=exchange``,
docs/design.md#exchange-time-candles) stock, index and option symbols are listed in the exchange's
time zone (``SPEEDLAYER_EXCHANGE_TIMEZONE``, ``America/New_York``) with its regular hours as the
session (from the calendar ``SPEEDLAYER_EXCHANGE_CALENDAR``: ``0930-1600`` for XNYS), so the
chart's hour bars fall where the service's do (09:30, 10:30, ... local); crypto and forex symbols
stay ``Etc/UTC``/``24x7``. Resolutions of an hour or more are then only the configured intervals
(computed ones would be UTC-aligned), and ``1D`` is the configured session ``1d``: its bars are
stamped with the trading day at 00:00 UTC, as TradingView expects daily bars (the candle's own
``timestamp`` is the session open), and ``from``/``to`` select by that time. Pre- and post-market
bars are in the intraday candles, outside the listed session; the chart may leave them out.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api.aggregates import CandleReader, CandleSource, ceil_to, source_for
from api.deps import Resources, ResourcesDep
from api.docs import openapi_parameters
from api.wire import ErrorBody
from speedlayer.config import Settings
from speedlayer.errors import ConfigError
from speedlayer.exchange_time import regular_hours
from speedlayer.intervals import DAY_MS, MINUTE_MS
from speedlayer.models import SYMBOL_RE
from speedlayer.symbols import canonical_symbol, market_of
from speedlayer.timeparse import MAX_MS, MIN_MS

TAG = "TradingView UDF"
EXCHANGE = "SPEEDLAYER"
# Resolutions offered beyond the configured intervals (computed from the 1-minute candles):
# TradingView's usual minute choices that the default intervals lack.
DERIVED_RESOLUTIONS_MIN = (2, 3, 10, 45, 180)
SEARCH_LIMIT = 30  # the UDF adapter asks for 30
RESOLUTION_PATTERN = r"^([1-9][0-9]{0,5}|([1-9][0-9]{0,3})?[SDWM])$"
_RESOLUTION_RE = re.compile(r"^(?:([1-9][0-9]{0,5})|([1-9][0-9]{0,3})?([SDWM]))\Z")
_INT_RE = re.compile(r"^-?[0-9]{1,4000}\Z")
MIN_S, MAX_S = -(-MIN_MS // 1000), MAX_MS // 1000  # the seconds whose ms are valid times

router = APIRouter(prefix="/udf", tags=[TAG])


class _BadRequest(Exception):
    pass


def _json(payload: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status, media_type="application/json")


def _udf_error(message: str, status: int = 400) -> Response:
    return _json({"s": "error", "errmsg": message}, status)


# -- resolutions ----------------------------------------------------------------------------------


def resolution_size_ms(resolution: str) -> int:
    """``"15"`` -> 15 minutes, ``"1D"``/``"D"`` -> a day; seconds, weeks, months: _BadRequest."""
    match = _RESOLUTION_RE.match(resolution)
    if match is None:
        raise _BadRequest(
            f"resolution {resolution!r} is invalid: expected minutes (e.g. 1, 15, 240) or 1D"
        )
    minutes, count, unit = match.groups()
    if minutes is not None:
        return int(minutes) * MINUTE_MS
    if unit == "D":
        return int(count or 1) * DAY_MS
    what = {"S": "seconds", "W": "weeks", "M": "months"}[unit]
    raise _BadRequest(f"resolution {resolution!r} is not supported: no {what}")


def resolution_name(size_ms: int) -> str:
    if size_ms % DAY_MS == 0:
        return f"{size_ms // DAY_MS}D"
    return str(size_ms // MINUTE_MS)


def supported_resolutions(settings: Settings) -> list[str]:
    sizes = {iv.interval_ms for iv in settings.interval_set}
    sizes |= {minutes * MINUTE_MS for minutes in DERIVED_RESOLUTIONS_MIN}
    return [resolution_name(s) for s in sorted(sizes) if source_for(settings, s) is not None]


def _source(settings: Settings, resolution: str) -> CandleSource:
    source = source_for(settings, resolution_size_ms(resolution))
    if source is None:
        derived = (
            "other minute counts below 60 (candles are exchange-aligned, so hours are served "
            "only as configured intervals)"
            if settings.interval_set.exchange is not None
            else "other minute counts"
        )
        raise _BadRequest(
            f"resolution {resolution!r} is not supported; supported: "
            f"{', '.join(supported_resolutions(settings))} (and {derived}, computed from the "
            "1-minute candles)"
        )
    return source


def first_start(source: CandleSource, t_ms: int) -> int:
    """The earliest stored bucket start whose bar time (``bar_time``) is at or after ``t_ms``."""
    stored = source.stored
    if stored is None or stored.frame == "utc":
        return ceil_to(t_ms, source.size_ms)
    if stored.frame == "wall" or stored.exchange is None:
        return t_ms  # the bar time is the bucket start
    return stored.exchange.day_start(ceil_to(t_ms, DAY_MS))


def bar_time(source: CandleSource, start_ms: int) -> int:
    """A bar's UDF time (ms): its bucket start, but for the session ``1d`` the trading day at
    00:00 UTC, as TradingView expects daily bars (not the session open)."""
    stored = source.stored
    if stored is None or stored.frame != "session" or stored.exchange is None:
        return start_ms
    return stored.exchange.local_day(start_ms)


# -- symbols --------------------------------------------------------------------------------------


def symbol_hours(settings: Settings, kind: str) -> tuple[str, str]:
    """(time zone, TradingView session) of a symbol of type ``kind``: the exchange's zone and
    regular hours (``0930-1600``) with exchange alignment, except crypto and forex, which trade
    around the clock (``Etc/UTC``, ``24x7``), as everything does with UTC alignment."""
    exchange = settings.interval_set.exchange
    if exchange is None or kind in ("crypto", "forex"):
        return "Etc/UTC", "24x7"
    try:
        opens, closes = regular_hours(exchange.calendar)
    except ConfigError:  # exchange_calendars missing: the trading hours are unknown
        return exchange.zone, "24x7"
    return exchange.zone, f"{opens:%H%M}-{closes:%H%M}"


def symbol_type(symbol: str) -> str:
    """A guess from the symbol's form, for display and search filters."""
    market = market_of(symbol)
    if market != "stocks":
        return market
    if symbol.startswith("I:"):
        return "index"
    if symbol.startswith("O:"):
        return "option"
    return "stock"


async def lookup(resources: Resources, name: str) -> str | None:
    """The stored symbol ``name`` (``AAPL``, ``SPEEDLAYER:AAPL`` as search results name it,
    ``X:BTCUSD`` for ``BTC-USD``) names, or None."""
    store = resources.store
    symbols = set(await store.symbols())
    if name in symbols:
        return name
    if name.startswith(EXCHANGE + ":"):
        name = name[len(EXCHANGE) + 1 :]
        if name in symbols:
            return name
    if SYMBOL_RE.match(name) is None:
        return None
    resolved = canonical_symbol(name)
    return resolved if resolved in symbols else None


def _pricescale(price: float | None) -> int:
    """Ticks for about five significant digits of ``price``, at least 0.01, at most 1e-8:
    AAPL at 187.15 -> 100, EUR/USD at 1.0812 -> 10,000, a token at 0.0052 -> 10,000,000."""
    if price is None or not price > 0:
        return 100
    decimals = min(8, max(2, 4 - math.floor(math.log10(price))))
    return int(10**decimals)


# -- wire models (OpenAPI) ------------------------------------------------------------------------


class UdfError(BaseModel):
    s: Literal["error"]
    errmsg: str = Field(examples=["unknown_symbol"])


class UdfExchange(BaseModel):
    value: str
    name: str
    desc: str


class UdfSymbolType(BaseModel):
    name: str
    value: str


class UdfConfig(BaseModel):
    supported_resolutions: list[str] = Field(examples=[["1", "5", "15", "60", "240"]])
    supports_group_request: bool = Field(description="false: symbols are resolved one by one")
    supports_search: bool
    supports_marks: bool
    supports_timescale_marks: bool
    supports_time: bool
    exchanges: list[UdfExchange]
    symbols_types: list[UdfSymbolType]


class UdfSymbolInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(examples=["AAPL"])
    ticker: str = Field(description="what /udf/history takes as symbol", examples=["AAPL"])
    description: str
    type: str = Field(examples=["stock"])
    session: str = Field(examples=["24x7"])
    exchange: str
    listed_exchange: str
    timezone: str = Field(examples=["Etc/UTC"])
    format: str = Field(examples=["price"])
    minmov: int
    pricescale: int
    has_intraday: bool
    has_daily: bool
    has_weekly_and_monthly: bool
    supported_resolutions: list[str]
    intraday_multipliers: list[str]
    volume_precision: int
    data_status: str


class UdfSearchItem(BaseModel):
    symbol: str
    full_name: str
    description: str
    exchange: str
    ticker: str
    type: str


class UdfHistory(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"s": "ok", "t": [1704205800, 1704206100], "o": [187.15, 187.3],
                 "h": [187.4, 187.5], "l": [187.0, 187.2], "c": [187.3, 187.45],
                 "v": [51234.0, 40210.0]},
                {"s": "no_data", "nextTime": 1704117600},
            ]
        }
    )  # fmt: skip

    s: Literal["ok", "no_data"]
    t: list[int] | None = Field(None, description="bar starts, Unix seconds, oldest first")
    o: list[float] | None = None
    h: list[float] | None = None
    l: list[float] | None = None  # noqa: E741 - the protocol's field name
    c: list[float] | None = None
    v: list[float] | None = None
    nextTime: int | None = Field(
        None,
        description="with no_data: the start (Unix s) of the newest bar before `from`, if any",
    )


class SymbolsQuery(BaseModel):
    symbol: str = Field(min_length=1, description="a symbol, `SPEEDLAYER:AAPL` or `AAPL`")


class SearchQuery(BaseModel):
    query: str = Field("", description="part of a symbol (case-insensitive)")
    type: str = Field("", description="a symbol type (stock, crypto, forex, ...); empty: all")
    exchange: str = Field("", description=f"empty or {EXCHANGE}")
    limit: int = Field(SEARCH_LIMIT, ge=1, description="at most this many results")


class HistoryQuery(BaseModel):
    symbol: str = Field(min_length=1, description="the symbol info's `ticker`")
    resolution: str = Field(
        description="minutes (1, 5, 15, 30, 60, 240, ...) or 1D (with a day interval)",
        json_schema_extra={"pattern": RESOLUTION_PATTERN},
    )
    from_: int = Field(
        alias="from", ge=MIN_S, le=MAX_S, description="Unix s: leftmost bar start, inclusive"
    )
    to: int = Field(ge=MIN_S, le=MAX_S, description="Unix s: rightmost bar start, exclusive")
    countback: int | None = Field(
        None,
        ge=1,
        description="the newest this many bars before `to` (then `from` is ignored)",
    )


def _text(params: Any, name: str, *, required: bool, default: str = "") -> str:
    value = params.get(name)
    if value is None:
        if required:
            raise _BadRequest(f"{name} is required")
        return default
    return str(value)


def _int(params: Any, name: str, *, required: bool, lo: int, hi: int | None = None) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise _BadRequest(f"{name} is required")
        return None
    if not _INT_RE.match(value) or int(value) < lo or (hi is not None and int(value) > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _BadRequest(f"{name} must be an integer {bounds}, got {value!r}")
    return int(value)


ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": UdfError, "description": "a bad parameter; `errmsg` says which"},
    503: {"model": ErrorBody, "description": "the store is unavailable"},
}


# -- routes ---------------------------------------------------------------------------------------


@router.get(
    "/config",
    response_model=UdfConfig,
    summary="UDF datafeed configuration",
    description="What the Charting Library's UDF adapter reads first: the supported "
    "resolutions (the configured intervals and a few computed from the 1-minute candles), "
    "symbol search on, group requests off, server time on, no marks.",
)
async def udf_config(resources: ResourcesDep) -> Response:
    return _json(
        {
            "supported_resolutions": supported_resolutions(resources.settings),
            "supports_group_request": False,
            "supports_search": True,
            "supports_marks": False,
            "supports_timescale_marks": False,
            "supports_time": True,
            "exchanges": [
                {"value": "", "name": "All Exchanges", "desc": ""},
                {"value": EXCHANGE, "name": EXCHANGE, "desc": "speedlayer candles"},
            ],
            "symbols_types": [
                {"name": "All types", "value": ""},
                *({"name": t, "value": t} for t in ("stock", "crypto", "forex", "index")),
            ],
        }
    )


@router.get(
    "/time",
    summary="Server time (UDF)",
    description="Unix seconds, as plain text.",
    response_class=Response,
    responses={
        200: {
            "description": "the server time",
            "content": {"text/plain": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
        }
    },
)
async def udf_time(resources: ResourcesDep) -> Response:
    return Response(str(resources.clock.now_ms() // 1000), media_type="text/plain")


@router.get(
    "/symbols",
    response_model=UdfSymbolInfo,
    responses={
        404: {"model": UdfError, "description": '`{"s": "error", "errmsg": "unknown_symbol"}`'},
        **ERRORS,
    },
    summary="Symbol information (UDF)",
    description="The symbol information of a stored symbol: 24x7 session in Etc/UTC (with "
    "exchange-aligned candles, stocks get the exchange's time zone and regular session, e.g. "
    "0930-1600 in America/New_York), the "
    "supported resolutions (all served directly, so `intraday_multipliers` lists them all), "
    "`pricescale` from the latest price. A symbol without unexpired candles is unknown.",
    openapi_extra={"parameters": openapi_parameters(SymbolsQuery)},
)
async def udf_symbols(request: Request, resources: ResourcesDep) -> Response:
    try:
        name = _text(request.query_params, "symbol", required=True)
    except _BadRequest as exc:
        return _udf_error(str(exc))
    symbol = await lookup(resources, name) if name else None
    if symbol is None:
        return _udf_error("unknown_symbol", 404)
    settings = resources.settings
    latest = None
    for interval in settings.interval_set:
        newest = await resources.store.query(symbol, interval, limit=1, order="desc")
        if newest:
            latest = newest[0].close
            break
    resolutions = supported_resolutions(settings)
    kind = symbol_type(symbol)
    timezone, session = symbol_hours(settings, kind)
    return _json(
        {
            "name": symbol,
            "ticker": symbol,
            "description": symbol,
            "type": kind,
            "session": session,
            "exchange": EXCHANGE,
            "listed_exchange": EXCHANGE,
            "timezone": timezone,
            "format": "price",
            "minmov": 1,
            "pricescale": _pricescale(latest),
            "has_intraday": True,
            "has_daily": any(r.endswith("D") for r in resolutions),
            "has_weekly_and_monthly": False,
            "supported_resolutions": resolutions,
            "intraday_multipliers": [r for r in resolutions if not r.endswith("D")],
            "volume_precision": 8 if kind == "crypto" else 0,
            "data_status": "streaming",
        }
    )


@router.get(
    "/search",
    response_model=list[UdfSearchItem],
    responses=ERRORS,
    summary="Symbol search (UDF)",
    description="Stored symbols containing `query` (case-insensitive; those starting with it "
    "first), filtered by `type` and `exchange`, at most `limit`.",
    openapi_extra={"parameters": openapi_parameters(SearchQuery)},
)
async def udf_search(request: Request, resources: ResourcesDep) -> Response:
    params = request.query_params
    try:
        query = _text(params, "query", required=False).upper()
        kind = _text(params, "type", required=False)
        exchange = _text(params, "exchange", required=False)
        limit = _int(params, "limit", required=False, lo=1) or SEARCH_LIMIT
    except _BadRequest as exc:
        return _udf_error(str(exc))
    if exchange and exchange != EXCHANGE:
        return _json([])
    matches = [
        s
        for s in await resources.store.symbols()
        if query in s.upper() and (not kind or symbol_type(s) == kind)
    ]
    matches.sort(key=lambda s: (not s.upper().startswith(query), s))
    return _json(
        [
            {
                "symbol": s,
                "full_name": f"{EXCHANGE}:{s}",
                "description": s,
                "exchange": EXCHANGE,
                "ticker": s,
                "type": symbol_type(s),
            }
            for s in matches[:limit]
        ]
    )


@router.get(
    "/history",
    response_model=UdfHistory,
    responses=ERRORS,
    summary="Bars (UDF)",
    description="Bars with start in [`from`, `to`) (Unix seconds; `to` exclusive), or with "
    "`countback` the newest `countback` bars before `to`; oldest first, the forming bar "
    "included, at most `SPEEDLAYER_MAX_PAGE` (the newest). Empty: `no_data` with `nextTime` "
    "(the newest bar before `from`, when there is one).",
    openapi_extra={"parameters": openapi_parameters(HistoryQuery)},
)
async def udf_history(request: Request, resources: ResourcesDep) -> Response:
    params = request.query_params
    settings = resources.settings
    try:
        name = _text(params, "symbol", required=True)
        resolution = _text(params, "resolution", required=True)
        from_s = _int(params, "from", required=True, lo=MIN_S, hi=MAX_S)
        to_s = _int(params, "to", required=True, lo=MIN_S, hi=MAX_S)
        countback = _int(params, "countback", required=False, lo=1)
        if not name:
            raise _BadRequest("symbol is required")
        source = _source(settings, resolution)
    except _BadRequest as exc:
        return _udf_error(str(exc))
    assert from_s is not None and to_s is not None
    # No look-up in the symbol list (the chart asks every few seconds): an unknown symbol simply
    # has no candles.
    if name.startswith(EXCHANGE + ":"):
        name = name[len(EXCHANGE) + 1 :]
    if SYMBOL_RE.match(name) is None:
        return _json({"s": "no_data"})
    symbol = canonical_symbol(name)
    reader = CandleReader(resources.store, source, symbol, resources.clock.now_ms())
    end = first_start(source, to_s * 1000)  # bars whose time is before `to`
    cap = settings.max_page
    if countback is not None:
        start = None
        candles = await reader.newest(None, end, min(countback, cap))
    else:
        start = first_start(source, from_s * 1000)  # bars whose time is at or after `from`
        candles = await reader.newest(start, end, cap) if start < end else []
    if not candles:
        before = await reader.newest_start_before(start) if start is not None else None
        if before is None:
            return _json({"s": "no_data"})
        return _json({"s": "no_data", "nextTime": bar_time(source, before) // 1000})
    return _json(
        {
            "s": "ok",
            "t": [bar_time(source, c.timestamp) // 1000 for c in candles],
            "o": [c.open for c in candles],
            "h": [c.high for c in candles],
            "l": [c.low for c in candles],
            "c": [c.close for c in candles],
            "v": [c.volume for c in candles],
        }
    )
