"""Synthetic 1-minute bars: a random walk per symbol with an intraday volume profile.

A pure function of (seed, symbol, minute), so tests and demos are reproducible and a restarted
simulator serves the same history. Prices have 4 decimals;
liquid names trade every minute, thin ones skip minutes (Polygon sends no bar for a minute without
trades).
"""

from __future__ import annotations

import hashlib
import math
import string
from collections.abc import Iterator

import numpy as np

from speedlayer.intervals import DAY_MS, MINUTE_MS
from speedlayer.models import Bar

WELL_KNOWN = (
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "SPY", "QQQ", "JPM",
    "V", "XOM", "UNH", "JNJ", "WMT", "MA", "PG", "HD", "BAC", "KO",
    "DIS", "NFLX", "AMD", "INTC", "CSCO", "PFE", "T", "CVX", "MRK", "PEP",
)  # fmt: skip


def symbol_names(count: int) -> list[str]:
    """``count`` distinct ticker-like names: well-known ones first, then generated ones."""
    names = list(WELL_KNOWN[:count])
    letters = string.ascii_uppercase
    index = 0
    while len(names) < count:
        n, name = index, ""
        for _ in range(4):
            n, digit = divmod(n, 26)
            name = letters[digit] + name
        index += 1
        if name not in WELL_KNOWN:
            names.append("Z" + name)
    return names


def volume_profile(t_ms: int) -> float:
    """A U-shaped intraday profile over the UTC day (heavier at the ends of the session)."""
    x = (t_ms % DAY_MS) / DAY_MS
    return 0.4 + 1.6 * (2 * x - 1) ** 2


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_DRAW = np.uint64(0xD1B54A32D192ED03)
_MINUTES_PER_DAY = DAY_MS // MINUTE_MS
_CHUNK = 120  # minutes per vectorised step when a day's path is rebuilt
# draw numbers: one independent uniform per (seed, symbol, minute, draw)
_STEP, _STEP2, _HIGH, _HIGH2, _LOW, _LOW2, _VOLUME, _VOLUME2, _TRADES, _ACTIVE = range(10)
_ANCHOR = 64  # the day's opening level, keyed by the day number instead of the minute


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping): a bijective, well-mixed hash."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        mixed: np.ndarray = x ^ (x >> np.uint64(31))
        return mixed


def _key(seed: int, symbol: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{symbol}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class RandomWalk:
    """Random-walk bars that are a pure function of (seed, symbol, minute).

    Every random number is a hash of (seed, symbol, minute, draw number), so two walks with the
    same seed give the same bar for the same symbol and minute, whenever they are asked and
    whatever else they were asked before (a restarted simulator regenerates its history exactly).
    The price path is anchored per UTC day: each day opens at a level drawn for (seed, symbol,
    day) around the symbol's base price, and within the day each minute's open is the previous
    minute's close, so a day's path is rebuilt from its start (vectorised over symbols) only when
    a minute is asked for out of sequence. The symbol's base price, volatility, volume and
    activity are drawn for (seed, symbol); the first ten symbols trade every minute.
    """

    def __init__(self, symbols: list[str], seed: int = 7) -> None:
        self.symbols = list(symbols)
        self.seed = seed
        keys = np.array([_key(seed, symbol) for symbol in self.symbols], dtype=np.uint64)
        self._keys = keys
        u = [self._uniform(keys, np.uint64(0), 1000 + i) for i in range(4)]
        self._base_log = np.log(np.round(10 + 490 * u[0], 2))
        self._sigma = 0.0004 + 0.0016 * u[1]
        self._base_volume = np.array((200.0, 2_000.0, 20_000.0, 100_000.0))[
            np.minimum((u[2] * 4).astype(np.int64), 3)
        ]
        # per symbol: the probability that a minute has trades (callers may change it)
        self.activity = 0.3 + 0.7 * u[3]
        self.activity[:10] = 1.0
        # the log price path: (day, minute of day) of the last computed close, and that close
        self._at: tuple[int, int] | None = None
        self._level = np.zeros(len(keys))

    @staticmethod
    def _uniform(keys: np.ndarray, counter: np.ndarray | np.uint64, draw: int) -> np.ndarray:
        """Uniforms in (0, 1]: one per key (broadcast against ``counter``) for this draw."""
        with np.errstate(over="ignore"):
            inner = np.asarray(counter, dtype=np.uint64) * _GOLDEN + np.uint64(draw) * _DRAW
        inner = _mix(inner)
        bits = _mix(keys ^ inner)
        return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 2.0**53)

    def _normal(self, counter: np.ndarray | np.uint64, draw: int, keys: np.ndarray) -> np.ndarray:
        """Standard normals (Box-Muller over two draws ``draw`` and ``draw + 1``)."""
        u1 = self._uniform(keys, counter, draw)
        u2 = self._uniform(keys, counter, draw + 1)
        normal: np.ndarray = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)
        return normal

    def _steps(self, minutes: np.ndarray) -> np.ndarray:
        """Log-price steps, shape (len(minutes), symbols), for absolute minute numbers."""
        keys = self._keys[None, :]
        return self._normal(minutes[:, None].astype(np.uint64), _STEP, keys) * self._sigma

    def _close_level(self, day: int, k: int) -> np.ndarray:
        """The log close of minute ``k`` of ``day`` (k = -1: the day's opening level)."""
        if self._at is not None and self._at[0] == day and self._at[1] <= k:
            level, done = self._level, self._at[1]
        else:
            counter = np.uint64(day + (1 << 40))
            level = self._base_log + 0.03 * self._normal(counter, _ANCHOR, self._keys)
            done = -1
        first = day * _MINUTES_PER_DAY
        while done < k:
            upto = min(k, done + _CHUNK)
            minutes = np.arange(first + done + 1, first + upto + 1, dtype=np.int64)
            level = level + self._steps(minutes).sum(axis=0)
            done = upto
        self._at, self._level = (day, k), level
        return level

    def minute(self, t_ms: int) -> list[Bar]:
        """One minute's bars (start ``t_ms``) for every symbol that traded."""
        if not self.symbols:
            return []
        t_ms -= t_ms % MINUTE_MS
        absolute = t_ms // MINUTE_MS
        day, k = divmod(absolute, _MINUTES_PER_DAY)
        opening = np.exp(self._close_level(day, k - 1))
        closing = np.exp(self._close_level(day, k))
        keys = self._keys
        counter = np.uint64(absolute)
        sigma = self._sigma
        o = np.maximum(0.01, np.round(opening, 4))
        c = np.maximum(0.01, np.round(closing, 4))
        h = np.round(
            np.maximum(o, c) * (1 + np.abs(self._normal(counter, _HIGH, keys)) * sigma / 2), 4
        )
        lo = np.round(
            np.maximum(
                0.0001,
                np.minimum(o, c) * (1 - np.abs(self._normal(counter, _LOW, keys)) * sigma / 2),
            ),
            4,
        )
        h = np.maximum(h, np.maximum(o, c))
        lo = np.minimum(lo, np.minimum(o, c))
        lognormal = np.exp(0.5 * self._normal(counter, _VOLUME, keys))
        v = np.maximum(1.0, np.floor(self._base_volume * volume_profile(t_ms) * lognormal))
        vw = np.round(np.minimum(h, np.maximum(lo, (o + h + lo + c) / 4)), 4)
        n = np.maximum(1, (v / (50 + 150 * self._uniform(keys, counter, _TRADES))).astype(np.int64))
        active = self._uniform(keys, counter, _ACTIVE) <= self.activity
        rows = zip(
            self.symbols, active.tolist(), o.tolist(), h.tolist(), lo.tolist(), c.tolist(),
            v.tolist(), vw.tolist(), n.tolist(), strict=True,
        )  # fmt: skip
        return [
            Bar(symbol, t_ms, oo, hh, ll, cc, vv, ww, nn)
            for symbol, on, oo, hh, ll, cc, vv, ww, nn in rows
            if on
        ]

    def bars(self, start_ms: int, minutes: int) -> Iterator[Bar]:
        start_ms -= start_ms % MINUTE_MS
        for i in range(minutes):
            yield from self.minute(start_ms + i * MINUTE_MS)


def write_csv(bars: Iterator[Bar], path: str) -> int:
    """Write bars as the replay CSV (``symbol,t,o,h,l,c,v,vw,n``); return how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write("symbol,t,o,h,l,c,v,vw,n\n")
        for b in bars:
            vw = "" if b.vw is None else repr(b.vw)
            n = "" if b.n is None else str(b.n)
            out.write(f"{b.symbol},{b.t},{b.o!r},{b.h!r},{b.l!r},{b.c!r},{b.v:.0f},{vw},{n}\n")
            count += 1
    return count
