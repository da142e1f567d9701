"""Polygon-compatible aggregates, served from the speed layer's candles.

``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}`` answers the way
Polygon's (Massive's) REST aggregates endpoint does (docs/polygon.md#rest-aggregates, and the
simulator's ``ingest/simulator/rest.py``), so Polygon clients work against it unchanged, the
official ``massive.RESTClient(api_key=..., base="http://host:port")`` included:

- query ``adjusted`` (true|false, accepted; the results are never split-adjusted, so the answer
  says ``"adjusted": false``), ``sort`` (asc|desc), ``limit`` (default 5000, capped at 50000: the
  1-minute bars read for one page, Polygon's "base aggregates"; a page holds whole buckets only,
  at least one), ``cursor`` (from ``next_url``), ``apiKey`` (taken by the API-key check,
  api/security.py, like ``api_key``; so is ``Authorization: Bearer``, which the official client
  sends);
- the answer ``ticker``, ``queryCount`` (1-minute bars used), ``resultsCount``, ``adjusted``,
  ``results`` (absent when empty) of ``{v, vw, o, c, h, l, t, n}`` (``vw``/``n`` absent when
  unknown), ``status`` (``OK``, or ``DELAYED`` when the feed is Polygon's delayed one),
  ``request_id``, ``next_url`` (only when there is more: ``from`` (``to`` for ``sort=desc``) moved
  past the page, plus an opaque ``cursor``), and ``message`` when the range reaches back beyond
  what the retention keeps;
- errors: 400 ``{"status": "ERROR", "request_id", "error"}`` for a bad parameter; with API keys
  on, 401 in the same shape (``API Key was not provided`` / ``Unknown API Key``).

Sizes: ``minute`` and ``hour`` multiples that are a configured interval read its table; other
multiples up to 50,000 minutes are computed from the 1-minute table (api/aggregates.py). ``day``
multiples only when an interval of a day or more is configured (``SPEEDLAYER_INTERVALS``);
``second``, ``week``, ``month``, ``quarter`` and ``year`` never. ``from``/``to`` are Unix
milliseconds or ``YYYY-MM-DD`` (a whole UTC day, inclusive); ``from`` snaps back to the start of
its bucket and ``to`` forward to the end of its bucket. Buckets start at multiples of the size
since the Unix epoch (UTC). The forming (not yet final) bucket is included, as Polygon includes
the current bar.

With exchange-aligned candles (``SPEEDLAYER_CANDLE_ALIGNMENT=exchange``,
docs/design.md#exchange-time-candles) the configured intervals of an hour or more are on the
exchange's clock (1h buckets at 09:30, 10:30, ... New York) and ``1/day`` is the configured
session ``1d``: one bar per trading day, ``t`` its session open (09:30 New York; Polygon's own day
bars are stamped at midnight Eastern), regular-hours bars only. Sizes of an hour or more that are
not configured intervals are refused with a 400 saying so (buckets computed from the 1-minute
candles would be UTC-aligned); minute sizes below an hour are computed as before. ``from``
snaps back to the start of its bucket (a time outside every session stays as given) and ``to``
forward to the end of its bucket (the session's close).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import msgspec
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

import api.routes  # noqa: F401  (registers the `ticker` path convertor used below)
from api.aggregates import (
    MAX_DERIVED_MINUTES,
    CandleReader,
    CandleSource,
    floor_to,
    source_for,
)
from api.deps import ResourcesDep
from api.docs import openapi_parameters
from api.security import KeyCheck
from api.wire import ErrorBody
from speedlayer.config import Settings
from speedlayer.intervals import DAY_MS, HOUR_MS, MINUTE_MS, NO_BUCKET
from speedlayer.models import SYMBOL_RE, Candle
from speedlayer.symbols import SYMBOL_PATTERN, canonical_symbol

TAG = "Polygon-compatible"
PATH_PREFIX = "/v2/aggs/"
DEFAULT_LIMIT = 5000
MAX_LIMIT = 50_000
TIMESPANS = ("second", "minute", "hour", "day", "week", "month", "quarter", "year")
_UNIT_MS = {"minute": MINUTE_MS, "hour": HOUR_MS, "day": DAY_MS}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
BOUND_PATTERN = r"^([0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{1,16})$"
TICKER_PATTERN = SYMBOL_PATTERN  # SYMBOL_RE as a JSON-schema pattern

router = APIRouter(tags=[TAG])


class _BadRequest(Exception):
    pass


def _request_id() -> str:
    return uuid.uuid4().hex


def error_body(message: str) -> bytes:
    return msgspec.json.encode({"status": "ERROR", "request_id": _request_id(), "error": message})


def _error(status: int, message: str) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json")


def auth_rejection(outcome: KeyCheck) -> tuple[int, bytes]:
    """What the API-key check answers on these paths: Polygon's 401 bodies."""
    if outcome is KeyCheck.MISSING:
        return 401, error_body("API Key was not provided")
    return 401, error_body("Unknown API Key")


def polygon_status(settings: Settings) -> str:
    """``DELAYED`` when the live feed is Polygon's 15-minute delayed one, as Polygon says for a
    delayed plan; else ``OK``."""
    host = urlsplit(settings.polygon_ws_url).hostname or ""
    return "DELAYED" if settings.live_source == "polygon" and "delayed" in host else "OK"


# -- wire models (OpenAPI) ------------------------------------------------------------------------


class PolygonAgg(BaseModel):
    v: float = Field(description="volume: sum of the 1-minute volumes")
    vw: float | None = Field(
        None,
        description="VWAP: sum(vw*v)/sum(v) over the 1-minute bars with a VWAP (absent when none "
        "has one); not rounded",
    )
    o: float = Field(description="open of the earliest 1-minute bar")
    c: float = Field(description="close of the latest 1-minute bar")
    h: float
    l: float  # noqa: E741 - Polygon's field name
    t: int = Field(
        description="bucket start, Unix ms (UTC; epoch-aligned, or with exchange alignment on "
        "the exchange's clock, the session open for day bars)"
    )
    n: int | None = Field(
        None, description="number of transactions (absent when no bar carried one)"
    )


class PolygonAggs(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ticker": "AAPL", "queryCount": 2, "resultsCount": 2, "adjusted": False,
                    "results": [
                        {"v": 8100, "vw": 187.0712, "o": 187.02, "c": 187.11, "h": 187.2,
                         "l": 186.96, "t": 1704205800000, "n": 93},
                        {"v": 6020, "vw": 187.1441, "o": 187.11, "c": 187.18, "h": 187.25,
                         "l": 187.05, "t": 1704205860000, "n": 71},
                    ],
                    "status": "OK", "request_id": "5b2c0d1e8f3a4c6b9d7e0f1a2b3c4d5e",
                    "next_url": "http://127.0.0.1:8000/v2/aggs/ticker/AAPL/range/1/minute/"
                    "1704205920000/1704207599999?cursor=eyJsaW1pdCI6Miwic29ydCI6ImFzYyJ9",
                }
            ]
        }
    )  # fmt: skip

    ticker: str = Field(description="the ticker as requested")
    queryCount: int = Field(description="1-minute bars used for this page")
    resultsCount: int = Field(description="results in this page")
    adjusted: bool = Field(description="always false: the candles are not split-adjusted")
    results: list[PolygonAgg] | None = Field(None, description="absent when there is none")
    status: Literal["OK", "DELAYED"]
    request_id: str
    next_url: str | None = Field(
        None,
        description="present when there is more: the next page (the API key is not in it: "
        "send it again)",
    )
    message: str | None = Field(
        None,
        description="present when the range starts before the oldest bucket the retention "
        "keeps: what is not available and why",
    )


class PolygonError(BaseModel):
    status: Literal["ERROR"]
    request_id: str
    error: str = Field(examples=["timespan 'week' is not supported: ..."])


class AggsPath(BaseModel):
    """The path parameters (documentation; parsed by ``_aggregates``)."""

    ticker: str = Field(
        description="the ticker, e.g. AAPL; `X:BTCUSD`/`C:EURUSD` also name the symbols stored "
        "as `BTC-USD`/`EUR/USD`",
        examples=["AAPL"],
        json_schema_extra={"pattern": TICKER_PATTERN},
    )
    multiplier: int = Field(ge=1, description="bucket size in timespans", examples=[5])
    timespan: Literal["second", "minute", "hour", "day", "week", "month", "quarter", "year"] = (
        Field(description="the unit; second, week, month, quarter and year are not served")
    )
    from_: str = Field(
        alias="from",
        description="Unix ms, or YYYY-MM-DD (from 00:00 UTC); snapped back to its bucket's start",
        examples=["2024-01-02"],
        json_schema_extra={"pattern": BOUND_PATTERN},
    )
    to: str = Field(
        description="Unix ms, or YYYY-MM-DD (to 24:00 UTC); inclusive, snapped forward to its "
        "bucket's end",
        examples=["2024-01-02"],
        json_schema_extra={"pattern": BOUND_PATTERN},
    )


class AggsQuery(BaseModel):
    """The query parameters (documentation; parsed by ``_options``)."""

    adjusted: bool = Field(
        True, description="accepted for compatibility; the results are never split-adjusted"
    )
    sort: Literal["asc", "desc"] = Field("asc", description="by bucket start")
    limit: int = Field(
        DEFAULT_LIMIT,
        ge=1,
        description=f"1-minute bars read for one page (Polygon's base aggregates); values above "
        f"{MAX_LIMIT} are capped. A page holds whole buckets, at least one",
    )
    cursor: str | None = Field(None, description="from next_url (opaque)")
    apiKey: str | None = Field(
        None,
        description="the API key (when SPEEDLAYER_API_KEYS is set); the header X-API-Key or "
        "Authorization: Bearer also work",
    )


# -- parameters -----------------------------------------------------------------------------------


def _positive_int(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise _BadRequest(f"{name} must be a positive integer, got {text!r}")
    return int(text)


def _options(params: Any) -> tuple[int, Literal["asc", "desc"]]:
    adjusted = params.get("adjusted", "true")
    if adjusted not in ("true", "false"):
        raise _BadRequest(f"adjusted must be true or false, got {adjusted!r}")
    sort = params.get("sort", "asc")
    if sort not in ("asc", "desc"):
        raise _BadRequest(f"sort must be asc or desc, got {sort!r}")
    limit_text = params.get("limit")
    limit = DEFAULT_LIMIT if limit_text is None else _positive_int(limit_text, "limit")
    return min(limit, MAX_LIMIT), sort


def _encode_cursor(limit: int, sort: str) -> str:
    raw = orjson.dumps({"limit": limit, "sort": sort})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, Literal["asc", "desc"]]:
    try:
        state = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        limit, sort = state["limit"], state["sort"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _BadRequest("invalid cursor: pass the one next_url carries") from None
    if not (isinstance(limit, int) and 1 <= limit <= MAX_LIMIT) or sort not in ("asc", "desc"):
        raise _BadRequest("invalid cursor: pass the one next_url carries")
    return limit, sort


def _bound(text: str, name: str, *, end: bool) -> int:
    """Unix ms, or ``YYYY-MM-DD``: the UTC day's first ms (its last one for ``to``)."""
    if text.isascii() and text.isdigit():
        if len(text) > 16:
            raise _BadRequest(f"{name} {text!r} is out of range for Unix milliseconds")
        return int(text)
    if _DATE_RE.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise _BadRequest(f"{name} {text!r} is not a valid date") from None
        start = (day.toordinal() - _EPOCH_ORDINAL) * DAY_MS
        return start + DAY_MS - 1 if end else start
    raise _BadRequest(
        f"{name} {text!r} must be a date (YYYY-MM-DD, a whole UTC day) or Unix milliseconds"
    )


def supported_sizes(settings: Settings) -> str:
    """What this server serves, for error messages."""
    stored = ", ".join(iv.name for iv in settings.interval_set)
    days = any(iv.interval_ms >= DAY_MS for iv in settings.interval_set)
    if settings.interval_set.exchange is not None:
        return (
            f"the stored intervals {stored} (exchange-aligned), and other minute multiples "
            "below an hour computed from the 1-minute candles"
        )
    return (
        f"minute and hour multiples{', and day multiples' if days else ''} up to "
        f"{MAX_DERIVED_MINUTES} minutes (stored intervals {stored}; other sizes are computed "
        "from the 1-minute candles)"
    )


def _source(settings: Settings, multiplier: int, timespan: str) -> CandleSource:
    if timespan not in TIMESPANS:
        raise _BadRequest(
            f"timespan {timespan!r} is invalid; expected one of {', '.join(TIMESPANS)}"
        )
    unit = _UNIT_MS.get(timespan)
    source = source_for(settings, multiplier * unit) if unit is not None else None
    if source is not None:
        return source
    if timespan == "day" and not any(iv.interval_ms >= DAY_MS for iv in settings.interval_set):
        why = "day buckets are served only when an interval of a day is configured "
        why += "(SPEEDLAYER_INTERVALS, e.g. 1d)"
    elif unit is None:
        why = f"timespan {timespan!r} is not supported"
    elif settings.interval_set.exchange is not None and multiplier * unit >= HOUR_MS:
        why = (
            f"{multiplier}/{timespan} is not a configured interval; with exchange-aligned "
            "candles (SPEEDLAYER_CANDLE_ALIGNMENT=exchange) sizes of an hour or more are served "
            "only from configured intervals (SPEEDLAYER_INTERVALS), as buckets computed from "
            "the 1-minute candles would be UTC-aligned"
        )
    else:
        why = f"{multiplier}/{timespan} is longer than {MAX_DERIVED_MINUTES} minutes"
    raise _BadRequest(f"{why}; supported: {supported_sizes(settings)}")


def _span(source: CandleSource, from_ms: int, to_ms: int) -> tuple[int, int]:
    """[start, end) of the buckets the range touches: ``from`` snapped back to its bucket's
    start, ``to`` forward to its bucket's end (for a session interval, a time outside every
    session is kept as it is)."""
    stored = source.stored
    if stored is None or stored.utc_aligned:
        size = source.size_ms
        return floor_to(from_ms, size), floor_to(to_ms, size) + size
    first, last = stored.bucket_start(from_ms), stored.bucket_start(to_ms)
    start = from_ms if first == NO_BUCKET else first
    end = to_ms + 1 if last == NO_BUCKET else stored.bucket_end(last)
    return start, end


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def _result(candle: Candle) -> dict[str, object]:
    out: dict[str, object] = {"v": _number(candle.volume)}
    if candle.vwap is not None:
        out["vw"] = candle.vwap
    out.update(o=candle.open, c=candle.close, h=candle.high, l=candle.low, t=candle.timestamp)
    if candle.trades is not None:
        out["n"] = candle.trades
    return out


def _iso(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the route ------------------------------------------------------------------------------------


@router.get(
    "/v2/aggs/ticker/{ticker:ticker}/range/{multiplier}/{timespan}/{from}/{to:ticker}",
    response_model=PolygonAggs,
    responses={
        400: {"model": PolygonError, "description": "a bad parameter; `error` says which"},
        401: {
            "model": PolygonError,
            "description": "(with API keys on) no key, or an unknown one",
        },
        503: {"model": ErrorBody, "description": "the store is unavailable"},
    },
    summary="Aggregate bars (Polygon's REST aggregates endpoint)",
    description=(
        "Polygon's `GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}`, "
        "served from the speed layer: Polygon clients (e.g. "
        '`massive.RESTClient(api_key=..., base="http://host:port")`) work unchanged. '
        "`minute`/`hour` multiples that are a configured interval read its table; others up to "
        f"{MAX_DERIVED_MINUTES} minutes are computed from the 1-minute candles while these are "
        "kept; `day` only when a day interval is configured; `second`, `week`, `month`, "
        "`quarter`, `year`: 400. `from`/`to`: Unix ms or `YYYY-MM-DD` (a whole UTC day), "
        "inclusive, snapped to whole buckets. Buckets are epoch-aligned in UTC; with "
        "`SPEEDLAYER_CANDLE_ALIGNMENT=exchange`, configured intervals of an hour or more are on "
        "the exchange's clock (09:30, 10:30, ... New York), `1/day` is the exchange's regular "
        "session (`t`: the session open) and other sizes of an hour or more are 400. The "
        "forming bucket is included. Not split-adjusted (`adjusted` is accepted, the answer says "
        "false). `limit` counts 1-minute bars per page; follow `next_url`. A range reaching "
        "back beyond the retention gets what is kept plus a `message`."
    ),
    openapi_extra={
        "parameters": openapi_parameters(AggsPath, "path") + openapi_parameters(AggsQuery)
    },
)
async def aggregates(request: Request, resources: ResourcesDep) -> Response:
    # The path parameters are read here, not declared: every value gets Polygon's 400, never
    # FastAPI's 422 (they are documented by AggsPath).
    path = request.path_params
    try:
        body = await _aggregates(
            request, resources, path["ticker"], path["multiplier"], path["timespan"],
            path["from"], path["to"],
        )  # fmt: skip
    except _BadRequest as exc:
        return _error(400, str(exc))
    return Response(msgspec.json.encode(body), media_type="application/json")


async def _aggregates(
    request: Request,
    resources: ResourcesDep,
    ticker: str,
    multiplier_text: str,
    timespan: str,
    from_text: str,
    to_text: str,
) -> dict[str, object]:
    settings = resources.settings
    params = request.query_params
    cursor = params.get("cursor")
    limit, sort = _decode_cursor(cursor) if cursor is not None else _options(params)
    if SYMBOL_RE.match(ticker) is None:
        raise _BadRequest(f"ticker {ticker!r} is not a valid ticker")
    multiplier = _positive_int(multiplier_text, "multiplier")
    source = _source(settings, multiplier, timespan)
    from_ms = _bound(from_text, "from", end=False)
    to_ms = _bound(to_text, "to", end=True)
    start, end = _span(source, from_ms, to_ms)

    now_ms = resources.clock.now_ms()
    symbol = canonical_symbol(ticker)  # X:BTCUSD -> BTC-USD, docs/design.md#symbols
    page = await CandleReader(resources.store, source, symbol, now_ms).page(start, end, sort, limit)
    body: dict[str, object] = {
        "ticker": ticker,
        "queryCount": page.bars,
        "resultsCount": len(page.candles),
        "adjusted": False,
    }
    if page.candles:
        body["results"] = [_result(candle) for candle in page.candles]
    body["status"] = polygon_status(settings)
    body["request_id"] = _request_id()
    horizon = source.horizon_ms(now_ms)
    if start < horizon and start < end:
        kept = f"{source.retention_s / 86_400:g} days"
        what = (
            f"{source.name} buckets are computed from the 1-minute candles, which are kept for "
            f"{kept}"
            if source.derived
            else f"{source.name} candles are kept for {kept}"
        )
        body["message"] = f"{what}: buckets before {_iso(horizon)} are not available"
    if page.more:
        last = page.candles[-1].timestamp
        if sort == "asc":
            after = source.stored.bucket_end(last) if source.stored else last + source.size_ms
            next_from, next_to = str(after), to_text
        else:
            next_from, next_to = from_text, str(last - 1)
        base = str(request.base_url).rstrip("/")
        body["next_url"] = (
            f"{base}/v2/aggs/ticker/{quote(ticker, safe=':')}/range/{multiplier}/{timespan}/"
            f"{next_from}/{quote(next_to)}?cursor={_encode_cursor(limit, sort)}"
        )
    return body
