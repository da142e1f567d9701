"""Which candles the Kinesis Lambdas accept as on their bucket boundary
(``processors.kinesis_events.decode_candles``), with exchange-aligned intervals
(docs/design.md#exchange-time-candles): a candle must start where its interval's buckets start
(``Interval.bucket_start``), so a 1h candle starts at :30 New York, a 4h one may start before a
daylight-saving switch and be an hour short, a 1d one starts at a session's open; a candle on
the UTC grid instead, or a 1d candle off the calendar's sessions, is counted and skipped. ``ttl``
comes from the bucket's own end (a session's close, early closes included). Expected times are
written in New York local time and converted with zoneinfo."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from processors.kinesis_events import decode_candles
from speedlayer.bus.wire import encode_item
from speedlayer.intervals import ExchangeTime, IntervalSet
from speedlayer.models import Candle

NY = ZoneInfo("America/New_York")
NAMES = ["1m", "5m", "1h", "4h", "1d"]
EXCHANGE = IntervalSet(NAMES, exchange=ExchangeTime())
UTC_GRID = IntervalSet(NAMES)
DAY_S = 86_400
RETENTION_S = {"5m": 7 * DAY_S, "1h": 90 * DAY_S, "4h": 90 * DAY_S, "1d": 5 * 365 * DAY_S}


def ny(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=NY).timestamp() * 1000)


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text + "+00:00").timestamp() * 1000)


def candle(interval: str, timestamp: int) -> Candle:
    """A candle update whose ``ttl`` is wrong on purpose (the decoder sets it)."""
    return Candle("AAPL", interval, timestamp, 10.0, 11.0, 9.5, 10.5, 300.0, None, None, 3,
                  False, 1, 1)  # fmt: skip


def event(candles: list[Candle]) -> dict[str, Any]:
    """A Kinesis event as the event source mapping delivers it."""
    return {
        "Records": [
            {
                "kinesis": {
                    "partitionKey": c.symbol,
                    "sequenceNumber": str(1000 + i),
                    "data": base64.b64encode(encode_item(c)).decode(),
                }
            }
            for i, c in enumerate(candles)
        ]
    }


# (interval, start, end of its bucket): accepted with exchange alignment, ttl = end + retention
ON_BOUNDARY = [
    ("1h", ny("2024-01-02 09:30"), ny("2024-01-02 10:30")),
    ("1h", ny("2024-01-02 04:30"), ny("2024-01-02 05:30")),  # pre-market: still the clock's grid
    ("4h", ny("2011-03-13 01:30"), ny("2011-03-13 05:30")),  # spring forward: 3 hours long
    ("4h", ny("2024-01-02 13:30"), ny("2024-01-02 17:30")),
    ("1d", ny("2024-01-02 09:30"), ny("2024-01-02 16:00")),  # a session
    ("1d", ny("2015-12-24 09:30"), ny("2015-12-24 13:00")),  # an early close
    ("5m", utc("2024-01-02 14:35"), utc("2024-01-02 14:40")),  # below an hour: unchanged
]
# (interval, start) that is no bucket start with exchange alignment
OFF_BOUNDARY = [
    ("1h", utc("2024-01-02 14:00")),  # the UTC hour (09:00 New York)
    ("4h", utc("2024-01-02 12:00")),  # the UTC 4-hour grid
    ("1d", utc("2024-01-02 00:00")),  # the UTC day
    ("1d", ny("2024-01-02 10:00")),  # inside the session, not its open
    ("1d", ny("2024-01-06 09:30")),  # a Saturday: no session
    ("1d", ny("2015-12-25 09:30")),  # Christmas
    ("5m", utc("2024-01-02 14:37")),
]


@pytest.mark.parametrize(("interval", "start", "end"), ON_BOUNDARY)
def test_exchange_aligned_candles_are_accepted_with_ttl_from_their_bucket(
    interval: str, start: int, end: int
) -> None:
    batch = decode_candles(event([candle(interval, start)]), EXCHANGE)
    assert batch.skipped_total == 0, batch.skipped
    ((index, item),) = batch.items
    assert index == 0 and item.timestamp == start
    assert item.ttl == end // 1000 + RETENTION_S[interval]


def test_candles_off_the_exchange_buckets_are_counted_and_skipped() -> None:
    good = candle("1h", ny("2024-01-02 10:30"))
    batch = decode_candles(event([candle(i, t) for i, t in OFF_BOUNDARY] + [good]), EXCHANGE)
    assert dict(batch.skipped) == {"not_on_bucket_boundary": len(OFF_BOUNDARY)}
    assert [(index, item.timestamp) for index, item in batch.items] == [
        (len(OFF_BOUNDARY), good.timestamp)
    ]


def test_the_boundary_is_the_configured_alignment() -> None:
    """The same candles the other way round on UTC-aligned intervals."""
    exchange_hour, utc_hour = (
        candle("1h", ny("2024-01-02 09:30")),
        candle("1h", utc("2024-01-02 14:00")),
    )
    batch = decode_candles(event([exchange_hour, utc_hour]), UTC_GRID)
    assert dict(batch.skipped) == {"not_on_bucket_boundary": 1}
    assert [item.timestamp for _, item in batch.items] == [utc_hour.timestamp]
