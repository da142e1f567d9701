"""Exchange-time buckets around both daylight-saving switches, and the session day
(speedlayer/exchange_time.py, docs/design.md#exchange-time-candles). Expected values are written
in New York local time and converted with zoneinfo."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from flink_sql import JobOptions, render
from speedlayer.config import Settings
from speedlayer.errors import ConfigError
from speedlayer.exchange_time import regular_hours
from speedlayer.intervals import NO_BUCKET, ExchangeTime, IntervalSet

NY = ZoneInfo("America/New_York")
IVS = IntervalSet(["1m", "30m", "1h", "2h", "4h", "1d"], exchange=ExchangeTime())


def ny(text: str, fold: int = 0) -> int:
    """Epoch ms of a New York wall time (``fold=1``: the second 01:xx of a fall-back night)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=NY, fold=fold).timestamp() * 1000)


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text + "+00:00").timestamp() * 1000)


# (interval, bar time, expected start, expected end): spring forward 2011-03-13 02:00 EST ->
# 03:00 EDT, fall back 2011-11-06 02:00 EDT -> 01:00 EST.
CASES = [
    ("1h", ny("2011-03-13 01:45"), ny("2011-03-13 01:30"), ny("2011-03-13 03:30")),  # 1h long
    ("1h", ny("2011-03-13 03:10"), ny("2011-03-13 01:30"), ny("2011-03-13 03:30")),
    ("1h", ny("2011-03-13 03:30"), ny("2011-03-13 03:30"), ny("2011-03-13 04:30")),
    ("2h", ny("2011-03-13 01:59"), ny("2011-03-13 01:30"), ny("2011-03-13 03:30")),  # 1h long
    ("4h", ny("2011-03-13 04:00"), ny("2011-03-13 01:30"), ny("2011-03-13 05:30")),  # 3h long
    ("4h", ny("2011-03-14 10:00"), ny("2011-03-14 09:30"), ny("2011-03-14 13:30")),
    ("1h", ny("2011-11-06 01:40"), ny("2011-11-06 01:30"), ny("2011-11-06 01:30", fold=1)),
    ("1h", ny("2011-11-06 01:10", 1), ny("2011-11-06 01:30"), ny("2011-11-06 01:30", 1)),
    ("1h", ny("2011-11-06 01:40", 1), ny("2011-11-06 01:30", 1), ny("2011-11-06 02:30")),
    ("4h", ny("2011-11-06 01:10", 1), ny("2011-11-06 01:30"), ny("2011-11-06 01:30", 1)),
    ("4h", ny("2011-11-06 04:00"), ny("2011-11-06 01:30", 1), ny("2011-11-06 05:30")),  # 4h
    ("4h", ny("2011-11-07 09:30"), ny("2011-11-07 09:30"), ny("2011-11-07 13:30")),
    ("30m", ny("2011-11-07 09:59"), ny("2011-11-07 09:30"), ny("2011-11-07 10:00")),
]


@pytest.mark.parametrize(("name", "t", "start", "end"), CASES)
def test_wall_clock_buckets_across_dst(name: str, t: int, start: int, end: int) -> None:
    iv = IVS.get(name)
    assert iv.bucket_start(t) == start
    assert iv.bucket_end(start) == end
    assert iv.bucket_starts(np.array([t], dtype=np.int64)).tolist() == [start]
    assert iv.bucket_ends(np.array([start], dtype=np.int64)).tolist() == [end]


def test_every_minute_of_a_switch_week_is_in_one_contiguous_bucket() -> None:
    for week in ("2011-03-10 00:00", "2011-11-03 00:00"):
        minutes = np.arange(ny(week), ny(week) + 7 * 86_400_000, 60_000, dtype=np.int64)
        for iv in IVS:
            if iv.frame != "wall":
                continue
            starts = iv.bucket_starts(minutes)
            ends = iv.bucket_ends(starts)
            assert ((starts <= minutes) & (minutes < ends)).all()
            unique = np.unique(starts)
            assert (iv.bucket_ends(unique)[:-1] == unique[1:]).all()  # no gaps, no overlaps
            assert [iv.bucket_start(int(t)) for t in minutes[::61]] == starts[::61].tolist()


def test_session_day() -> None:
    day = IVS.get("1d")
    assert day.bucket_start(utc("2008-03-07 15:00")) == utc("2008-03-07 14:30")  # EST
    assert day.bucket_end(utc("2008-03-07 14:30")) == utc("2008-03-07 21:00")
    assert day.bucket_start(utc("2008-03-10 13:30")) == utc("2008-03-10 13:30")  # EDT
    assert day.bucket_start(utc("2008-03-10 13:29")) == NO_BUCKET  # pre-market
    assert day.bucket_start(utc("2008-03-10 20:00")) == NO_BUCKET  # the close is exclusive
    assert day.bucket_start(utc("2008-03-08 15:00")) == NO_BUCKET  # Saturday
    assert day.bucket_start(ny("2015-12-25 10:00")) == NO_BUCKET  # Christmas
    assert day.bucket_end(ny("2015-12-24 09:30")) == ny("2015-12-24 13:00")  # early close
    assert day.ttl(ny("2015-12-24 09:30")) == ny("2015-12-24 13:00") // 1000 + 5 * 365 * 86_400
    times = np.array([utc("2008-03-07 15:00"), utc("2008-03-08 15:00")], dtype=np.int64)
    assert day.bucket_starts(times).tolist() == [utc("2008-03-07 14:30"), NO_BUCKET]
    with pytest.raises(ValueError, match="not the open"):
        day.bucket_end(utc("2008-03-07 15:00"))


def test_local_days_for_daily_bars() -> None:
    """A session's trading day (as TradingView stamps daily bars: the date at 00:00 UTC), and
    back: ``day_start`` is the first instant of that local date, also where a switch skipped
    local midnight (Sao Paulo, 2018-11-04 00:00 -> 01:00) and east of UTC (a Sydney open is
    the previous UTC day)."""
    new_york = ExchangeTime()
    assert new_york.local_day(ny("2011-03-14 09:30")) == utc("2011-03-14 00:00")
    assert new_york.local_day(ny("2011-03-14 23:59")) == utc("2011-03-14 00:00")  # 03:59Z next
    assert new_york.day_start(utc("2011-03-14 00:00")) == ny("2011-03-14 00:00")  # 04:00Z, EDT
    assert new_york.day_start(utc("2011-03-11 00:00")) == ny("2011-03-11 00:00")  # 05:00Z, EST
    sydney = ExchangeTime(zone="Australia/Sydney")
    assert sydney.local_day(utc("2024-01-04 23:00")) == utc("2024-01-05 00:00")  # 10:00 AEDT
    assert sydney.day_start(utc("2024-01-05 00:00")) == utc("2024-01-04 13:00")
    sao_paulo = ExchangeTime(zone="America/Sao_Paulo")
    start = sao_paulo.day_start(utc("2018-11-04 00:00"))
    assert start == utc("2018-11-04 03:00")  # 23:59:59.999 -03 on the 3rd, then 01:00 -02
    assert sao_paulo.local_day(start - 1) == utc("2018-11-03 00:00")
    assert sao_paulo.local_day(start) == utc("2018-11-04 00:00")


def test_regular_hours() -> None:
    assert regular_hours("XNYS") == (time(9, 30), time(16, 0))
    assert regular_hours("XLON") == (time(8, 0), time(16, 30))
    with pytest.raises(ConfigError, match="unknown exchange calendar"):
        regular_hours("NOPE")


def test_settings() -> None:
    plain = Settings(intervals=["1h", "1d"])
    assert all(iv.frame == "utc" for iv in plain.interval_set)
    aligned = Settings(intervals=["15m", "1h", "1d"], candle_alignment="exchange")
    assert [iv.frame for iv in aligned.interval_set] == ["utc", "utc", "wall", "session"]
    with pytest.raises(ValueError, match="around the clock"):
        Settings(candle_alignment="exchange", polygon_market="crypto")
    with pytest.raises((ValueError, ConfigError), match="not supported with exchange"):
        Settings(intervals=["1h", "2d"], candle_alignment="exchange")
    with pytest.raises((ValueError, ConfigError), match="unknown exchange calendar"):
        Settings(intervals=["1d"], candle_alignment="exchange", exchange_calendar="NOPE")
    with pytest.raises((ValueError, ConfigError), match="unknown time zone"):
        Settings(candle_alignment="exchange", exchange_timezone="Mars/Olympus")
    with pytest.raises((ValueError, ConfigError), match="session anchor"):
        Settings(candle_alignment="exchange", session_anchor="9h30")


def test_flink_job_refuses_exchange_alignment() -> None:
    with pytest.raises(ConfigError, match="exchange-aligned"):
        render(IVS, JobOptions())
