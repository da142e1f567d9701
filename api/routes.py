"""REST routes: candle ranges, latest candles, intervals, symbols, health, metrics, AsyncAPI."""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from starlette.convertors import Convertor, register_url_convertor

from api import docs
from api.deps import Resources, ResourcesDep
from api.metrics import Metrics, record_store_error
from api.wire import (
    CandleOut,
    CandlePage,
    ErrorBody,
    Health,
    IntervalList,
    LatestCandles,
    SymbolInfo,
    SymbolList,
)
from speedlayer.errors import ConfigError
from speedlayer.intervals import Interval
from speedlayer.models import Candle
from speedlayer.symbols import SYMBOL_PATTERN, explain, market_of, parse_symbol
from speedlayer.timeparse import MAX_MS, MIN_MS, parse_time_ms


class _TickerConvertor(Convertor[str]):
    """A path parameter that may span "/" but not be empty (``/candles/`` stays unmatched). Any
    character matches, line breaks included, so that a bad ticker gets the route's 422, never
    the router's 404."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("ticker", _TickerConvertor())
router = APIRouter()
Q = TypeVar("Q", bound="BaseModel")
INVALID: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorBody, "description": "a parameter is invalid; the message says which"},
}
UNAVAILABLE: dict[int | str, dict[str, object]] = {
    503: {"model": ErrorBody, "description": "the store is unavailable"},
}
ERRORS = {**INVALID, **UNAVAILABLE}
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "no candle for this symbol and interval"},
}
DEFAULT_LIMIT = 1000
MAX_TTL_S = 2**63 - 1  # "never expires", for an empty page
MAX_LATEST_SYMBOLS = 100  # symbols per GET /candles request
READY_TIMEOUT_S = 2.0
INTERVAL_DOC = "1m 5m 15m 30m 1h 2h 4h (or an alias: 15min, 60m, 1hour, ...)"


def _json(payload: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status, media_type="application/json")


def encode_cursor(interval: str, order: str, timestamp: int) -> str:
    raw = f"{interval}:{order}:{timestamp}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, interval: str, order: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        c_interval, c_order, ts = raw.split(":")
        timestamp = parse_time_ms(ts, "cursor", any_number=True)
        if not MIN_MS < timestamp < MAX_MS or not ts.lstrip("-").isdigit():
            raise ValueError(ts)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ConfigError(f"cursor {cursor!r} is not a cursor this API issued") from None
    if c_interval != interval or c_order != order:
        raise ConfigError(
            f"cursor was issued for interval={c_interval}&order={c_order}; "
            "repeat the other parameters of the first request"
        )
    return timestamp


class CandleRange(BaseModel):
    """The query of ``GET /candles/{symbol}``, validated in one pass.

    FastAPI validates declared query parameters one by one, about 40 µs a request here (a fifth
    of a 100-candle page's time, bench/rest.py); one model validation does the same checks with
    the same messages, and the parameters are documented from this model.
    """

    interval: str = Field("1m", description=INTERVAL_DOC)
    start: str | None = Field(
        None, description="inclusive; epoch ms or ISO 8601", examples=["2024-01-02"]
    )
    end: str | None = Field(None, description="exclusive; epoch ms or ISO 8601")
    limit: int | None = Field(None, ge=1, description="page size (default 1000)")
    order: Literal["asc", "desc"] = "asc"
    cursor: str | None = Field(None, description="next_cursor of the previous page")


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters (all optional) documenting ``model``'s fields."""
    schema = model.model_json_schema()
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": prop,
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema["properties"].items()
    ]


# What FastAPI would document for ``symbol: Annotated[str, Path(description=..., examples=...)]``
# (api/docs.py adds the ticker pattern).
SYMBOL_PATH_PARAMETER: dict[str, Any] = {
    "name": "symbol",
    "in": "path",
    "required": True,
    "schema": {
        "type": "string",
        "description": "ticker, e.g. AAPL",
        "examples": ["AAPL"],
        "title": "Symbol",
    },
    "description": "ticker, e.g. AAPL",
}


def parse_query(model: type[Q], request: Request) -> Q:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


@router.get("/intervals", response_model=IntervalList, summary="Configured intervals and retention")
async def get_intervals(resources: ResourcesDep) -> Response:
    return _json(
        {
            "intervals": [
                {
                    "name": iv.name,
                    "interval_ms": iv.interval_ms,
                    "retention_s": iv.retention_s,
                    "retention": f"{iv.retention_s / 86400:g}d",
                    "table": iv.table,
                }
                for iv in resources.settings.interval_set
            ]
        }
    )


@router.get("/symbols", response_model=SymbolList, responses=ERRORS, summary="Symbols with data")
async def get_symbols(resources: ResourcesDep) -> Response:
    return _json({"symbols": await resources.store.symbols()})


@router.get(
    "/symbols/{symbol:ticker}",
    response_model=SymbolInfo,
    responses=ERRORS,
    summary="How a ticker is read, and whether it has candles",
    description=(
        "The stored key a ticker names (docs/design.md#symbols: `X:BTCUSD`, `btc/usd` -> "
        "`BTC-USD`; `C:EURUSD`, `EUR-USD` -> `EUR/USD`; `aapl` -> `AAPL`), whether it has "
        "candles, and if not why (e.g. a mixed-case ticker, kept as written, whose other case has "
        "candles). Always 200 for a well-formed ticker."
    ),
)
async def get_symbol(
    resources: ResourcesDep,
    symbol: Annotated[
        str,
        Path(
            description="a ticker in any form",
            examples=["X:BTCUSD"],
            json_schema_extra={"pattern": SYMBOL_PATTERN},
        ),
    ],
) -> Response:
    parse_symbol(symbol)  # a malformed ticker is a 422
    key, stored, message = explain(symbol, set(await resources.store.symbols()))
    return _json(
        {"symbol": key, "given": symbol, "market": market_of(key), "stored": stored,
         "message": message}
    )  # fmt: skip


# Symbols may contain "/" (BRK/B, forex EUR/USD; uvicorn decodes %2F to "/" before routing): both
# routes take the rest of the path (the `ticker` convertor: one or more characters, mapped to the
# stored key by parse_symbol: X:BTCUSD -> BTC-USD, aapl -> AAPL, docs/design.md#symbols), and the
# /latest route is declared first so that ".../latest" is never read as part of a symbol.
@router.get(
    "/candles/{symbol:ticker}/latest",
    response_model=CandleOut,
    responses={200: {"description": "the newest candle"}, **NOT_FOUND, **ERRORS},
    summary="The newest candle of one symbol (the forming one if any)",
    description=(
        "The newest unexpired candle of `symbol` at `interval`: the one still forming while its "
        "bucket is open (`final: false`), else the last final one. Served from the live hub's "
        "cache when the API runs with the pipeline, else from the store. 404 when the symbol "
        "has no candle at this interval."
    ),
)
async def get_latest(
    resources: ResourcesDep,
    symbol: Annotated[str, Path(description="ticker, e.g. AAPL", examples=["AAPL"])],
    interval: Annotated[str, Query(description=INTERVAL_DOC)] = "1m",
) -> Response:
    given, symbol = symbol, parse_symbol(symbol)
    iv = resources.settings.interval_set.get(interval)
    candle = await latest_candle(resources, symbol, iv)
    if candle is None:
        message = f"no candle for {symbol} at interval {iv.name}"
        _, stored, why = explain(given, set(await resources.store.symbols()))
        return _json(
            {"error": "not_found", "message": message if stored else f"{message}; {why}"},
            status=404,
        )
    return _json(candle)


@router.get(
    "/candles/{symbol:ticker}",
    response_model=CandlePage,
    responses=ERRORS,
    summary="Candles of one symbol over a time range",
    description=(
        "Stored, unexpired candles with `start <= timestamp < end` (bucket starts), oldest first "
        "by default. Pages hold `limit` candles; follow `next_cursor` until it is null. A ticker "
        "with a slash (`BRK/B`, forex `EUR/USD`) goes into the path as it is or as `%2F`."
    ),
    openapi_extra={"parameters": [SYMBOL_PATH_PARAMETER, *query_parameters(CandleRange)]},
)
async def get_candles(request: Request) -> Response:
    # Parameters and resources are read from the request, not declared: FastAPI's dependency
    # solving would cost more than serving a cached page (bench/rest.py); the OpenAPI
    # parameters are documented above instead.
    resources: Resources = request.app.state.resources
    symbol: str = request.path_params["symbol"]
    query = parse_query(CandleRange, request)
    interval, start, end, limit, order, cursor = (
        query.interval, query.start, query.end, query.limit, query.order, query.cursor
    )  # fmt: skip
    settings = resources.settings
    symbol = parse_symbol(symbol)
    iv = settings.interval_set.get(interval)
    start_ms = parse_time_ms(start, "start") if start is not None else None
    end_ms = parse_time_ms(end, "end") if end is not None else None
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise ConfigError("end is before start")
    if limit is not None and limit > settings.max_page:
        raise ConfigError(f"limit {limit} is above the maximum page size {settings.max_page}")
    page = limit or min(DEFAULT_LIMIT, settings.max_page)
    if cursor is not None:
        after = decode_cursor(cursor, iv.name, order)
        if order == "asc":
            start_ms = after + 1 if start_ms is None else max(start_ms, after + 1)
        else:
            end_ms = after if end_ms is None else min(end_ms, after)
    store, pages = resources.store, resources.pages
    # The page cache (api/page_cache.py): the data version is read before the query, so a write
    # racing the query leaves an entry that the next request finds stale.
    version = store.data_version() if pages.enabled else None
    key = (symbol, iv.name, start_ms, end_ms, page, order)
    if version is not None:
        body = pages.get(key, version, store.now_s())
        if body is not None:
            return Response(body, media_type="application/json")
    candles = await store.query(symbol, iv, start_ms, end_ms, page + 1, order)
    # the page changes when any candle read for it expires (the one past the page decides
    # next_cursor)
    valid_until = min([c.ttl for c in candles], default=MAX_TTL_S)
    next_cursor = None
    if len(candles) > page:
        candles = candles[:page]
        next_cursor = encode_cursor(iv.name, order, candles[-1].timestamp)
    body = msgspec.json.encode(
        {"symbol": symbol, "interval": iv.name, "candles": candles, "next_cursor": next_cursor}
    )
    if version is not None:  # from now on (the query's clock read is not later than this one)
        pages.put(key, version, store.now_s(), valid_until, body)
    return Response(body, media_type="application/json")


@router.get(
    "/candles",
    response_model=LatestCandles,
    responses={200: {"description": "the newest candle of each symbol"}, **ERRORS},
    summary="The newest candle of several symbols in one call",
    description=(
        "Like `/candles/{symbol}/latest` for each of `symbols` (comma-separated, at most "
        f"{MAX_LATEST_SYMBOLS}; duplicates are served once). Symbols without a candle at this "
        "interval are listed in `missing`."
    ),
)
async def get_latest_many(
    resources: ResourcesDep,
    symbols: Annotated[
        str,
        Query(
            description=f"comma-separated tickers, at most {MAX_LATEST_SYMBOLS}",
            examples=["AAPL,MSFT"],
            json_schema_extra={"pattern": docs.symbols_pattern(MAX_LATEST_SYMBOLS)},
        ),
    ],
    interval: Annotated[str, Query(description=INTERVAL_DOC)] = "1m",
) -> Response:
    names = symbols.split(",")
    if len(names) > MAX_LATEST_SYMBOLS:
        raise ConfigError(
            f"symbols: at most {MAX_LATEST_SYMBOLS} symbols per request (got {len(names)})"
        )
    iv = resources.settings.interval_set.get(interval)
    unique = list(dict.fromkeys(parse_symbol(name, "symbols:") for name in names))
    found = await asyncio.gather(*(latest_candle(resources, name, iv) for name in unique))
    return _json(
        {
            "interval": iv.name,
            "candles": [c for c in found if c is not None],
            "missing": [name for name, c in zip(unique, found, strict=True) if c is None],
        }
    )


async def latest_candle(resources: Resources, symbol: str, iv: Interval) -> Candle | None:
    """The newer of the live hub's cached candle and the store's newest (by timestamp, then
    revision); expired candles are never returned."""
    stored = await resources.store.query(symbol, iv, limit=1, order="desc")
    best = stored[0] if stored else None
    cached = resources.hub.latest(symbol, iv.name)
    now_s = resources.clock.now_ms() // 1000
    if (
        cached is not None
        and cached.ttl > now_s
        and (best is None or (cached.timestamp, cached.revision) > (best.timestamp, best.revision))
    ):
        best = cached
    return best


@router.get(
    "/healthz",
    response_model=Health,
    summary="The process is up",
    description="Liveness only: 200 while the process serves HTTP; never touches the store.",
)
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Health,
    responses={
        200: {"content": {"application/json": {"example": {"status": "ready"}}}},
        503: {
            "model": ErrorBody,
            "description": "the store (or the bus, when one is configured) does not answer, or "
            "a part of the service reports a problem (the live feed's bus subscription, the "
            "in-process pipeline, the feed); the message lists every problem",
            "content": {
                "application/json": {
                    "example": {
                        "error": "not_ready",
                        "message": "store: unreachable (SQLite read failed: disk I/O error)",
                    }
                }
            },
        },
    },
    summary="The store (and the bus, if any) answer and no part reports a problem",
    description=(
        f"Readiness: the store answers a query and, when the API has a bus, the bus answers, "
        f"each within {READY_TIMEOUT_S:g} s; and no part of the service (the live hub, the "
        "in-process pipeline, the feed) reports a problem."
    ),
)
async def readyz(request: Request, resources: ResourcesDep) -> Response:
    problems = []
    store_problem = await _probe(resources.store.ping)
    if store_problem:
        record_store_error(request.app)
        problems.append(f"store: {store_problem}")
    bus = resources.bus
    if bus is not None:
        bus_problem = await _probe(bus.ping)
        if bus_problem:
            problems.append(f"bus: {bus_problem}")
    problems.extend(resources.health_problems())
    if problems:
        return _json({"error": "not_ready", "message": "; ".join(problems)}, status=503)
    return _json({"status": "ready"})


async def _probe(ping: Any) -> str | None:
    """None when ``await ping()`` succeeds in time, else what went wrong."""
    try:
        result = ping()
        if inspect.isawaitable(result):
            await asyncio.wait_for(result, READY_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_S:g} s"
    except Exception as exc:  # any failure of the probe means "not ready", never a 500
        return f"unreachable ({exc})"
    return None


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description=(
        "Prometheus text exposition format 0.0.4 (OpenMetrics when the Accept header asks for "
        "it): HTTP requests by route template/method/status and latency by route, live "
        "subscribers, slow consumers dropped, messages delivered, pipeline bars in / candles "
        "out, feed lag, store errors, readiness of the service's parts (`speedlayer_ready`)."
    ),
    response_class=Response,
    responses={
        200: {
            "description": "the metrics",
            "content": {
                "text/plain": {
                    "schema": {"type": "string"},
                    "example": 'speedlayer_http_requests_total{method="GET",'
                    'route="/candles/{symbol}",status="200"} 42.0\n',
                },
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        }
    },
)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    body, content_type = registry.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


@router.get(
    docs.ASYNCAPI_PATH,
    summary="AsyncAPI document of the WebSocket and SSE feeds",
    description="AsyncAPI 3.0: `/ws` client and server messages, `/stream/candles` events.",
    responses={
        200: {
            "description": "the AsyncAPI document",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def asyncapi(request: Request, resources: ResourcesDep) -> Response:
    secure = request.url.scheme in ("https", "wss")
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return _json(docs.asyncapi_document(resources.settings, host, secure))
