"""REST routes: candle ranges, intervals, symbols, health."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

import msgspec
from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from api.deps import ResourcesDep
from api.wire import CandlePage, ErrorBody, Health, IntervalList, SymbolList
from speedlayer.errors import ConfigError, StoreError
from speedlayer.models import SYMBOL_RE
from speedlayer.timeparse import MAX_MS, MIN_MS, parse_time_ms

router = APIRouter()
ERRORS: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorBody, "description": "a parameter is invalid; the message says which"},
    503: {"model": ErrorBody, "description": "the store is unavailable"},
}
DEFAULT_LIMIT = 1000


def _json(payload: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status, media_type="application/json")


def encode_cursor(interval: str, order: str, timestamp: int) -> str:
    raw = f"{interval}:{order}:{timestamp}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, interval: str, order: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        c_interval, c_order, ts = raw.split(":")
        timestamp = parse_time_ms(ts, "cursor")
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


@router.get(
    "/candles/{symbol}",
    response_model=CandlePage,
    responses=ERRORS,
    summary="Candles of one symbol over a time range",
    description=(
        "Stored, unexpired candles with `start <= timestamp < end` (bucket starts), oldest first "
        "by default. Pages hold `limit` candles; follow `next_cursor` until it is null."
    ),
)
async def get_candles(
    resources: ResourcesDep,
    symbol: Annotated[str, Path(description="ticker, e.g. AAPL", examples=["AAPL"])],
    interval: Annotated[str, Query(description="1m 5m 15m 30m 1h 2h 4h (or an alias)")] = "1m",
    start: Annotated[
        str | None, Query(description="inclusive; epoch ms or ISO 8601", examples=["2024-01-02"])
    ] = None,
    end: Annotated[str | None, Query(description="exclusive; epoch ms or ISO 8601")] = None,
    limit: Annotated[int | None, Query(ge=1, description="page size (default 1000)")] = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    settings = resources.settings
    if SYMBOL_RE.match(symbol) is None:
        raise ConfigError(f"symbol {symbol!r} is not a valid ticker")
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
    candles = await resources.store.query(symbol, iv, start_ms, end_ms, page + 1, order)
    next_cursor = None
    if len(candles) > page:
        candles = candles[:page]
        next_cursor = encode_cursor(iv.name, order, candles[-1].timestamp)
    return _json(
        {"symbol": symbol, "interval": iv.name, "candles": candles, "next_cursor": next_cursor}
    )


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


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get("/readyz", response_model=Health, responses=ERRORS, summary="The store answers queries")
async def readyz(resources: ResourcesDep) -> Response:
    try:
        await resources.store.ping()
    except StoreError as exc:
        return _json({"error": "not_ready", "message": str(exc)}, status=503)
    return _json({"status": "ready"})
