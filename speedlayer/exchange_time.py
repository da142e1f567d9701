"""Exchange-time buckets: hour intervals on the exchange's wall clock and the session day.

With ``SPEEDLAYER_CANDLE_ALIGNMENT=exchange`` (docs/design.md#exchange-time-candles):

* an interval of an hour or more, below a day, has its buckets on the exchange's wall clock,
  anchored at the session open: ``09:30 + k * size`` local (1h: 09:30, 10:30, ...; 4h: 01:30,
  05:30, 09:30, 13:30, ...). A bucket boundary is every instant at which the local clock shows
  such a time, so a bucket holding a daylight-saving switch is shorter: the 1h the clock skips
  (spring) or repeats (fall) is cut out of one bucket (a 2h or 4h interval gets one bucket an
  hour short; 1h buckets stay an hour long, as the switch is a whole hour);
* the ``1d`` interval is the exchange's regular session from its calendar (``XNYS``: 09:30 to
  16:00 New York, early closes honoured): the bucket starts at the session open, ends at its
  close, and bars outside every session are in no ``1d`` candle (they stay in the intraday ones).

Starts and ends stay epoch milliseconds UTC. The time-zone table is read from ``zoneinfo`` once
per zone (offset changes from 1970 to 2100), the sessions from ``exchange_calendars``, which
is imported only when a session interval is used.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from speedlayer.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Ints = npt.NDArray[np.int64]

MINUTE_MS = 60_000
DAY_MS = 24 * 60 * MINUTE_MS
DEFAULT_ZONE = "America/New_York"
DEFAULT_CALENDAR = "XNYS"
DEFAULT_ANCHOR = "09:30"
# A bar in no bucket of an interval (outside every session of the ``1d`` session interval).
NO_BUCKET = -(2**63)
SESSIONS_FROM = "1990-01-02"  # the first session the calendar is built from

_TABLE_FROM = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TABLE_DAYS = 130 * 366


def parse_anchor(text: str) -> int:
    """``09:30`` -> milliseconds after local midnight."""
    hours, sep, minutes = text.strip().partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit()) or int(hours) > 23 or int(minutes) > 59:
        raise ConfigError(f"invalid session anchor {text!r}: expected HH:MM, e.g. 09:30")
    return (int(hours) * 60 + int(minutes)) * MINUTE_MS


@dataclass(frozen=True, slots=True)
class ZoneTable:
    """A time zone's UTC offsets: ``offsets[i]`` (ms) holds from ``starts[i]`` (epoch ms) on."""

    starts: tuple[int, ...]
    offsets: tuple[int, ...]


@lru_cache(maxsize=8)
def zone_table(zone: str) -> ZoneTable:
    try:
        info = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {zone!r}: expected e.g. America/New_York") from None

    def offset_ms(seconds: int) -> int:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC).astimezone(info)
        delta = moment.utcoffset()
        return 0 if delta is None else int(delta.total_seconds() * 1000)

    first = int(_TABLE_FROM.timestamp())
    starts = [-(2**62)]
    offsets = [offset_ms(first)]
    previous_s, previous = first, offsets[0]
    for day in range(1, _TABLE_DAYS):
        now_s = first + day * 86_400
        now = offset_ms(now_s)
        if now != previous:
            lo, hi = previous_s, now_s  # offset(lo) == previous, offset(hi) != previous
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset_ms(mid) == previous:
                    lo = mid
                else:
                    hi = mid
            starts.append(hi * 1000)
            offsets.append(offset_ms(hi))
        previous_s, previous = now_s, now
    return ZoneTable(tuple(starts), tuple(offsets))


@dataclass(frozen=True, slots=True)
class Sessions:
    """An exchange's regular sessions: ``[opens[i], closes[i])``, epoch ms, ascending."""

    opens: tuple[int, ...]
    closes: tuple[int, ...]
    close_of: dict[int, int]


def _calendar(name: str, needed_by: str, **options: Any) -> Any:
    """``exchange_calendars``' calendar ``name``; a ConfigError saying what needs it when the
    package is missing, or what names it knows when the name is unknown."""
    try:
        import exchange_calendars  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ConfigError(
            f"{needed_by} the exchange_calendars package: "
            "pip install -c constraints.txt 'speedlayer[exchange]'"
        ) from None
    try:
        return exchange_calendars.get_calendar(name, **options)
    except exchange_calendars.errors.InvalidCalendarName:
        raise ConfigError(
            f"unknown exchange calendar {name!r}: expected e.g. XNYS, XNAS, XLON"
        ) from None


@lru_cache(maxsize=4)
def sessions(calendar: str) -> Sessions:
    cal = _calendar(calendar, "the session 1d interval needs", start=SESSIONS_FROM)
    schedule = cal.schedule
    opens = tuple(int(x) for x in schedule["open"].dt.as_unit("ms").astype("int64"))
    closes = tuple(int(x) for x in schedule["close"].dt.as_unit("ms").astype("int64"))
    return Sessions(opens, closes, dict(zip(opens, closes, strict=True)))


@lru_cache(maxsize=4)
def regular_hours(calendar: str) -> tuple[dt.time, dt.time]:
    """The local open and close of the exchange's regular session today (its calendar's latest
    regime, ignoring early closes): ``XNYS`` -> 09:30, 16:00."""
    cal = _calendar(calendar, "the exchange's trading hours need")
    return cal.open_times[-1][1], cal.close_times[-1][1]


@dataclass(frozen=True, slots=True)
class ExchangeTime:
    """Where exchange-aligned buckets come from: the zone, the session anchor, the calendar."""

    zone: str = DEFAULT_ZONE
    anchor_ms: int = 570 * MINUTE_MS
    calendar: str = DEFAULT_CALENDAR

    def check(self, with_sessions: bool) -> None:
        """Load what the intervals need now, so a bad zone or calendar fails at start."""
        zone_table(self.zone)
        if with_sessions:
            sessions(self.calendar)

    # -- wall-clock buckets (an hour or more, below a day) ------------------------------------

    def wall_start(self, t: int, size: int) -> int:
        """Start of the wall-clock bucket of ``size`` ms holding ``t`` (the latest instant at or
        before ``t`` at which the local clock shows ``anchor + k * size``)."""
        table = zone_table(self.zone)
        i = bisect_right(table.starts, t) - 1
        offset = table.offsets[i]
        wall = t + offset
        start = wall - (wall - self.anchor_ms) % size - offset
        if start >= table.starts[i] or i == 0:
            return start
        # The regime began after that grid time: the latest grid time of the previous offset.
        previous = table.offsets[i - 1]
        wall = table.starts[i] - 1 + previous
        return wall - (wall - self.anchor_ms) % size - previous

    def wall_starts(self, t: Ints, size: int) -> Ints:
        """``wall_start`` of every element."""
        import numpy as np

        table = zone_table(self.zone)
        starts = np.asarray(table.starts, dtype=np.int64)
        offsets = np.asarray(table.offsets, dtype=np.int64)
        i = np.searchsorted(starts, t, side="right") - 1
        offset = offsets[i]
        wall = t + offset
        start = wall - (wall - self.anchor_ms) % size - offset
        early = (start < starts[i]) & (i > 0)
        if early.any():
            j = i[early]
            previous = offsets[j - 1]
            wall = starts[j] - 1 + previous
            start[early] = wall - (wall - self.anchor_ms) % size - previous
        return start

    # -- local dates ---------------------------------------------------------------------------

    def local_day(self, t_ms: int) -> int:
        """The exchange's local date at ``t_ms``, as that date's 00:00 UTC (epoch ms): how
        charting libraries stamp a daily bar (a session opening 2024-03-05 09:30 New York ->
        2024-03-05T00:00Z)."""
        table = zone_table(self.zone)
        wall = t_ms + table.offsets[bisect_right(table.starts, t_ms) - 1]
        return wall - wall % DAY_MS

    def day_start(self, day_ms: int) -> int:
        """The first instant of the local date ``day_ms`` (given as its 00:00 UTC, epoch ms):
        ``local_day(t) >= day_ms`` exactly when ``t >= day_start(day_ms)``."""
        table = zone_table(self.zone)
        lo = max(bisect_right(table.starts, day_ms - 2 * DAY_MS) - 1, 0)
        hi = bisect_right(table.starts, day_ms + 2 * DAY_MS)
        for offset in sorted(set(table.offsets[lo:hi]), reverse=True):  # earliest instant first
            start = day_ms - offset
            if table.offsets[bisect_right(table.starts, start) - 1] == offset:
                return start
        # A switch skipped local midnight: the date starts at the switch.
        return next(s for s in table.starts[lo + 1 : hi] if self.local_day(s) >= day_ms)

    # -- session days --------------------------------------------------------------------------

    def session_start(self, t: int) -> int:
        """The open of the session holding ``t``, or ``NO_BUCKET`` outside every session."""
        table = sessions(self.calendar)
        i = bisect_right(table.opens, t) - 1
        if i < 0 or t >= table.closes[i]:
            return NO_BUCKET
        return table.opens[i]

    def session_starts(self, t: Ints) -> Ints:
        import numpy as np

        table = sessions(self.calendar)
        opens = np.asarray(table.opens, dtype=np.int64)
        closes = np.asarray(table.closes, dtype=np.int64)
        i = np.searchsorted(opens, t, side="right") - 1
        inside = (i >= 0) & (t < closes[np.maximum(i, 0)])
        return np.where(inside, opens[np.maximum(i, 0)], NO_BUCKET)

    def session_end(self, start: int) -> int:
        """The close of the session opening at ``start``."""
        close = sessions(self.calendar).close_of.get(start)
        if close is None:
            raise ValueError(f"{start} is not the open of a {self.calendar} session")
        return close

    def session_ends(self, start: Ints) -> Ints:
        import numpy as np

        table = sessions(self.calendar)
        opens = np.asarray(table.opens, dtype=np.int64)
        closes = np.asarray(table.closes, dtype=np.int64)
        i = np.searchsorted(opens, start, side="left")
        i = np.minimum(i, len(opens) - 1)
        if not np.array_equal(opens[i], start):
            raise ValueError(f"not every start is the open of a {self.calendar} session")
        return closes[i]
