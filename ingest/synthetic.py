"""Synthetic 1-minute bars: a random walk per symbol with an intraday volume profile.

Deterministic for a given seed, so tests and demos are reproducible. Prices have 4 decimals;
liquid names trade every minute, thin ones skip minutes (Polygon sends no bar for a minute without
trades).
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass
class _Walk:
    symbol: str
    price: float
    sigma: float
    base_volume: float
    activity: float  # probability that a minute has trades


class RandomWalk:
    def __init__(self, symbols: list[str], seed: int = 7) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.walks = [
            _Walk(
                symbol,
                price=round(rng.uniform(10, 500), 2),
                sigma=rng.uniform(0.0004, 0.002),
                base_volume=rng.choice((200.0, 2_000.0, 20_000.0, 100_000.0)),
                activity=1.0 if i < 10 else rng.uniform(0.3, 1.0),
            )
            for i, symbol in enumerate(symbols)
        ]

    def minute(self, t_ms: int) -> list[Bar]:
        """One minute's bars (start ``t_ms``) for every symbol that traded."""
        rng = self.rng
        bars = []
        profile = volume_profile(t_ms)
        for walk in self.walks:
            if walk.activity < 1.0 and rng.random() > walk.activity:
                continue
            o = walk.price
            c = round(max(0.01, o * math.exp(rng.gauss(0.0, walk.sigma))), 4)
            h = round(max(o, c) * (1 + abs(rng.gauss(0.0, walk.sigma / 2))), 4)
            lo = round(max(0.0001, min(o, c) * (1 - abs(rng.gauss(0.0, walk.sigma / 2)))), 4)
            h, lo = max(h, o, c), min(lo, o, c)
            v = float(max(1, int(walk.base_volume * profile * rng.lognormvariate(0.0, 0.5))))
            vw = round(min(h, max(lo, (o + h + lo + c) / 4)), 4)
            n = max(1, int(v / rng.uniform(50, 200)))
            bars.append(Bar(walk.symbol, t_ms, o, h, lo, c, v, vw, n))
            walk.price = c
        return bars

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
