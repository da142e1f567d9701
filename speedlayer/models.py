"""Domain types: a 1-minute bar and a candle, plus bar validation.

These are msgspec structs: cheap to build on the hot path and encoded to JSON without an
intermediate dict. Validation happens once, where a bar enters (``validate_bar``).
"""

from __future__ import annotations

import math

import msgspec

from speedlayer.symbols import SYMBOL_RE as SYMBOL_RE  # the symbol syntax, re-exported
from speedlayer.symbols import canonical_symbol

MINUTE_MS = 60_000
# Bars must lie between 1970 and 2200; anything else is a unit mistake (seconds, microseconds).
T_MAX_MS = _T_MAX_MS = 7_258_118_400_000
# Upper bounds of a bar's values, so that a candle's sums stay finite and exact enough: a year of
# 1-minute bars at the bounds sums to ~5e20 volume and ~5e35 in sum(vw*v), far below the float
# maximum (~1.8e308), and a day's trade count to ~1.4e15 < 2**53 (exact in JSON numbers and in
# JavaScript) and an SQLite INTEGER. Real values are far below: the dearest share trades under
# 1e6, a minute's volume of the most traded token under 1e13.
MAX_PRICE = 1e15  # o, h, l, c and vw
MAX_VOLUME = 1e15
MAX_TRADES = 10**12


class Bar(msgspec.Struct, frozen=True, gc=False):
    """One symbol's 1-minute aggregate; ``t`` is the minute's start in epoch ms UTC."""

    symbol: str
    t: int
    o: float
    h: float
    l: float  # noqa: E741 - Polygon's field name
    c: float
    v: float
    vw: float | None = None
    n: int | None = None


class Candle(msgspec.Struct, frozen=True, gc=False):
    """A candle for (symbol, interval, timestamp = bucket start in epoch ms).

    ``final`` is true once the clock has passed the bucket's end plus the grace period;
    ``revision`` increases with every published change; ``ttl`` is the expiry in epoch seconds.
    """

    symbol: str
    interval: str
    timestamp: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float | None
    trades: int | None
    bars: int
    final: bool
    revision: int
    ttl: int


CANDLE_FIELDS: tuple[str, ...] = Candle.__struct_fields__


def candle_as_bar(candle: Candle) -> Bar:
    """A stored 1-minute candle is the bar it was made from."""
    return Bar(
        candle.symbol, candle.timestamp, candle.open, candle.high, candle.low, candle.close,
        candle.volume, candle.vwap, candle.trades,
    )  # fmt: skip


def validate_bar(
    symbol: object,
    t: object,
    o: object,
    h: object,
    l: object,  # noqa: E741
    c: object,
    v: object,
    vw: object = None,
    n: object = None,
) -> Bar | str:
    """Return a Bar, or the reason the values are not a valid 1-minute bar.

    The symbol is stored in its canonical form (``speedlayer.symbols``: ``X:BTCUSD`` ->
    ``BTC-USD``, ``aapl`` -> ``AAPL``). Numbers may arrive as numbers or as strings (CSV).
    Rejected: a symbol not matching
    ``SYMBOL_RE``; a time that is not a whole minute in 1970..2200; prices that are not finite
    and positive or above ``MAX_PRICE`` (``price_too_large``); a volume that is negative, not
    finite or above ``MAX_VOLUME`` (``volume_too_large``); a VWAP outside [0, ``MAX_PRICE``]
    or a trade count outside [0, ``MAX_TRADES``]; high < low; open or close outside
    [low, high].
    """
    if not isinstance(symbol, str) or SYMBOL_RE.match(symbol) is None:
        return "bad_symbol"
    symbol = canonical_symbol(symbol)
    try:
        t_ms = _to_int(t)
        fo, fh, fl, fc, fv = float(o), float(h), float(l), float(c), float(v)  # type: ignore[arg-type]
        fvw = None if vw is None or vw == "" else float(vw)  # type: ignore[arg-type]
        tn = None if n is None or n == "" else _to_int(n)
    except (TypeError, ValueError, OverflowError):
        return "not_a_number"
    if t_ms % MINUTE_MS != 0:
        return "time_not_minute_aligned"
    if not 0 <= t_ms < _T_MAX_MS:
        return "time_out_of_range"
    if not (math.isfinite(fo) and math.isfinite(fh) and math.isfinite(fl) and math.isfinite(fc)):
        return "price_not_finite"
    if fo <= 0 or fh <= 0 or fl <= 0 or fc <= 0:
        return "price_not_positive"
    if fo > MAX_PRICE or fh > MAX_PRICE or fl > MAX_PRICE or fc > MAX_PRICE:
        return "price_too_large"
    if not math.isfinite(fv) or fv < 0:
        return "bad_volume"
    if fv > MAX_VOLUME:
        return "volume_too_large"
    if fh < fl:
        return "high_below_low"
    if not (fl <= fo <= fh and fl <= fc <= fh):
        return "open_close_outside_range"
    if fvw is not None and (not math.isfinite(fvw) or fvw < 0 or fvw > MAX_PRICE):
        return "bad_vwap"
    if tn is not None and not 0 <= tn <= MAX_TRADES:
        return "bad_trade_count"
    return Bar(symbol, t_ms, fo, fh, fl, fc, fv, fvw, tn)


def bar_problem(bar: Bar) -> str | None:
    """Why a Bar built elsewhere (decoded from the bus) is not one ``validate_bar`` accepts, or
    None when it is."""
    checked = validate_bar(bar.symbol, bar.t, bar.o, bar.h, bar.l, bar.c, bar.v, bar.vw, bar.n)
    return checked if isinstance(checked, str) else None


def candle_problem(candle: Candle) -> str | None:
    """Why a Candle decoded from the bus cannot be stored or served (a number JSON cannot carry,
    such as the inf that ``1e999`` decodes to; a negative volume), or None."""
    if not all(
        math.isfinite(x) for x in (candle.open, candle.high, candle.low, candle.close)
    ) or not (candle.volume >= 0 and math.isfinite(candle.volume)):
        return "value_not_finite"
    if candle.vwap is not None and not math.isfinite(candle.vwap):
        return "value_not_finite"
    return None


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError("bool is not a number")
    if isinstance(value, int):
        return value
    number = float(value)  # type: ignore[arg-type]
    if not number.is_integer():
        raise ValueError("not an integer")
    return int(number)
