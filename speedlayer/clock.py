"""The clock that candle logic reads "now" from: injected into the resampler, the pipeline, the
stores (TTL), the feed and the API, so a simulated market (``SimulatedClock`` of the simulator)
or a test (:class:`ManualClock`) moves time for all of them. Wall time is still read directly
where it is not market time: metric timestamps, log rates, checkpoint bookkeeping, and timeouts
and backoff (``time.monotonic``)."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to (tests, deterministic replays)."""

    def __init__(self, now_ms: int = 0) -> None:
        self._now_ms = now_ms

    def now_ms(self) -> int:
        return self._now_ms

    def set(self, now_ms: int) -> None:
        self._now_ms = now_ms

    def advance(self, delta_ms: int) -> None:
        self._now_ms += delta_ms
