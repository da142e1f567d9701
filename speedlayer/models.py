"""Domain types: a 1-minute bar and a candle, plus bar validation.

These are msgspec structs: cheap to build on the hot path and encoded to JSON without an
intermediate dict. Validation happens once, where a bar enters (``validate_bar``).
"""

from __future__ import annotations

import math
import re

import msgspec

SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:/_^=+-]{0,39}\Z")
MINUTE_MS = 60_000
# Bars must lie between 1970 and 2200; anything else is a unit mistake (seconds, microseconds).
_T_MAX_MS = 7_258_118_400_000


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

    Numbers may arrive as numbers or as strings (CSV). Rejected: a symbol not matching
    ``SYMBOL_RE``; a time that is not a whole minute in 1970..2200; prices that are not finite
    and positive; a volume, VWAP or trade count that is negative or not finite; high < low;
    open or close outside [low, high].
    """
    if not isinstance(symbol, str) or SYMBOL_RE.match(symbol) is None:
        return "bad_symbol"
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
    if not math.isfinite(fv) or fv < 0:
        return "bad_volume"
    if fh < fl:
        return "high_below_low"
    if not (fl <= fo <= fh and fl <= fc <= fh):
        return "open_close_outside_range"
    if fvw is not None and (not math.isfinite(fvw) or fvw < 0):
        return "bad_vwap"
    if tn is not None and tn < 0:
        return "bad_trade_count"
    return Bar(symbol, t_ms, fo, fh, fl, fc, fv, fvw, tn)


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError("bool is not a number")
    if isinstance(value, int):
        return value
    number = float(value)  # type: ignore[arg-type]
    if not number.is_integer():
        raise ValueError("not an integer")
    return int(number)
