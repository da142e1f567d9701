"""The Store interface: candles per (symbol, interval, bucket start), with TTL.

Every backend keeps one table per interval keyed by (symbol, timestamp), upserts idempotently
(a write never replaces a higher revision), never returns a candle whose ``ttl`` has passed
(even before it is purged) and exposes the 1-minute table as the durable record of bars.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from speedlayer.clock import Clock
from speedlayer.intervals import Interval, IntervalSet
from speedlayer.models import Bar, Candle

if TYPE_CHECKING:
    from speedlayer.columns import CandleColumns

Order = Literal["asc", "desc"]


class Store(ABC):
    """Lifecycle: ``await start()`` / ``await stop()`` or ``async with``; no I/O in ``__init__``."""

    def __init__(self, intervals: IntervalSet, clock: Clock) -> None:
        self.intervals = intervals
        self.clock = clock

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def now_s(self) -> int:
        return self.clock.now_ms() // 1000

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def upsert(self, candles: Sequence[Candle]) -> int:
        """Write candles of any intervals in one batch; return how many rows changed.

        A candle replaces the stored one for its key unless the stored revision is higher, so
        replays and duplicated deliveries converge.
        """

    async def upsert_columns(
        self, columns: Sequence[CandleColumns], names: Sequence[str], slice_rows: int = 50_000
    ) -> int:
        """``upsert`` of candles given as columns (``speedlayer.columns``; ``names[code]`` is a
        code's symbol), written in their order, ``slice_rows`` made into rows at a time (memory:
        a slice, not the call). Backends that can write rows straight from the columns override
        this; the default makes ``Candle`` structs and upserts each slice after the last."""
        from speedlayer.columns import to_candles  # numpy: only the replay command writes columns

        changed = 0
        for cc in columns:
            for at in range(0, len(cc), max(slice_rows, 1)):
                changed += await self.upsert(to_candles([cc.slice(at, at + slice_rows)], names))
        return changed

    @abstractmethod
    async def query(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        order: Order = "asc",
    ) -> list[Candle]:
        """Unexpired candles with ``start_ms <= timestamp < end_ms``, in ``order`` of time."""

    @abstractmethod
    async def get_candles(
        self, interval: Interval, keys: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], Candle]:
        """Stored candles for (symbol, timestamp) keys, expired or not (state for the resampler)."""

    @abstractmethod
    async def forming(self, interval: Interval) -> list[Candle]:
        """Stored candles not yet final (to resume finalizing them after a restart)."""

    @abstractmethod
    async def bars_between(self, symbol: str, start_ms: int, end_ms: int) -> list[Bar]:
        """The 1-minute bars of ``symbol`` with ``start_ms <= t < end_ms``, oldest first."""

    @abstractmethod
    async def last_bar_times(self, symbols: Sequence[str]) -> dict[str, int | None]:
        """Start of the latest stored 1-minute bar of each symbol (None when there is none)."""

    @abstractmethod
    async def symbols(self) -> list[str]:
        """Symbols with unexpired candles in any interval, sorted."""

    @abstractmethod
    async def purge_expired(self) -> int:
        """Delete candles whose ttl has passed; return how many were deleted."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the store cannot serve requests."""

    def data_version(self) -> Hashable | None:
        """A token equal to an earlier one only if no candle has been written or purged in
        between, by this process or any other (what lets a reader reuse what it read); None when
        the backend cannot tell, so nothing read from it may be reused."""
        return None
