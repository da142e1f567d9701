"""Bucket math, interval names, retention/TTL, durations, time parsing and Settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from speedlayer.config import Settings
from speedlayer.errors import ConfigError
from speedlayer.intervals import (
    DEFAULT_INTERVALS,
    Interval,
    IntervalSet,
    canonical_name,
    parse_duration_s,
)
from speedlayer.timeparse import parse_time_ms

MIN = 60_000
HOUR = 3_600_000
DAY_S = 86_400
# 2023-11-15T00:00:00Z: aligned to every default interval (and to 1d).
T0 = 1_700_006_400_000


def iso_ms(text: str) -> int:
    """Independent of parse_time_ms: ISO 8601 with an explicit offset -> epoch ms."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_t0_is_midnight_utc() -> None:
    assert datetime.fromtimestamp(T0 / 1000, tz=UTC) == datetime(2023, 11, 15, tzinfo=UTC)


DEFAULTS = IntervalSet(list(DEFAULT_INTERVALS))


# -- bucket math --------------------------------------------------------------------------------

BUCKET_CASES = [
    # (interval, t, expected bucket start)
    ("1m", T0, T0),
    ("1m", T0 + 1, T0),
    ("1m", T0 + MIN - 1, T0),
    ("1m", T0 + MIN, T0 + MIN),
    ("1m", T0 - 1, T0 - MIN),
    ("1m", T0 + 7 * MIN + 30_000, T0 + 7 * MIN),
    ("5m", T0, T0),
    ("5m", T0 + 4 * MIN, T0),
    ("5m", T0 + 5 * MIN - 1, T0),
    ("5m", T0 + 5 * MIN, T0 + 5 * MIN),
    ("5m", T0 - 1, T0 - 5 * MIN),
    ("5m", T0 + 13 * MIN, T0 + 10 * MIN),
    ("15m", T0, T0),
    ("15m", T0 + 14 * MIN, T0),
    ("15m", T0 + 15 * MIN - 1, T0),
    ("15m", T0 + 15 * MIN, T0 + 15 * MIN),
    ("15m", T0 - 1, T0 - 15 * MIN),
    ("15m", T0 + 44 * MIN, T0 + 30 * MIN),
    ("30m", T0, T0),
    ("30m", T0 + 29 * MIN, T0),
    ("30m", T0 + 30 * MIN - 1, T0),
    ("30m", T0 + 30 * MIN, T0 + 30 * MIN),
    ("30m", T0 - 1, T0 - 30 * MIN),
    ("30m", T0 + 89 * MIN, T0 + 60 * MIN),
    ("1h", T0, T0),
    ("1h", T0 + 59 * MIN, T0),
    ("1h", T0 + HOUR - 1, T0),
    ("1h", T0 + HOUR, T0 + HOUR),
    ("1h", T0 - 1, T0 - HOUR),
    ("1h", T0 + 13 * HOUR + 47 * MIN, T0 + 13 * HOUR),
    ("2h", T0, T0),
    ("2h", T0 + 119 * MIN, T0),
    ("2h", T0 + 2 * HOUR - 1, T0),
    ("2h", T0 + 2 * HOUR, T0 + 2 * HOUR),
    ("2h", T0 - 1, T0 - 2 * HOUR),
    ("2h", T0 + 13 * HOUR + 47 * MIN, T0 + 12 * HOUR),
    ("4h", T0, T0),
    ("4h", T0 + 239 * MIN, T0),
    ("4h", T0 + 4 * HOUR - 1, T0),
    ("4h", T0 + 4 * HOUR, T0 + 4 * HOUR),
    ("4h", T0 - 1, T0 - 4 * HOUR),
    ("4h", T0 + 13 * HOUR + 47 * MIN, T0 + 12 * HOUR),
    # Epoch alignment near the epoch itself.
    ("4h", 0, 0),
    ("4h", 4 * HOUR - MIN, 0),
    ("1h", 90 * MIN, HOUR),
]


@pytest.mark.parametrize(("name", "t", "expected"), BUCKET_CASES)
def test_bucket_start(name: str, t: int, expected: int) -> None:
    assert DEFAULTS.get(name).bucket_start(t) == expected


@pytest.mark.parametrize(
    ("name", "t_iso", "start_iso"),
    [
        ("1m", "2024-03-10T07:03:59+00:00", "2024-03-10T07:03:00+00:00"),
        ("5m", "2024-03-10T07:04:59+00:00", "2024-03-10T07:00:00+00:00"),
        ("15m", "2024-03-10T07:29:00+00:00", "2024-03-10T07:15:00+00:00"),
        ("30m", "2024-03-10T07:59:00+00:00", "2024-03-10T07:30:00+00:00"),
        ("1h", "2024-03-10T07:59:00+00:00", "2024-03-10T07:00:00+00:00"),
        ("2h", "2024-03-10T07:59:00+00:00", "2024-03-10T06:00:00+00:00"),
        ("4h", "2024-03-10T07:59:00+00:00", "2024-03-10T04:00:00+00:00"),
        # Aligned in UTC, not New York time (this is the DST-change day in the US).
        ("4h", "2024-03-10T03:30:00-05:00", "2024-03-10T08:00:00+00:00"),
        ("1h", "2024-03-10T14:30:00-04:00", "2024-03-10T18:00:00+00:00"),
    ],
)
def test_bucket_start_is_utc_aligned(name: str, t_iso: str, start_iso: str) -> None:
    assert DEFAULTS.get(name).bucket_start(iso_ms(t_iso)) == iso_ms(start_iso)


@pytest.mark.parametrize(
    ("text", "t", "expected"),
    [
        ("3m", T0 + 5 * MIN, T0 + 3 * MIN),
        ("3m", T0 + 6 * MIN - 1, T0 + 3 * MIN),
        ("6h", T0 + 17 * HOUR, T0 + 12 * HOUR),
        ("6h", T0 + 6 * HOUR, T0 + 6 * HOUR),
        ("1d", T0 + 23 * HOUR + 59 * MIN, T0),
        ("1d", T0 + 24 * HOUR, T0 + 24 * HOUR),
    ],
)
def test_bucket_start_configured_intervals(text: str, t: int, expected: int) -> None:
    assert IntervalSet([text]).get(text).bucket_start(t) == expected


# -- names and aliases --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "interval_ms"),
    [
        ("1m", "1m", MIN),
        ("5m", "5m", 5 * MIN),
        ("15m", "15m", 15 * MIN),
        ("30m", "30m", 30 * MIN),
        ("1h", "1h", HOUR),
        ("2h", "2h", 2 * HOUR),
        ("4h", "4h", 4 * HOUR),
        ("1min", "1m", MIN),
        ("5min", "5m", 5 * MIN),
        ("15min", "15m", 15 * MIN),
        ("30min", "30m", 30 * MIN),
        ("60m", "1h", HOUR),
        ("60min", "1h", HOUR),
        ("120m", "2h", 2 * HOUR),
        ("240min", "4h", 4 * HOUR),
        ("3m", "3m", 3 * MIN),
        ("90m", "90m", 90 * MIN),
        ("6h", "6h", 6 * HOUR),
        ("24h", "1d", 24 * HOUR),
        ("1d", "1d", 24 * HOUR),
        ("15M", "15m", 15 * MIN),
        (" 15 min ", "15m", 15 * MIN),
        ("1hour", "1h", HOUR),
    ],
)
def test_canonical_name(text: str, name: str, interval_ms: int) -> None:
    assert canonical_name(text) == (name, interval_ms)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "m",
        "15",
        "0m",
        "0h",
        "-5m",
        "1.5h",
        "15x",
        "15s",
        "1w",
        "m15",
        "15m5",
        "10000m",
        "1 h x",
    ],
)
def test_invalid_interval_raises_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        canonical_name(text)
    with pytest.raises(ConfigError):
        IntervalSet([text])


def test_default_interval_set_names_and_order() -> None:
    assert DEFAULTS.names == ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
    assert [iv.interval_ms for iv in DEFAULTS] == [
        MIN, 5 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 4 * HOUR,
    ]  # fmt: skip
    assert len(DEFAULTS) == 7


def test_aliases_give_the_same_set() -> None:
    aliased = IntervalSet(["1min", "5min", "15min", "30min", "60min", "2h", "4h"])
    assert aliased.names == DEFAULTS.names
    assert list(aliased) == list(DEFAULTS)


def test_interval_set_sorts_dedups_and_always_has_1m() -> None:
    ivs = IntervalSet(["4h", "1d", "60m", "3m", "1h"])
    assert ivs.names == ["1m", "3m", "1h", "4h", "1d"]


@pytest.mark.parametrize(
    ("text", "name"),
    [("1min", "1m"), ("60m", "1h"), ("60min", "1h"), ("15MIN", "15m"), ("4h", "4h")],
)
def test_get_accepts_aliases(text: str, name: str) -> None:
    assert DEFAULTS.get(text).name == name


@pytest.mark.parametrize("text", ["3m", "1d", "6h", "bogus", ""])
def test_get_unconfigured_or_invalid_raises(text: str) -> None:
    with pytest.raises(ConfigError):
        DEFAULTS.get(text)


# -- tables, retention and ttl ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("1m", "speed_layer_ohlcv_1min"),
        ("5m", "speed_layer_ohlcv_5min"),
        ("15m", "speed_layer_ohlcv_15min"),
        ("30m", "speed_layer_ohlcv_30min"),
        ("1h", "speed_layer_ohlcv_1h"),
        ("2h", "speed_layer_ohlcv_2h"),
        ("4h", "speed_layer_ohlcv_4h"),
    ],
)
def test_table_names(name: str, table: str) -> None:
    assert DEFAULTS.get(name).table == table


def test_table_names_are_distinct_for_configured_intervals() -> None:
    ivs = IntervalSet(["3m", "90m", "6h", "1d"])
    tables = [iv.table for iv in ivs]
    assert len(set(tables)) == len(tables)
    assert ivs.get("1d").table == "speed_layer_ohlcv_1d"


DEFAULT_RETENTION_DAYS = {"1m": 7, "5m": 7, "15m": 30, "30m": 30, "1h": 90, "2h": 90, "4h": 90}


@pytest.mark.parametrize(("name", "days"), sorted(DEFAULT_RETENTION_DAYS.items()))
def test_default_retention(name: str, days: int) -> None:
    assert DEFAULTS.get(name).retention_s == days * DAY_S


def test_default_retention_of_configured_intervals() -> None:
    ivs = IntervalSet(["3m", "10m", "45m", "6h", "1d"])
    assert {iv.name: iv.retention_s // DAY_S for iv in ivs} == {
        "1m": 7, "3m": 7, "10m": 30, "45m": 90, "6h": 90, "1d": 90,
    }  # fmt: skip


def test_retention_star_override() -> None:
    ivs = IntervalSet(list(DEFAULT_INTERVALS), {"*": "10y"})
    assert {iv.retention_s for iv in ivs} == {3650 * DAY_S}


def test_retention_per_interval_override_beats_star_and_accepts_aliases() -> None:
    ivs = IntervalSet(list(DEFAULT_INTERVALS), {"*": "1d", "1min": "3d", "60m": "365d", "4h": 7200})
    assert {iv.name: iv.retention_s for iv in ivs} == {
        "1m": 3 * DAY_S, "5m": DAY_S, "15m": DAY_S, "30m": DAY_S,
        "1h": 365 * DAY_S, "2h": DAY_S, "4h": 7200,
    }  # fmt: skip


def test_retention_per_interval_override_keeps_other_defaults() -> None:
    ivs = IntervalSet(list(DEFAULT_INTERVALS), {"15m": "12h"})
    expected = {name: days * DAY_S for name, days in DEFAULT_RETENTION_DAYS.items()}
    expected["15m"] = 12 * 3600
    assert {iv.name: iv.retention_s for iv in ivs} == expected


@pytest.mark.parametrize(
    "retention",
    [{"3m": "7d"}, {"bogus": "7d"}, {"1m": "soon"}, {"1m": "0d"}, {"*": "-1d"}, {"*": "x"}],
)
def test_retention_errors(retention: dict[str, str | int]) -> None:
    with pytest.raises(ConfigError):
        IntervalSet(list(DEFAULT_INTERVALS), retention)


def test_retention_plain_number_is_seconds() -> None:
    assert IntervalSet(["1m"], {"*": "7"}).get("1m").retention_s == 7


@pytest.mark.parametrize("name", list(DEFAULT_INTERVALS))
@pytest.mark.parametrize("offset_ms", [0, 12 * HOUR, 3 * DAY_S * 1000])
def test_ttl_formula(name: str, offset_ms: int) -> None:
    iv = DEFAULTS.get(name)
    start = iv.bucket_start(T0 + offset_ms)
    interval_s = {"1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200, "4h": 14400}
    expected = start // 1000 + interval_s[name] + DEFAULT_RETENTION_DAYS[name] * DAY_S
    assert iv.ttl(start) == expected


def test_ttl_literal_values() -> None:
    # 2023-11-15T00:00Z = 1_700_006_400 s.
    assert DEFAULTS.get("1m").ttl(T0) == 1_700_006_400 + 60 + 7 * DAY_S
    assert DEFAULTS.get("30m").ttl(T0) == 1_700_006_400 + 1800 + 30 * DAY_S
    assert DEFAULTS.get("4h").ttl(T0) == 1_700_006_400 + 14_400 + 90 * DAY_S


def test_ttl_uses_the_configured_retention() -> None:
    iv = IntervalSet(["1h"], {"1h": "2d"}).get("1h")
    assert iv.ttl(T0) == T0 // 1000 + 3600 + 2 * DAY_S
    assert Interval("1h", HOUR, 5).ttl(T0) == T0 // 1000 + 3600 + 5


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("90m", 5400),
        ("12h", 43_200),
        ("7d", 7 * DAY_S),
        ("2w", 14 * DAY_S),
        ("10y", 3650 * DAY_S),
        ("1Y", 365 * DAY_S),
        (" 3d ", 3 * DAY_S),
        ("3600", 3600),
        (" 42 ", 42),
        (86_400, 86_400),
    ],
)
def test_parse_duration_s(text: str | int, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "0", "0d", "-1d", "1.5d", "7 days", "7x", 0, -5, "1d2h"])
def test_parse_duration_s_invalid(text: str | int) -> None:
    with pytest.raises(ConfigError):
        parse_duration_s(text)


# -- time parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        (1_549_895_400_000, 1_549_895_400_000),
        ("1549895400000", 1_549_895_400_000),
        (" 1549895400000 ", 1_549_895_400_000),
        ("100000000000", 10**11),
        ("2019-02-11T14:30:00Z", 1_549_895_400_000),
        ("2019-02-11T14:30:00z", 1_549_895_400_000),
        ("2019-02-11T14:30:00+00:00", 1_549_895_400_000),
        ("2019-02-11T09:30:00-05:00", 1_549_895_400_000),
        ("2019-02-11T16:30:00+02:00", 1_549_895_400_000),
        ("2019-02-11T14:30:00", 1_549_895_400_000),
        ("2019-02-11 14:30:00", 1_549_895_400_000),
        ("2019-02-11T14:30:00.250Z", 1_549_895_400_250),
        ("2019-02-11T14:30Z", 1_549_895_400_000),
        ("2019-02-11", 1_549_843_200_000),
        ("1970-01-01T00:00:00Z", 0),
        ("2023-11-15", T0),
    ],
)
def test_parse_time_ms(text: str | int, ms: int) -> None:
    assert parse_time_ms(text) == ms


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2019-13-01", "2019-02-30", "2019-02-11T25:00:00Z", "12:30", "1e12"]
)
def test_parse_time_ms_invalid(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_time_ms(text)


@pytest.mark.parametrize(
    "text",
    [
        "99999999999999999",
        "-99999999999999999",
        "１５４９８９５４００００００",  # full-width digits
        "--1",
        "1_000",
        "0x10",
    ],
)
def test_parse_time_ms_rejects_out_of_range_and_odd_numbers(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_time_ms(text)


@pytest.mark.parametrize(
    "text", ["1796281200", 1_796_281_200, "99999999999", "0", "-60000", " 1549895400 "]
)
def test_parse_time_ms_rejects_what_looks_like_epoch_seconds(text: str | int) -> None:
    with pytest.raises(ConfigError, match="looks like epoch seconds; pass milliseconds"):
        parse_time_ms(text, "start")


def test_parse_time_ms_early_times_in_iso_and_cursors() -> None:
    assert parse_time_ms("1970-01-01T00:01:00Z") == 60_000
    assert parse_time_ms("-60000", "cursor", any_number=True) == -60_000
    assert parse_time_ms("0", "cursor", any_number=True) == 0


def test_parse_time_ms_error_names_the_parameter() -> None:
    with pytest.raises(ConfigError, match="start"):
        parse_time_ms("yesterday", "start")


# -- settings -----------------------------------------------------------------------------------

ENV_VARS = [
    "SPEEDLAYER_INTERVALS",
    "SPEEDLAYER_RETENTION",
    "SPEEDLAYER_DB",
    "SPEEDLAYER_GRACE_MS",
    "SPEEDLAYER_LATENESS_MS",
    "SPEEDLAYER_PORT",
    "SPEEDLAYER_BATCH_SIZE",
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_settings_defaults(env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.db == Path("data/speedlayer.db")
    assert settings.interval_set.names == list(DEFAULT_INTERVALS)
    assert {iv.name: iv.retention_s // DAY_S for iv in settings.interval_set} == (
        DEFAULT_RETENTION_DAYS
    )
    assert settings.grace_ms == 10_000
    assert settings.lateness_ms == 15 * MIN


def test_settings_from_env(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SPEEDLAYER_INTERVALS", "5min, 60m,3m,1d")
    env.setenv("SPEEDLAYER_RETENTION", "1m=3d, 1h=365d")
    env.setenv("SPEEDLAYER_DB", str(tmp_path / "x.db"))
    env.setenv("SPEEDLAYER_GRACE_MS", "2500")
    settings = Settings()
    assert settings.db == tmp_path / "x.db"
    assert settings.grace_ms == 2500
    ivs = settings.interval_set
    assert ivs.names == ["1m", "3m", "5m", "1h", "1d"]
    assert {iv.name: iv.retention_s for iv in ivs} == {
        "1m": 3 * DAY_S, "3m": 7 * DAY_S, "5m": 7 * DAY_S, "1h": 365 * DAY_S, "1d": 90 * DAY_S,
    }  # fmt: skip


def test_settings_star_retention_from_env(env: pytest.MonkeyPatch) -> None:
    env.setenv("SPEEDLAYER_RETENTION", "*=10y")
    ivs = Settings().interval_set
    assert ivs.names == list(DEFAULT_INTERVALS)
    assert {iv.retention_s for iv in ivs} == {3650 * DAY_S}


def test_settings_arguments_override_env(env: pytest.MonkeyPatch) -> None:
    env.setenv("SPEEDLAYER_INTERVALS", "1m,5m")
    settings = Settings(intervals=["15min", "4h"])
    assert settings.interval_set.names == ["1m", "15m", "4h"]


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("SPEEDLAYER_INTERVALS", "1m,bogus", "invalid interval"),
        ("SPEEDLAYER_INTERVALS", "5m,0m", "must be positive"),
        ("SPEEDLAYER_RETENTION", "1m", "INTERVAL=DURATION"),
        ("SPEEDLAYER_RETENTION", "1m=soon", "invalid duration"),
        ("SPEEDLAYER_RETENTION", "3m=7d", "not configured"),
        ("SPEEDLAYER_RETENTION", "xx=7d", "invalid interval"),
        ("SPEEDLAYER_GRACE_MS", "-1", "grace_ms"),
        ("SPEEDLAYER_LATENESS_MS", "abc", "lateness_ms"),
        ("SPEEDLAYER_PORT", "70000", "port"),
        ("SPEEDLAYER_BATCH_SIZE", "0", "batch_size"),
    ],
)
def test_settings_validation_errors(
    env: pytest.MonkeyPatch, var: str, value: str, message: str
) -> None:
    env.setenv(var, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert message in str(info.value)
