"""What live clients receive, and the validation of what they ask for.

Every candle update the hub takes from the bus becomes a :class:`CandleEvent` numbered with the
hub's global event sequence (``seq``). Its JSON message (``{"type":"candle","seq":N,<the
candle's fields>}``) and its SSE frame are encoded once per event, lazily on first use, and the
same ``str``/``bytes`` is shared by every client that receives it. Every other message (acks,
snapshots, errors, pongs) is a :class:`Message`, encoded when it is made.

A selection is symbols x intervals: :func:`parse_selection` validates it (tickers or the ``*``
wildcard; interval aliases allowed) and :func:`split_selection` turns it into exact (symbol,
interval) pairs and wildcard intervals.
"""

from __future__ import annotations

from typing import Any

import msgspec

from speedlayer.config import Settings
from speedlayer.errors import ConfigError, RequestError
from speedlayer.models import SYMBOL_RE, Candle
from speedlayer.symbols import canonical_symbol

Pair = tuple[str, str]  # (symbol, canonical interval name)
WILDCARD = "*"
NO_LIVE_MESSAGE = (
    "no live updates: this server runs without a candle bus (snapshots only); "
    "run `speedlayer up` for live candles"
)

_encode = msgspec.json.Encoder().encode


class CandleEvent:
    """One candle update as the hub numbered it; its messages are encoded once, on first use."""

    __slots__ = ("_sse", "_text", "at", "candle", "polygon", "seq")

    def __init__(self, seq: int, candle: Candle, at: float) -> None:
        self.seq = seq
        self.candle = candle
        self.at = at  # wall time (time.time()) when the hub received it
        self._text: str | None = None
        self._sse: bytes | None = None
        self.polygon: str | None = None  # its Polygon ``AM`` event, set by api.polygon_ws

    @property
    def text(self) -> str:
        """The ``candle`` message: ``{"type":"candle","seq":N,<the candle's fields>}``."""
        text = self._text
        if text is None:
            body = _encode(self.candle)
            text = self._text = f'{{"type":"candle","seq":{self.seq},{body[1:].decode()}'
        return text

    @property
    def sse(self) -> bytes:
        frame = self._sse
        if frame is None:
            frame = self._sse = f"id: {self.seq}\nevent: candle\ndata: {self.text}\n\n".encode()
        return frame


class Message:
    """A message for one client (ack, snapshot, error, pong): JSON text plus SSE event/id."""

    __slots__ = ("event", "id", "text")

    def __init__(self, event: str, payload: dict[str, Any], id: int | None = None) -> None:
        self.event = event
        self.id = id
        self.text = _encode({"type": event, **payload}).decode()

    @property
    def sse(self) -> bytes:
        head = f"id: {self.id}\n" if self.id is not None else ""
        return f"{head}event: {self.event}\ndata: {self.text}\n\n".encode()


Item = CandleEvent | Message


def parse_selection(
    settings: Settings, symbols: object, intervals: object
) -> tuple[list[str], list[str]]:
    """Validate symbols (tickers or ``*``) and intervals (aliases allowed); canonical names out
    (``speedlayer.symbols``: the symbols candles are published under),
    duplicates removed, order kept. Raises RequestError with a message for the client."""
    if not isinstance(symbols, list) or not symbols:
        raise RequestError("symbols: give a non-empty list of tickers, e.g. AAPL,MSFT (or *)")
    if not isinstance(intervals, list) or not intervals:
        raise RequestError("intervals: give a non-empty list, e.g. 1m,15m")
    out_symbols: list[str] = []
    for symbol in symbols:
        if not isinstance(symbol, str) or (symbol != WILDCARD and SYMBOL_RE.match(symbol) is None):
            raise RequestError(f"symbol {symbol!r} is not a valid ticker (or * for all)")
        if symbol != WILDCARD:
            symbol = canonical_symbol(symbol)  # the stored key: X:BTCUSD -> BTC-USD, aapl -> AAPL
        if symbol not in out_symbols:
            out_symbols.append(symbol)
    out_intervals: list[str] = []
    for interval in intervals:
        if not isinstance(interval, str):
            raise RequestError(f"interval {interval!r} is not a string")
        try:
            name = settings.interval_set.get(interval).name
        except ConfigError as exc:
            raise RequestError(str(exc)) from None
        if name not in out_intervals:
            out_intervals.append(name)
    return out_symbols, out_intervals


def split_selection(symbols: list[str], intervals: list[str]) -> tuple[list[Pair], list[str]]:
    """(exact pairs, wildcard intervals) of a validated selection."""
    pairs = [(s, iv) for s in symbols if s != WILDCARD for iv in intervals]
    wild = list(intervals) if WILDCARD in symbols else []
    return pairs, wild
