"""Candles of any size for the compatibility APIs (Polygon aggregates, TradingView UDF).

A size that is a configured interval is read from that interval's table. Any other whole number of
minutes (up to ``MAX_DERIVED_MINUTES``) is computed on the fly from the 1-minute table with
:func:`speedlayer.aggregate.candle_from_bars`, the resampler's own arithmetic: buckets aligned to
multiples of the size since the Unix epoch (UTC), one candle per bucket holding at least one bar.
With exchange-aligned candles (docs/design.md#exchange-time-candles) the configured intervals are
read as stored (on the exchange's clock, ``1d`` the session) and only sizes below an hour are
computed (an hour or more would be UTC-aligned, unlike the stored ones).

Derived buckets are served only while every minute they cover is within the 1-minute retention
(``CandleSource.horizon_ms``), so a bucket is never built from part of its bars. The horizon is
computed from the API's own retention settings (``SPEEDLAYER_RETENTION``), which must therefore
match the retention the candles were written with.

Both read the store's unexpired candles, the forming (newest, not yet final) one included.
"""

from __future__ import annotations

from dataclasses import dataclass

from speedlayer.aggregate import candle_from_bars
from speedlayer.config import Settings
from speedlayer.intervals import DAY_MS, HOUR_MS, MINUTE_MS, Interval, name_for_ms
from speedlayer.models import Candle, candle_as_bar
from speedlayer.store.base import Order, Store

# A derived bucket covers at most this many minutes (~34.7 days), so one bucket never needs more
# 1-minute bars than one read of Polygon's largest page (50,000 base bars).
MAX_DERIVED_MINUTES = 50_000
_CHUNK_ROWS = 50_000  # 1-minute rows per store read when walking back for the newest buckets


def ceil_to(t_ms: int, size_ms: int) -> int:
    """The first multiple of ``size_ms`` at or after ``t_ms``."""
    return -(-t_ms // size_ms) * size_ms


def floor_to(t_ms: int, size_ms: int) -> int:
    return t_ms - t_ms % size_ms


@dataclass(frozen=True, slots=True)
class CandleSource:
    """Where candles of ``size_ms`` come from: the table of ``stored``, or (``stored`` None)
    buckets built from the 1-minute table ``base``."""

    size_ms: int
    stored: Interval | None
    base: Interval
    grace_ms: int

    @property
    def name(self) -> str:
        return self.stored.name if self.stored is not None else name_for_ms(self.size_ms)

    @property
    def derived(self) -> bool:
        return self.stored is None

    @property
    def retention_s(self) -> int:
        """How long the candles it reads are kept: its own table's retention, or the 1-minute
        table's for derived sizes."""
        return (self.stored or self.base).retention_s

    def horizon_ms(self, now_ms: int) -> int:
        """The earliest bucket start served in full at ``now_ms``: a stored candle at ``start``
        is unexpired while ``(start + size) // 1000 + retention > now_s``; a derived bucket
        needs its first minute unexpired."""
        table = self.stored or self.base
        first_alive = (now_ms // 1000 - table.retention_s + 1) * 1000 - table.interval_ms
        return ceil_to(first_alive, self.size_ms)


def source_for(settings: Settings, size_ms: int) -> CandleSource | None:
    """The source of ``size_ms`` candles, or None when they cannot be served: not a configured
    interval and not a whole number of minutes up to ``MAX_DERIVED_MINUTES``, or a day or longer
    while no interval of a day or longer is configured (days would otherwise silently be UTC
    days built from minutes; configuring ``1d`` is the explicit opt-in), or an hour or more that
    is not configured while candles are exchange-aligned (derived buckets are UTC-aligned)."""
    intervals = settings.interval_set
    base = intervals.items[0]
    for interval in intervals:
        if interval.interval_ms == size_ms:
            return CandleSource(size_ms, interval, base, settings.grace_ms)
    if size_ms <= 0 or size_ms % MINUTE_MS or size_ms > MAX_DERIVED_MINUTES * MINUTE_MS:
        return None
    if size_ms >= DAY_MS and not any(iv.interval_ms >= DAY_MS for iv in intervals):
        return None
    if size_ms >= HOUR_MS and intervals.exchange is not None:
        return None  # derived buckets are UTC-aligned; exchange-time sizes must be configured
    return CandleSource(size_ms, None, base, settings.grace_ms)


@dataclass
class Page:
    candles: list[Candle]  # in the requested order
    bars: int  # the 1-minute bars they hold (Polygon's queryCount)
    more: bool  # the range holds more buckets after this page


class CandleReader:
    """Reads candles of one source for one symbol from ``store``, at the time ``now_ms``."""

    def __init__(self, store: Store, source: CandleSource, symbol: str, now_ms: int) -> None:
        self.store = store
        self.source = source
        self.symbol = symbol
        self.now_ms = now_ms

    def _lower(self, start_ms: int | None) -> int | None:
        """Derived reads never start before the horizon (a partly expired bucket is left out)."""
        if not self.source.derived:
            return start_ms
        horizon = self.source.horizon_ms(self.now_ms)
        return horizon if start_ms is None else max(start_ms, horizon)

    def _bucket(self, start: int, rows: list[Candle]) -> Candle:
        """The derived candle of one bucket's 1-minute rows (in time order)."""
        source = self.source
        return candle_from_bars(
            self.symbol, source.name, start, [candle_as_bar(row) for row in rows],
            final=start + source.size_ms + source.grace_ms <= self.now_ms,
            revision=0, ttl=rows[0].ttl,
        )  # fmt: skip

    def _group(self, rows: list[Candle], order: Order) -> list[tuple[int, list[Candle]]]:
        """1-minute rows (in ``order``) grouped by bucket, each group in time order."""
        size = self.source.size_ms
        groups: list[tuple[int, list[Candle]]] = []
        for row in rows:
            start = floor_to(row.timestamp, size)
            if not groups or groups[-1][0] != start:
                groups.append((start, []))
            groups[-1][1].append(row)
        if order == "desc":
            for _, group in groups:
                group.reverse()
        return groups

    async def page(self, start_ms: int, end_ms: int, order: Order, max_bars: int) -> Page:
        """Polygon's page: whole buckets with start in [start_ms, end_ms) (bucket-aligned), in
        ``order``, holding at most ``max_bars`` 1-minute bars in all, but at least one bucket."""
        source, store = self.source, self.store
        lower = self._lower(start_ms)
        assert lower is not None
        if lower >= end_ms:
            return Page([], 0, False)
        if source.stored is not None:
            rows = await store.query(self.symbol, source.stored, lower, end_ms, max_bars + 1, order)
            taken: list[Candle] = []
            used = 0
            for candle in rows:
                if taken and used + candle.bars > max_bars:
                    break
                taken.append(candle)
                used += candle.bars
            return Page(taken, used, len(taken) < len(rows))
        rows = await store.query(self.symbol, source.base, lower, end_ms, max_bars + 1, order)
        groups = self._group(rows, order)
        more = len(rows) > max_bars
        if more:
            groups.pop()  # may be incomplete, and cannot fit: the rows before it are <= max_bars
            if not groups:  # the first bucket alone holds more than max_bars bars: serve it whole
                start = floor_to(rows[0].timestamp, source.size_ms)
                whole = await store.query(self.symbol, source.base, start, start + source.size_ms)
                groups = [(start, whole)]
                lo, hi = (start + source.size_ms, end_ms) if order == "asc" else (lower, start)
                more = bool(await store.query(self.symbol, source.base, lo, hi, 1, order))
        candles = [self._bucket(start, group) for start, group in groups]
        return Page(candles, sum(len(group) for _, group in groups), more)

    async def newest(self, start_ms: int | None, end_ms: int, count: int) -> list[Candle]:
        """The newest ``count`` buckets with start in [start_ms, end_ms) (bucket-aligned; no
        lower bound when ``start_ms`` is None), oldest first."""
        source, store = self.source, self.store
        lower = self._lower(start_ms)
        if lower is not None and lower >= end_ms:
            return []
        if source.stored is not None:
            rows = await store.query(self.symbol, source.stored, lower, end_ms, count, "desc")
            rows.reverse()
            return rows
        found: list[Candle] = []  # newest first
        pending: tuple[int, list[Candle]] | None = None  # the oldest group seen, maybe partial
        upper = end_ms
        while len(found) < count:
            rows = await store.query(self.symbol, source.base, lower, upper, _CHUNK_ROWS, "desc")
            for start, group in self._group(rows, "desc"):
                if pending is not None and pending[0] == start:
                    pending = (start, group + pending[1])
                    continue
                if pending is not None:
                    found.append(self._bucket(*pending))
                pending = (start, group)
            if len(rows) < _CHUNK_ROWS:
                break
            upper = rows[-1].timestamp
        if pending is not None and len(found) < count:
            found.append(self._bucket(*pending))
        found = found[:count]
        found.reverse()
        return found

    async def newest_start_before(self, before_ms: int) -> int | None:
        """The start of the newest bucket that starts before ``before_ms`` (bucket-aligned)."""
        source = self.source
        lower = self._lower(None)
        if lower is not None and lower >= before_ms:
            return None
        table = source.stored or source.base
        rows = await self.store.query(self.symbol, table, lower, before_ms, 1, "desc")
        if not rows:
            return None
        return rows[0].timestamp if source.stored else floor_to(rows[0].timestamp, source.size_ms)
