"""Data side of the Polygon simulator: market conventions, event encoding, the REST bar store.

Kept free of I/O and of asyncio so it can be tested and profiled on its own. The simulator
(``ingest.simulator.server``) drives it minute by minute.
"""

from __future__ import annotations

import math
import random
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson

from ingest.synthetic import WELL_KNOWN, symbol_names
from speedlayer.models import MINUTE_MS, Bar
from speedlayer.symbols import FIAT

EASTERN = ZoneInfo("America/New_York")
Event = dict[str, object]


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """One WebSocket cluster: its path, minute-aggregate event and ticker conventions."""

    name: str  # the WebSocket path segment: /stocks, /crypto, /forex
    event: str  # the minute-aggregate channel and ``ev``: AM, XA, CA
    symbol_key: str  # ``sym`` (stocks) or ``pair`` (crypto, forex)
    rest_prefix: str  # REST ticker prefix: "" (stocks), "X:" (crypto), "C:" (forex)
    channels: frozenset[str]  # subscription prefixes this cluster knows
    has_vw: bool  # whether the minute event carries ``vw``


MARKETS: dict[str, MarketSpec] = {
    "stocks": MarketSpec(
        "stocks", "AM", "sym", "",
        frozenset({"AM", "A", "T", "Q", "LULD", "NOI", "FMV", "LV"}), True,
    ),
    "crypto": MarketSpec(
        "crypto", "XA", "pair", "X:",
        frozenset({"XA", "XAS", "XT", "XQ", "XL2", "FMV", "AM", "A"}), True,
    ),
    "forex": MarketSpec(
        "forex", "CA", "pair", "C:", frozenset({"CA", "CAS", "C", "FMV", "AM", "A"}), False,
    ),
}  # fmt: skip

CRYPTO_WELL_KNOWN = (
    "BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "DOGE-USD", "ADA-USD", "AVAX-USD", "LTC-USD",
    "LINK-USD", "DOT-USD", "BCH-USD", "UNI-USD", "ETH-BTC", "SOL-BTC", "BTC-EUR", "ETH-EUR",
)  # fmt: skip
FOREX_WELL_KNOWN = (
    "EUR/USD", "USD/JPY", "GBP/USD", "USD/CHF", "AUD/USD", "USD/CAD", "NZD/USD", "EUR/GBP",
    "EUR/JPY", "GBP/JPY", "USD/SGD", "USD/MXN", "USD/CNH", "EUR/CHF", "USD/HKD", "USD/SEK",
)  # fmt: skip


def market_symbols(market: str, count: int) -> list[str]:
    """``count`` distinct instrument names in the WebSocket form of ``market``, each already in
    its canonical form (``speedlayer.symbols``). Forex pairs are two currency codes, so forex
    has at most ``len(FIAT) * (len(FIAT) - 1)`` of them."""
    if market == "stocks":
        return symbol_names(count)
    if market == "crypto":
        names = list(CRYPTO_WELL_KNOWN[:count])
        extra = symbol_names(len(WELL_KNOWN) + count - len(names))[len(WELL_KNOWN) :]
        return (names + [f"{name}-USD" for name in extra])[:count]
    names = list(FOREX_WELL_KNOWN[:count])
    codes = sorted(FIAT)
    for base in codes:
        for quote in codes:
            if len(names) >= count:
                return names
            pair = f"{base}/{quote}"
            if base != quote and pair not in FOREX_WELL_KNOWN:
                names.append(pair)
    return names


def compact_ticker(ticker: str) -> str:
    """A separator- and prefix-free key: ``X:BTCUSD``, ``BTC-USD`` and ``btc/usd`` -> ``BTCUSD``."""
    upper = ticker.strip().upper()
    if len(upper) > 2 and upper[1] == ":" and upper[0] in "XC":
        upper = upper[2:]
    return upper.replace("-", "").replace("/", "")


def wire_bar(bar: Bar, spec: MarketSpec) -> Bar:
    """The bar as a client decodes it from the minute event: no trade count (AM/XA/CA carry
    none), and no VWAP on forex (CA carries none)."""
    return Bar(
        bar.symbol, bar.t, bar.o, bar.h, bar.l, bar.c, bar.v, bar.vw if spec.has_vw else None
    )


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


class EventEncoder:
    """Bars -> minute events (``AM``/``XA``/``CA``) as JSON-ready dicts, with the day
    accumulators of ``AM`` (``av`` accumulated volume, ``op`` official open, ``a`` day VWAP).

    The trading day of ``av``/``op``/``a`` is the US Eastern calendar day.
    """

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        # symbol -> [day, accumulated volume, official open, sum(price*volume), sum(volume)]
        self._day: dict[str, list[float]] = {}
        self._day_t = -1
        self._day_n = -1

    def _day_number(self, t_ms: int) -> int:
        if t_ms != self._day_t:
            self._day_t = t_ms
            self._day_n = datetime.fromtimestamp(t_ms / 1000, UTC).astimezone(EASTERN).toordinal()
        return self._day_n

    def event(self, bar: Bar, previous: Bar | None = None) -> Event:
        """One event; ``previous`` is the version a correction replaces (its volume is taken
        back out of the day accumulators).

        Events stay dicts until a whole frame is encoded: one ``orjson.dumps`` per frame is
        faster than one per event, and each small ``dumps`` result keeps a multi-KB buffer.
        """
        spec = self.spec
        if spec.event == "AM":
            return self._am(bar, previous)
        event: Event = {"ev": spec.event, "pair": bar.symbol, "v": _number(bar.v)}
        if spec.has_vw and bar.vw is not None:
            event["vw"] = bar.vw
        if spec.has_vw and bar.n:
            event["z"] = round(bar.v / bar.n, 4)
        event.update(o=bar.o, c=bar.c, h=bar.h, l=bar.l, s=bar.t, e=bar.t + MINUTE_MS)
        return event

    def _am(self, bar: Bar, previous: Bar | None) -> Event:
        day = self._day_number(bar.t)
        acc = self._day.get(bar.symbol)
        if acc is None or acc[0] != day:
            acc = [day, 0.0, bar.o, 0.0, 0.0]
            self._day[bar.symbol] = acc
        vw, v = bar.vw, bar.v
        volume, pv = v, (vw if vw is not None else (bar.h + bar.l + bar.c) / 3) * v
        if previous is not None:
            old_price = previous.vw if previous.vw is not None else previous.c
            volume -= previous.v
            pv -= old_price * previous.v
        acc[1] += volume
        acc[3] += pv
        acc[4] += volume
        a = round(acc[3] / acc[4], 4) if acc[4] > 0 else bar.c
        z = int(v / bar.n) if bar.n else int(v)
        t = bar.t
        if vw is None:
            return {
                "ev": "AM", "sym": bar.symbol, "v": _number(v), "av": int(acc[1]), "op": acc[2],
                "o": bar.o, "c": bar.c, "h": bar.h, "l": bar.l, "a": a, "z": z,
                "s": t, "e": t + MINUTE_MS,
            }  # fmt: skip
        return {
            "ev": "AM", "sym": bar.symbol, "v": _number(v), "av": int(acc[1]), "op": acc[2],
            "vw": vw, "o": bar.o, "c": bar.c, "h": bar.h, "l": bar.l, "a": a, "z": z,
            "s": t, "e": t + MINUTE_MS,
        }  # fmt: skip


def corrected(bar: Bar, rng: random.Random) -> Bar:
    """A later version of ``bar``, as Polygon sends when late trades arrive: more volume (always),
    a high/low range at least as wide, open and close unchanged."""
    extra = max(1.0, float(round(bar.v * rng.uniform(0.05, 0.5))))
    v = bar.v + extra
    h = max(bar.h, round(bar.h * (1 + rng.uniform(0.0001, 0.002)), 4))
    lo = min(bar.l, max(0.0001, round(bar.l * (1 - rng.uniform(0.0001, 0.002)), 4)))
    vw = None
    if bar.vw is not None:
        vw = round(min(h, max(lo, (bar.vw * bar.v + (h + lo) / 2 * extra) / v)), 4)
    n = None if bar.n is None else bar.n + max(1, int(extra / 100))
    return Bar(bar.symbol, bar.t, bar.o, h, lo, bar.c, v, vw, n)


def malformed_frame(spec: MarketSpec, sample: Event, symbol: str, t_ms: int, kind: int) -> bytes:
    """One malformed frame. ``kind`` (mod 4): 0 invalid JSON, 1 a bare object (a copy of an event
    just sent, not wrapped in an array), 2 an event missing its prices, 3 an event whose fields are
    garbage. None of them holds a valid bar that differs from the truth."""
    kind %= 4
    key = spec.symbol_key
    if kind == 0:
        return b'[{"ev":"' + spec.event.encode() + b'","' + key.encode() + b'":"' + symbol.encode()
    if kind == 1:
        return orjson.dumps(sample)
    if kind == 2:
        return orjson.dumps([{"ev": spec.event, key: symbol, "s": t_ms, "e": t_ms + MINUTE_MS}])
    return orjson.dumps(
        [{
            "ev": spec.event, key: symbol, "v": "lots", "o": None, "c": "n/a", "h": -1,
            "l": [], "s": "yesterday", "e": {},
        }]
    )  # fmt: skip


# --- the bar store behind REST -------------------------------------------------------------

_NAN = math.nan
_WIDTH = 7  # o h l c v vw n per row; vw and n are NaN when absent


class _Series:
    """One symbol's bars in time order: epoch-ms starts plus a flat array of 7 doubles per bar."""

    __slots__ = ("ts", "vals")

    def __init__(self) -> None:
        self.ts = array("q")
        self.vals = array("d")


class BarStore:
    """Latest version of each (symbol, minute) bar, columnar (~64 bytes a bar), so a full market
    (12,000 symbols) over a day fits in memory. Rows older than ``floor_ms`` are invisible at
    once and physically removed in batches (each removal moves memory)."""

    PRUNE_BATCH_MS = 60 * MINUTE_MS

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self.floor_ms = -(2**62)
        self._pruned_to_ms = -(2**62)

    def __len__(self) -> int:
        return sum(len(series.ts) for series in self._series.values())

    def symbols(self) -> list[str]:
        return list(self._series)

    def put(self, bar: Bar) -> None:
        series = self._series.get(bar.symbol)
        if series is None:
            series = self._series[bar.symbol] = _Series()
        row = (
            bar.o, bar.h, bar.l, bar.c, bar.v,
            _NAN if bar.vw is None else bar.vw, _NAN if bar.n is None else float(bar.n),
        )  # fmt: skip
        ts, t = series.ts, bar.t
        if not ts or t > ts[-1]:
            ts.append(t)
            series.vals.extend(row)
            return
        i = bisect_left(ts, t)
        if i < len(ts) and ts[i] == t:
            series.vals[i * _WIDTH : (i + 1) * _WIDTH] = array("d", row)
        else:
            ts.insert(i, t)
            series.vals[i * _WIDTH : i * _WIDTH] = array("d", row)

    def get(self, symbol: str, t_ms: int) -> Bar | None:
        series = self._series.get(symbol)
        if series is None or t_ms < self.floor_ms:
            return None
        i = bisect_left(series.ts, t_ms)
        if i < len(series.ts) and series.ts[i] == t_ms:
            return _bar(symbol, series, i)
        return None

    def range(self, symbol: str, start_ms: int, end_ms: int) -> list[Bar]:
        """Bars of ``symbol`` with ``start_ms <= t < end_ms``, in time order."""
        series = self._series.get(symbol)
        if series is None:
            return []
        lo = bisect_left(series.ts, max(start_ms, self.floor_ms))
        hi = bisect_left(series.ts, end_ms)
        return [_bar(symbol, series, i) for i in range(lo, hi)]

    def bars_since(self, start_ms: int) -> Iterator[Bar]:
        """Every stored bar with ``t >= start_ms`` (symbol by symbol, each in time order)."""
        for symbol, series in self._series.items():
            lo = bisect_left(series.ts, max(start_ms, self.floor_ms))
            for i in range(lo, len(series.ts)):
                yield _bar(symbol, series, i)

    def prune(self, floor_ms: int) -> None:
        """Forget bars older than ``floor_ms``."""
        if floor_ms <= self.floor_ms:
            return
        self.floor_ms = floor_ms
        if floor_ms - self._pruned_to_ms < self.PRUNE_BATCH_MS:
            return
        self._pruned_to_ms = floor_ms
        for symbol in list(self._series):
            series = self._series[symbol]
            i = bisect_left(series.ts, floor_ms)
            if i:
                del series.ts[:i]
                del series.vals[: i * _WIDTH]
            if not series.ts:
                del self._series[symbol]

    def extend(self, bars: Iterable[Bar]) -> None:
        for bar in bars:
            self.put(bar)


def _bar(symbol: str, series: _Series, i: int) -> Bar:
    o, h, lo, c, v, vw, n = series.vals[i * _WIDTH : (i + 1) * _WIDTH]
    return Bar(
        symbol, series.ts[i], o, h, lo, c, v,
        None if math.isnan(vw) else vw, None if math.isnan(n) else int(n),
    )  # fmt: skip
