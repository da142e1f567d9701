"""In-memory store: the fast test double of the Store interface."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence

from speedlayer.errors import StoreError
from speedlayer.intervals import Interval
from speedlayer.models import Bar, Candle, candle_as_bar
from speedlayer.store.base import Order, Store


class MemoryStore(Store):
    _tables: dict[str, dict[str, dict[int, Candle]]]
    _index: dict[str, dict[str, list[int]]]
    _running = False

    async def start(self) -> None:
        self._tables = {iv.name: {} for iv in self.intervals}
        self._index = {iv.name: {} for iv in self.intervals}
        self._symbol_ttl: dict[str, int] = {}  # symbol -> largest ttl of its candles
        self._running = True

    async def stop(self) -> None:
        self._running = False

    async def ping(self) -> None:
        if not self._running:
            raise StoreError("memory store is not started")

    async def upsert(self, candles: Sequence[Candle]) -> int:
        changed = 0
        for candle in candles:
            rows = self._tables[candle.interval].setdefault(candle.symbol, {})
            held = rows.get(candle.timestamp)
            if held is not None and held.revision > candle.revision:
                continue
            if held is None:
                insort(self._index[candle.interval].setdefault(candle.symbol, []), candle.timestamp)
            rows[candle.timestamp] = candle
            changed += 1
            if self._symbol_ttl.get(candle.symbol, -1) < candle.ttl:
                self._symbol_ttl[candle.symbol] = candle.ttl
        return changed

    async def query(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        order: Order = "asc",
    ) -> list[Candle]:
        times = self._index[interval.name].get(symbol, [])
        rows = self._tables[interval.name].get(symbol, {})
        lo = 0 if start_ms is None else bisect_left(times, start_ms)
        hi = len(times) if end_ms is None else bisect_left(times, end_ms)
        selected = times[lo:hi] if order == "asc" else times[lo:hi][::-1]
        now_s = self.now_s()
        out: list[Candle] = []
        for ts in selected:
            candle = rows[ts]
            if candle.ttl > now_s:
                out.append(candle)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def get_candles(
        self, interval: Interval, keys: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], Candle]:
        table = self._tables[interval.name]
        found = {}
        for symbol, ts in keys:
            candle = table.get(symbol, {}).get(ts)
            if candle is not None:
                found[(symbol, ts)] = candle
        return found

    async def forming(self, interval: Interval) -> list[Candle]:
        table = self._tables[interval.name]
        return [c for rows in table.values() for c in rows.values() if not c.final]

    async def bars_between(self, symbol: str, start_ms: int, end_ms: int) -> list[Bar]:
        minute = self.intervals.items[0].name
        times = self._index[minute].get(symbol, [])
        rows = self._tables[minute].get(symbol, {})
        lo, hi = bisect_left(times, start_ms), bisect_left(times, end_ms)
        return [candle_as_bar(rows[ts]) for ts in times[lo:hi]]

    async def last_bar_times(self, symbols: Sequence[str]) -> dict[str, int | None]:
        index = self._index[self.intervals.items[0].name]
        return {symbol: (index[symbol][-1] if index.get(symbol) else None) for symbol in symbols}

    async def symbols(self) -> list[str]:
        now_s = self.now_s()
        return sorted(symbol for symbol, ttl in self._symbol_ttl.items() if ttl > now_s)

    async def purge_expired(self) -> int:
        now_s = self.now_s()
        purged = 0
        for name, table in self._tables.items():
            for symbol, rows in table.items():
                dead = [ts for ts, candle in rows.items() if candle.ttl <= now_s]
                for ts in dead:
                    del rows[ts]
                    times = self._index[name][symbol]
                    del times[bisect_left(times, ts)]
                purged += len(dead)
        for symbol in [s for s, ttl in self._symbol_ttl.items() if ttl <= now_s]:
            del self._symbol_ttl[symbol]
        return purged
