"""Polygon.io (Massive) wire format, shared by the client (``ingest.polygon``) and the file readers.

* Channels: one minute-aggregate channel per market, ``AM`` (stocks, options, indices), ``XA``
  (crypto) or ``CA`` (forex); one subscribe message names every channel (``AM.AAPL,AM.MSFT`` or
  ``AM.*``).
* Decoding: a WebSocket event (``AM``/``XA``/``CA``; ``sym`` for stocks, ``pair`` for crypto and
  forex) or one element of a REST aggregates ``results`` array becomes a validated ``Bar`` or a
  ``Rejected`` with a reason; status events decode to None.
* Tickers: WebSocket and REST tickers differ for crypto (``BTC-USD`` -> ``X:BTCUSD``) and forex
  (``USD/CAD`` or ``USD-CAD`` -> ``C:USDCAD``); bars keep the WebSocket form as their symbol, so
  live and backfilled bars of one instrument share a key.
* Secrets: ``redact`` masks the API key in any text that may quote it.
"""

from __future__ import annotations

from dataclasses import dataclass

from speedlayer.models import Bar, validate_bar
from speedlayer.symbols import canonical_symbol

MINUTE_EVENTS = frozenset({"AM", "XA", "CA"})
CHANNEL_PREFIX = {"stocks": "AM", "options": "AM", "indices": "AM", "crypto": "XA", "forex": "CA"}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that is not a valid 1-minute bar: why, and where it was read."""

    reason: str
    where: str


Record = Bar | Rejected


def from_event(event: dict[str, object], where: str) -> Record | None:
    """One WebSocket event: a Bar, a Rejected, or None for status events."""
    ev = event.get("ev")
    if ev == "status":
        return None
    if ev not in MINUTE_EVENTS:
        return Rejected("not_a_minute_aggregate", where)
    symbol = event.get("sym") if ev == "AM" else event.get("pair")
    start, end = event.get("s"), event.get("e")
    if isinstance(start, int) and isinstance(end, int) and end - start != 60_000:
        return Rejected("not_a_minute_aggregate", where)
    try:
        result = validate_bar(
            symbol, start, event["o"], event["h"], event["l"], event["c"], event.get("v", 0),
            event.get("vw"), event.get("n"),
        )  # fmt: skip
    except KeyError:
        return Rejected("missing_field", where)
    return result if isinstance(result, Bar) else Rejected(result, where)


def from_rest_result(ticker: object, item: dict[str, object], where: str) -> Record:
    """One element of a REST aggregates ``results`` array."""
    try:
        result = validate_bar(
            ticker, item["t"], item["o"], item["h"], item["l"], item["c"], item["v"],
            item.get("vw"), item.get("n"),
        )  # fmt: skip
    except KeyError:
        return Rejected("missing_field", where)
    return result if isinstance(result, Bar) else Rejected(result, where)


def clean_symbols(symbols: list[str]) -> list[str]:
    """Symbols stripped and in their canonical form, which is Polygon's WebSocket form
    (``X:BTCUSD`` -> ``BTC-USD``, ``aapl`` -> ``AAPL``: ``speedlayer.symbols``), blanks and
    repeats dropped; ``["*"]`` if any of them is ``*``."""
    cleaned = list(dict.fromkeys(canonical_symbol(s.strip()) for s in symbols if s and s.strip()))
    return ["*"] if "*" in cleaned else cleaned


def subscribe_params(market: str, symbols: list[str]) -> str:
    """The ``params`` of the single subscribe message: ``AM.AAPL,AM.MSFT`` or ``AM.*``."""
    prefix = CHANNEL_PREFIX[market]
    return ",".join(f"{prefix}.{symbol}" for symbol in clean_symbols(symbols))


def rest_ticker(market: str, symbol: str) -> str:
    """REST ticker of a WebSocket symbol: ``BTC-USD`` -> ``X:BTCUSD``, ``USD/CAD`` -> ``C:USDCAD``.

    Stocks, options (``O:...``) and indices (``I:...``) use the same form on both APIs.
    """
    if market == "crypto" and not symbol.startswith("X:"):
        return "X:" + symbol.replace("-", "").replace("/", "")
    if market == "forex" and not symbol.startswith("C:"):
        return "C:" + symbol.replace("/", "").replace("-", "")
    return symbol


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` masked (no-op for an empty secret)."""
    return text.replace(secret, "***") if secret and secret in text else text
