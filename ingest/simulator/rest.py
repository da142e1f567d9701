"""The simulator's REST aggregates endpoint, as a pure function of a request and the bar store.

``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}`` with Polygon's query
parameters (``adjusted``, ``sort``, ``limit``, ``apiKey``), response shape, pagination
(``next_url`` with an opaque ``cursor``) and error bodies; see docs/polygon.md#rest-aggregates.

- ``minute`` and ``hour`` timespans with any multiplier; buckets are epoch-aligned
  (``floor(t / size) * size``) and built from the stored 1-minute bars.
- ``from``/``to`` are epoch ms or ``YYYY-MM-DD`` (a whole US Eastern day); ``from`` snaps back to
  the start of its bucket, ``to`` forward to the end of its bucket (inclusive).
- ``limit`` (default 5000, max 50000) caps the 1-minute bars read for one page; a page holds
  whole buckets only (at least one), and ``next_url`` continues after the last one.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from urllib.parse import parse_qs, quote, unquote

import orjson

from ingest.simulator.data import EASTERN, BarStore
from speedlayer.models import MINUTE_MS, Bar

_PATH_RE = re.compile(r"^/v2/aggs/ticker/([^/]+)/range/([^/]+)/([^/]+)/([^/]+)/([^/]+)/?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNIT_MS = {"minute": MINUTE_MS, "hour": 60 * MINUTE_MS}
_POLYGON_TIMESPANS = ("second", "minute", "hour", "day", "week", "month", "quarter", "year")
DEFAULT_LIMIT = 5000
MAX_LIMIT = 50_000

Json = dict[str, object]


class _BadRequest(Exception):
    pass


def _request_id() -> str:
    return uuid.uuid4().hex


def error_body(status: int, message: str) -> Json:
    """Polygon's error bodies: ``ERROR`` with ``error``, ``NOT_FOUND``/``NOT_AUTHORIZED`` with
    ``message``."""
    if status == 404:
        return {"status": "NOT_FOUND", "request_id": _request_id(), "message": message}
    if status == 403:
        return {"status": "NOT_AUTHORIZED", "request_id": _request_id(), "message": message}
    return {"status": "ERROR", "request_id": _request_id(), "error": message}


class RestApi:
    """Answers REST requests from ``store``.

    ``resolve`` maps a REST ticker (``AAPL``, ``X:BTCUSD``, ``C:EURUSD``) to the stored symbol,
    or None when unknown. ``api_key`` None accepts any non-empty key.
    """

    def __init__(
        self, store: BarStore, resolve: Callable[[str], str | None], api_key: str | None
    ) -> None:
        self.store = store
        self.resolve = resolve
        self.api_key = api_key

    def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], base_url: str
    ) -> tuple[int, Json]:
        """(HTTP status, JSON body) for one request. ``headers`` keys are lower case;
        ``base_url`` (``http://host:port``) prefixes ``next_url``."""
        match = _PATH_RE.match(path)
        if match is None:
            return 404, error_body(404, "Not found")
        if method != "GET":
            return 405, error_body(405, f"Method {method} not allowed")
        params = parse_qs(query, keep_blank_values=True)
        key = _first(params, "apiKey")
        if key is None:
            auth = headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        if not key:
            return 401, error_body(401, "API Key was not provided")
        if self.api_key is not None and key != self.api_key:
            return 401, error_body(401, "Unknown API Key")
        try:
            return 200, self._aggs(match.groups(), params, base_url)
        except _BadRequest as exc:
            return 400, error_body(400, str(exc))

    def _aggs(self, parts: Sequence[str], params: dict[str, list[str]], base_url: str) -> Json:
        ticker, multiplier_text, timespan, from_text, to_text = (unquote(p) for p in parts)
        cursor = _first(params, "cursor")
        if cursor is not None:
            limit, sort, adjusted = _decode_cursor(cursor)
        else:
            limit, sort, adjusted = _query_options(params)
        try:
            multiplier = int(multiplier_text)
        except ValueError:
            multiplier = 0
        if multiplier < 1:
            raise _BadRequest(f"multiplier must be a positive integer, got {multiplier_text!r}")
        if timespan not in _UNIT_MS:
            if timespan in _POLYGON_TIMESPANS:
                raise _BadRequest(
                    f"timespan {timespan!r} is not supported by this simulator; use minute or hour"
                )
            raise _BadRequest(
                f"timespan {timespan!r} is invalid; expected one of {', '.join(_POLYGON_TIMESPANS)}"
            )
        size_ms = multiplier * _UNIT_MS[timespan]
        from_ms = _parse_bound(from_text, "from", end=False)
        to_ms = _parse_bound(to_text, "to", end=True)
        start_ms = from_ms - from_ms % size_ms
        end_ms = to_ms - to_ms % size_ms + size_ms  # exclusive

        body: Json = {"ticker": ticker, "queryCount": 0, "resultsCount": 0, "adjusted": adjusted}
        symbol = self.resolve(ticker)
        bars = self.store.range(symbol, start_ms, end_ms) if symbol is not None else []
        buckets = _buckets(bars, size_ms)
        if sort == "desc":
            buckets.reverse()
        page: list[list[Bar]] = []
        used = 0
        for bucket in buckets:
            if page and used + len(bucket) > limit:
                break
            page.append(bucket)
            used += len(bucket)
        results = [_agg(bucket, size_ms) for bucket in page]
        body["queryCount"] = used
        body["resultsCount"] = len(results)
        if results:
            body["results"] = results
        body["status"] = "OK"
        body["request_id"] = _request_id()
        if len(page) < len(buckets):
            last = page[-1][0].t - page[-1][0].t % size_ms
            if sort == "desc":
                next_from, next_to = from_text, str(last - 1)
            else:
                next_from, next_to = str(last + size_ms), to_text
            body["next_url"] = (
                f"{base_url}/v2/aggs/ticker/{quote(ticker, safe=':')}/range/{multiplier}/"
                f"{timespan}/{next_from}/{next_to}?cursor={_encode_cursor(limit, sort, adjusted)}"
            )
        return body


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _query_options(params: dict[str, list[str]]) -> tuple[int, str, bool]:
    adjusted_text = (_first(params, "adjusted") or "true").lower()
    if adjusted_text not in ("true", "false"):
        raise _BadRequest(f"adjusted must be true or false, got {adjusted_text!r}")
    sort = (_first(params, "sort") or "asc").lower()
    if sort not in ("asc", "desc"):
        raise _BadRequest(f"sort must be asc or desc, got {sort!r}")
    limit_text = _first(params, "limit")
    if limit_text is None:
        limit = DEFAULT_LIMIT
    else:
        try:
            limit = int(limit_text)
        except ValueError:
            raise _BadRequest(f"limit must be an integer, got {limit_text!r}") from None
        if limit < 1:
            raise _BadRequest(f"limit must be at least 1, got {limit}")
    return min(limit, MAX_LIMIT), sort, adjusted_text == "true"


def _encode_cursor(limit: int, sort: str, adjusted: bool) -> str:
    raw = orjson.dumps({"limit": limit, "sort": sort, "adjusted": adjusted})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str, bool]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        state = orjson.loads(raw)
        limit, sort, adjusted = state["limit"], state["sort"], state["adjusted"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _BadRequest("invalid cursor") from None
    if (
        not isinstance(limit, int)
        or not 1 <= limit <= MAX_LIMIT
        or sort not in ("asc", "desc")
        or not isinstance(adjusted, bool)
    ):
        raise _BadRequest("invalid cursor")
    return limit, sort, adjusted


def _parse_bound(text: str, name: str, end: bool) -> int:
    """Epoch ms, or a date meaning the US Eastern day (its start, or its last ms when ``end``)."""
    if text.isascii() and text.isdigit():
        if len(text) > 16:
            raise _BadRequest(f"{name} {text!r} is out of range")
        return int(text)
    if _DATE_RE.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise _BadRequest(f"{name} {text!r} is not a valid date") from None
        if end:
            day += timedelta(days=1)
        midnight = datetime.combine(day, time(), tzinfo=EASTERN)
        return int(midnight.timestamp() * 1000) - (1 if end else 0)
    raise _BadRequest(f"{name} {text!r} must be a date (YYYY-MM-DD) or a Unix ms timestamp")


def _buckets(bars: list[Bar], size_ms: int) -> list[list[Bar]]:
    out: list[list[Bar]] = []
    current = -1
    for bar in bars:
        start = bar.t - bar.t % size_ms
        if start != current:
            out.append([])
            current = start
        out[-1].append(bar)
    return out


def _agg(bars: list[Bar], size_ms: int) -> Json:
    first = bars[0]
    t = first.t - first.t % size_ms
    if len(bars) == 1:
        v, vw, n = first.v, first.vw, first.n
        h, lo = first.h, first.l
    else:
        v = sum(bar.v for bar in bars)
        h = max(bar.h for bar in bars)
        lo = min(bar.l for bar in bars)
        weighted = [(bar.vw, bar.v) for bar in bars if bar.vw is not None]
        weight = sum(volume for _, volume in weighted)
        vw = round(sum(p * volume for p, volume in weighted) / weight, 4) if weight > 0 else None
        counts = [bar.n for bar in bars if bar.n is not None]
        n = sum(counts) if counts else None
    agg: Json = {"v": int(v) if float(v).is_integer() else v}
    if vw is not None:
        agg["vw"] = vw
    agg.update(o=first.o, c=bars[-1].c, h=h, l=lo, t=t)
    if n is not None:
        agg["n"] = n
    return agg
