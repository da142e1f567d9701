"""Candle intervals and bucket math.

Buckets start at multiples of the interval since the Unix epoch, in UTC. An interval is any whole
number of minutes, hours or days; the default set is ``1m 5m 15m 30m 1h 2h 4h`` (docs/design.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from speedlayer.errors import ConfigError

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
    interval_ms: int
    retention_s: int

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
        """Start (epoch ms) of the bucket holding ``t_ms``."""
        return t_ms - t_ms % self.interval_ms

    def ttl(self, start_ms: int) -> int:
        """Expiry (epoch seconds) of the candle starting at ``start_ms``: end + retention."""
        return (start_ms + self.interval_ms) // 1000 + self.retention_s


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


def default_retention_s(interval_ms: int) -> int:
    """Default retention: up to 5m 7 days, up to 30m 30 days, longer intervals 90 days."""
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


class IntervalSet:
    """The configured intervals, ordered from shortest to longest, with their retention.

    ``1m`` is always present: the 1-minute table is the durable record of the bars themselves,
    from which the resampler rebuilds open buckets after a restart.
    """

    def __init__(
        self, names: list[str] | tuple[str, ...], retention: dict[str, str | int] | None = None
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
            if interval_ms in overrides:
                retention_s = overrides[interval_ms]
            elif default_override is not None:
                retention_s = parse_duration_s(default_override)
            else:
                retention_s = default_retention_s(interval_ms)
            items.append(Interval(by_ms[interval_ms], interval_ms, retention_s))
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
