"""validate_bar: what a valid 1-minute bar is, and the reason given for each rejection."""

from __future__ import annotations

from typing import Any

import pytest

from speedlayer.models import (
    MAX_PRICE,
    MAX_TRADES,
    MAX_VOLUME,
    Bar,
    Candle,
    candle_as_bar,
    validate_bar,
)

T = 1_700_006_400_000  # 2023-11-15T00:00:00Z
GOOD: dict[str, Any] = {
    "symbol": "AAPL",
    "t": T,
    "o": 10.0,
    "h": 12.0,
    "l": 9.5,
    "c": 11.0,
    "v": 1500.0,
    "vw": 10.8,
    "n": 42,
}


def check(**changes: Any) -> Bar | str:
    return validate_bar(**{**GOOD, **changes})


def test_good_bar_with_numbers() -> None:
    assert check() == Bar("AAPL", T, 10.0, 12.0, 9.5, 11.0, 1500.0, 10.8, 42)


def test_good_bar_from_strings() -> None:
    bar = validate_bar("AAPL", str(T), "10", "12.0", "9.5", "11", "1500.5", "10.8", "42")
    assert bar == Bar("AAPL", T, 10.0, 12.0, 9.5, 11.0, 1500.5, 10.8, 42)
    assert isinstance(bar, Bar)
    assert isinstance(bar.t, int)
    assert isinstance(bar.n, int)
    assert all(isinstance(x, float) for x in (bar.o, bar.h, bar.l, bar.c, bar.v, bar.vw))


def test_optional_fields_absent() -> None:
    assert check(vw=None, n=None) == Bar("AAPL", T, 10.0, 12.0, 9.5, 11.0, 1500.0, None, None)
    assert validate_bar("AAPL", T, 10, 12, 9.5, 11, 1500) == Bar(
        "AAPL", T, 10.0, 12.0, 9.5, 11.0, 1500.0, None, None
    )


def test_empty_strings_mean_absent() -> None:
    bar = check(vw="", n="")
    assert isinstance(bar, Bar)
    assert bar.vw is None
    assert bar.n is None


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        ({"t": float(T)}, "t", T),
        ({"t": f"{T}.0"}, "t", T),
        ({"t": 0}, "t", 0),
        ({"n": "7.0"}, "n", 7),
        ({"n": 7.0}, "n", 7),
        ({"n": 0}, "n", 0),
        ({"v": 0}, "v", 0.0),
        ({"v": "0.125"}, "v", 0.125),
        ({"vw": 0}, "vw", 0.0),
        ({"o": 9.5, "c": 12.0}, "c", 12.0),  # open at low, close at high
        ({"o": 10.0, "h": 10.0, "l": 10.0, "c": 10.0}, "h", 10.0),  # flat bar
        ({"o": "1e-4", "h": "1e-4", "l": "1e-4", "c": "1e-4"}, "o", 1e-4),
    ],
)
def test_accepted_edge_values(changes: dict[str, Any], field: str, value: Any) -> None:
    bar = check(**changes)
    assert isinstance(bar, Bar), bar
    assert getattr(bar, field) == value


@pytest.mark.parametrize(
    ("symbol", "stored"),
    [
        ("A", "A"),
        ("BRK.B", "BRK.B"),
        ("X:BTCUSD", "BTC-USD"),  # the canonical form (speedlayer.symbols)
        ("C:EUR/USD", "C:EUR/USD"),
        ("I:SPX", "I:SPX"),
        ("O:AAPL250117C00150000", "O:AAPL250117C00150000"),
        ("ES=F", "ES=F"),
        ("a_b-c+d", "A_B-C+D"),
        ("AMpB", "AMpB"),
        ("A" * 40, "A" * 40),
    ],
)
def test_good_symbols(symbol: str, stored: str) -> None:
    bar = check(symbol=symbol)
    assert isinstance(bar, Bar)
    assert bar.symbol == stored


@pytest.mark.parametrize(
    "symbol",
    [
        "",
        " AAPL",
        "AAPL ",
        "AA PL",
        "-AAPL",
        ".AAPL",
        "A" * 41,
        "AAPL\n",
        "AA\nPL",
        "AAPL\t",
        "AAPL;DROP",
        "ÄPFEL",
        "AAPL*",
        None,
        123,
        b"AAPL",
    ],
)
def test_bad_symbols(symbol: object) -> None:
    assert check(symbol=symbol) == "bad_symbol"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        # time
        ({"t": T + 1}, "time_not_minute_aligned"),
        ({"t": T + 30_000}, "time_not_minute_aligned"),
        ({"t": T - 1}, "time_not_minute_aligned"),
        ({"t": T // 1000}, "time_not_minute_aligned"),  # seconds instead of ms
        ({"t": str(T + 59_999)}, "time_not_minute_aligned"),
        ({"t": -60_000}, "time_out_of_range"),
        ({"t": T * 1000}, "time_out_of_range"),  # microseconds instead of ms
        ({"t": 7_258_118_400_000}, "time_out_of_range"),  # 2200-01-01
        ({"t": T + 0.5}, "not_a_number"),
        ({"t": "soon"}, "not_a_number"),
        ({"t": None}, "not_a_number"),
        ({"t": True}, "not_a_number"),
        ({"t": float("nan")}, "not_a_number"),
        ({"t": float("inf")}, "not_a_number"),
        # prices
        ({"o": float("nan")}, "price_not_finite"),
        ({"h": float("inf")}, "price_not_finite"),
        ({"l": float("-inf")}, "price_not_finite"),
        ({"c": "nan"}, "price_not_finite"),
        ({"h": "inf"}, "price_not_finite"),
        ({"o": 0, "l": 0}, "price_not_positive"),
        ({"l": -1.0}, "price_not_positive"),
        ({"o": -10.0}, "price_not_positive"),
        ({"c": 0.0}, "price_not_positive"),
        ({"o": "abc"}, "not_a_number"),
        ({"h": "12,5"}, "not_a_number"),
        ({"l": ""}, "not_a_number"),
        ({"c": None}, "not_a_number"),
        ({"o": [10.0]}, "not_a_number"),
        # volume
        ({"v": -1}, "bad_volume"),
        ({"v": -0.5}, "bad_volume"),
        ({"v": float("nan")}, "bad_volume"),
        ({"v": float("inf")}, "bad_volume"),
        ({"v": "inf"}, "bad_volume"),
        ({"v": "lots"}, "not_a_number"),
        ({"v": None}, "not_a_number"),
        # ranges
        ({"h": 9.0, "l": 9.5, "o": 9.5, "c": 9.5}, "high_below_low"),
        ({"h": 9.4}, "high_below_low"),
        ({"o": 12.5}, "open_close_outside_range"),
        ({"o": 9.4}, "open_close_outside_range"),
        ({"c": 12.01}, "open_close_outside_range"),
        ({"c": 9.49}, "open_close_outside_range"),
        # vwap
        ({"vw": -0.01}, "bad_vwap"),
        ({"vw": float("nan")}, "bad_vwap"),
        ({"vw": "inf"}, "bad_vwap"),
        ({"vw": "n/a"}, "not_a_number"),
        # trade count
        ({"n": -1}, "bad_trade_count"),
        ({"n": "-3"}, "bad_trade_count"),
        ({"n": "many"}, "not_a_number"),
        ({"n": float("nan")}, "not_a_number"),
        ({"n": True}, "not_a_number"),
    ],
)
def test_rejections(changes: dict[str, Any], reason: str) -> None:
    assert check(**changes) == reason


@pytest.mark.parametrize("n", [1.5, "2.5", 0.1, -0.5])
def test_fractional_trade_count_rejected(n: object) -> None:
    # A trade count is a whole number; the validator reports it as not a (whole) number.
    assert check(n=n) in ("not_a_number", "bad_trade_count")
    assert not isinstance(check(n=n), Bar)


def test_candle_as_bar_round_trip() -> None:
    candle = Candle("AAPL", "1m", T, 10.0, 12.0, 9.5, 11.0, 1500.0, 10.8, 42, 1, False, 3, 0)
    assert candle_as_bar(candle) == Bar("AAPL", T, 10.0, 12.0, 9.5, 11.0, 1500.0, 10.8, 42)


# -- bounds: sums over a bucket stay finite -------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"o": 1e308, "h": 1e308, "l": 1e308, "c": 1e308}, "price_too_large"),
        ({"h": 2e15}, "price_too_large"),
        ({"o": 1e16, "h": 1e16, "c": 1e16}, "price_too_large"),
        ({"v": 1e308}, "volume_too_large"),
        ({"v": "1.5e15"}, "volume_too_large"),
        ({"vw": 1e300}, "bad_vwap"),
        ({"n": 10**20}, "bad_trade_count"),
        ({"n": "1e13"}, "bad_trade_count"),
    ],
)
def test_values_beyond_the_bounds_are_rejected(changes: dict[str, Any], reason: str) -> None:
    assert check(**changes) == reason


def test_the_bounds_themselves_are_accepted() -> None:
    bar = check(o=1e15, h=1e15, l=1e15, c=1e15, v=1e15, vw=1e15, n=10**12)
    assert isinstance(bar, Bar)
    assert (bar.h, bar.v, bar.n) == (MAX_PRICE, MAX_VOLUME, MAX_TRADES)
