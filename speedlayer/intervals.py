"""Candle intervals and bucket math.

Buckets start at multiples of the interval since the Unix epoch, in UTC. An interval is any whole
number of minutes, hours or days; the default set is ``1m 5m 15m 30m 1h 2h 4h`` (docs/design.md).
With exchange alignment (``IntervalSet(..., exchange=ExchangeTime(...))``) the intervals of an hour
or more are on the exchange's wall clock and ``1d`` is the exchange's session
(``speedlayer.exchange_time``, docs/design.md#exchange-time-candles). Every bucket computation
goes through ``Interval``: ``bucket_start`` / ``bucket_starts`` (numpy) and ``bucket_end`` /
``bucket_ends``, since a bucket's end is not always its start plus the interval.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from speedlayer.errors import ConfigError
from speedlayer.exchange_time import NO_BUCKET, ExchangeTime

if TYPE_CHECKING:
    from speedlayer.exchange_time import Ints

__all__ = ["NO_BUCKET", "ExchangeTime", "Interval", "IntervalSet"]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
DAY_S = 86_400

TABLE_PREFIX = "speed_layer_ohlcv_"
DEFAULT_INTERVALS: tuple[str, ...] = ("1m", "5m", "15m", "30m", "1h", "2h", "4h")

_UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
_UNIT_ALIASES = {
    "m": "m", "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "h": "h", "hr": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
}  # fmt: skip
_INTERVAL_RE = re.compile(r"^\s*(\d{1,4})\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class Interval:
    """A candle interval: ``name`` is the short output form (``15m``, ``1h``, ``1d``)."""

    name: str
    interval_ms: int  # the nominal size (a session's 1d is DAY_MS)
    retention_s: int
    # utc: multiples of the interval since the epoch; wall: the exchange's wall clock, anchored
    # at the session open; session: the exchange's regular sessions (``exchange`` says which).
    frame: Literal["utc", "wall", "session"] = "utc"
    exchange: ExchangeTime | None = None

    @property
    def utc_aligned(self) -> bool:
        """Buckets are ``[t - t % interval_ms, + interval_ms)`` (the inline fast path)."""
        return self.frame == "utc"

    @property
    def table_suffix(self) -> str:
        """The tables' naming: minutes as ``Nmin``, hours and days as ``Nh`` / ``Nd``."""
        if self.name.endswith("m"):
            return self.name[:-1] + "min"
        return self.name

    @property
    def table(self) -> str:
        """The table name for this interval (SQLite table, DynamoDB table)."""
        return TABLE_PREFIX + self.table_suffix

    def bucket_start(self, t_ms: int) -> int:
        """Start (epoch ms) of the bucket holding ``t_ms``; ``NO_BUCKET`` when no bucket holds
        it (a session interval, outside every session)."""
        if self.exchange is None or self.frame == "utc":
            return t_ms - t_ms % self.interval_ms
        if self.frame == "wall":
            return self.exchange.wall_start(t_ms, self.interval_ms)
        return self.exchange.session_start(t_ms)

    def bucket_starts(self, t_ms: Ints) -> Ints:
        """``bucket_start`` of every element of an int64 array."""
        if self.exchange is None or self.frame == "utc":
            return t_ms - t_ms % self.interval_ms
        if self.frame == "wall":
            return self.exchange.wall_starts(t_ms, self.interval_ms)
        return self.exchange.session_starts(t_ms)

    def bucket_end(self, start_ms: int) -> int:
        """End (epoch ms, exclusive) of the bucket starting at ``start_ms``."""
        if self.exchange is None or self.frame == "utc":
            return start_ms + self.interval_ms
        if self.frame == "wall":
            # Every bucket is at most the interval long and the next one is a full one.
            return self.exchange.wall_start(start_ms + self.interval_ms, self.interval_ms)
        return self.exchange.session_end(start_ms)

    def bucket_ends(self, start_ms: Ints) -> Ints:
        """``bucket_end`` of every element of an int64 array of bucket starts."""
        if self.exchange is None or self.frame == "utc":
            return start_ms + self.interval_ms
        if self.frame == "wall":
            return self.exchange.wall_starts(start_ms + self.interval_ms, self.interval_ms)
        return self.exchange.session_ends(start_ms)

    def ttl(self, start_ms: int) -> int:
        """Expiry (epoch seconds) of the candle starting at ``start_ms``: end + retention."""
        return self.bucket_end(start_ms) // 1000 + self.retention_s


def canonical_name(text: str) -> tuple[str, int]:
    """Parse ``15m``, ``15min``, ``60m``, ``1h``, ``1d`` into (short name, interval_ms).

    Minute multiples of an hour are written in hours (``60m`` -> ``1h``), hour multiples of a day
    in days, so each interval has exactly one output name.
    """
    match = _INTERVAL_RE.match(text.lower())
    unit = _UNIT_ALIASES.get(match.group(2)) if match else None
    if match is None or unit is None:
        raise ConfigError(
            f"invalid interval {text!r}: expected a number and a unit, e.g. 15m, 1h, 1d"
        )
    count = int(match.group(1))
    if count <= 0:
        raise ConfigError(f"invalid interval {text!r}: must be positive")
    interval_ms = count * _UNIT_MS[unit]
    return name_for_ms(interval_ms), interval_ms


def name_for_ms(interval_ms: int) -> str:
    if interval_ms % DAY_MS == 0:
        return f"{interval_ms // DAY_MS}d"
    if interval_ms % HOUR_MS == 0:
        return f"{interval_ms // HOUR_MS}h"
    return f"{interval_ms // MINUTE_MS}m"


SESSION_RETENTION_S = 5 * 365 * DAY_S


def default_retention_s(interval_ms: int, frame: str = "utc") -> int:
    """Default retention: up to 5m 7 days, up to 30m 30 days, longer intervals 90 days; the
    session ``1d`` (one candle per symbol and trading day) 5 years."""
    if frame == "session":
        return SESSION_RETENTION_S
    if interval_ms <= 5 * MINUTE_MS:
        return 7 * DAY_S
    if interval_ms <= 30 * MINUTE_MS:
        return 30 * DAY_S
    return 90 * DAY_S


_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": DAY_S, "w": 7 * DAY_S, "y": 365 * DAY_S}


def parse_duration_s(text: str | int) -> int:
    """``30d``, ``12h``, ``90m``, ``10y`` or a plain number of seconds -> seconds."""
    if isinstance(text, int):
        seconds = text
    elif text.strip().isdigit():
        seconds = int(text)
    else:
        match = _DURATION_RE.match(text.lower())
        if match is None:
            raise ConfigError(f"invalid duration {text!r}: expected e.g. 7d, 12h, 90m, 10y")
        seconds = int(match.group(1)) * _DURATION_S[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"invalid duration {text!r}: must be positive")
    return seconds


def _frame(interval_ms: int, exchange: ExchangeTime | None) -> Literal["utc", "wall", "session"]:
    if exchange is None or interval_ms < HOUR_MS:
        return "utc"
    if interval_ms < DAY_MS:
        return "wall"
    if interval_ms == DAY_MS:
        return "session"
    raise ConfigError(
        f"interval {name_for_ms(interval_ms)!r} is not supported with exchange alignment "
        "(the longest is 1d, the exchange's session)"
    )


class IntervalSet:
    """The configured intervals, ordered from shortest to longest, with their retention.

    ``1m`` is always present: the 1-minute table is the durable record of the bars themselves,
    from which the resampler rebuilds open buckets after a restart. With ``exchange``, intervals
    from an hour up to below a day are on the exchange's wall clock and ``1d`` is its session;
    longer intervals are refused.
    """

    def __init__(
        self,
        names: list[str] | tuple[str, ...],
        retention: dict[str, str | int] | None = None,
        exchange: ExchangeTime | None = None,
    ):
        retention = dict(retention or {})
        default_override = retention.pop("*", None)
        overrides: dict[int, int] = {}
        for key, value in retention.items():
            overrides[canonical_name(key)[1]] = parse_duration_s(value)
        by_ms: dict[int, str] = {MINUTE_MS: "1m"}
        for text in names:
            name, interval_ms = canonical_name(text)
            by_ms[interval_ms] = name
        unknown = set(overrides) - set(by_ms)
        if unknown:
            raise ConfigError(
                "retention given for intervals that are not configured: "
                + ", ".join(sorted(name_for_ms(ms) for ms in unknown))
            )
        items: list[Interval] = []
        for interval_ms in sorted(by_ms):
            frame = _frame(interval_ms, exchange)
            if interval_ms in overrides:
                retention_s = overrides[interval_ms]
            elif default_override is not None:
                retention_s = parse_duration_s(default_override)
            else:
                retention_s = default_retention_s(interval_ms, frame)
            aligned = exchange if frame != "utc" else None
            items.append(Interval(by_ms[interval_ms], interval_ms, retention_s, frame, aligned))
        if exchange is not None:
            exchange.check(with_sessions=any(iv.frame == "session" for iv in items))
        self.exchange = exchange
        self.items: tuple[Interval, ...] = tuple(items)
        self._by_name = {iv.name: iv for iv in items}

    def __iter__(self) -> Iterator[Interval]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [iv.name for iv in self.items]

    def get(self, text: str) -> Interval:
        """Look up an interval by any accepted spelling; ConfigError if it is not configured."""
        name, _ = canonical_name(text)
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(
                f"interval {text!r} is not configured; available: {', '.join(self.names)}"
            ) from None
