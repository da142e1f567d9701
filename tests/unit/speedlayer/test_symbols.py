"""The one symbol rule (speedlayer.symbols, docs/design.md#symbols)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from speedlayer.models import SYMBOL_RE
from speedlayer.symbols import canonical_symbol, explain, market_of


@pytest.mark.parametrize(
    ("given_as", "stored"),
    [
        # stocks: upper case kept, lower case upper-cased, mixed case kept (Polygon's AMpB)
        ("AAPL", "AAPL"),
        ("aapl", "AAPL"),
        ("brk.b", "BRK.B"),
        ("AMpB", "AMpB"),
        ("Aapl", "Aapl"),
        ("BRK/B", "BRK/B"),
        ("BC-PC", "BC-PC"),
        ("I:SPX", "I:SPX"),
        ("O:AAPL250117C00150000", "O:AAPL250117C00150000"),
        # crypto: the WebSocket form, the REST form, a slash, lower case
        ("BTC-USD", "BTC-USD"),
        ("X:BTCUSD", "BTC-USD"),
        ("x:btcusd", "BTC-USD"),
        ("BTC/USD", "BTC-USD"),
        ("btc-usd", "BTC-USD"),
        ("X:ETHBTC", "ETH-BTC"),
        ("X:BTCUSDT", "BTC-USDT"),
        ("X:ETHBUSD", "ETH-BUSD"),  # the longest known quote wins
        ("X:1INCHUSD", "1INCH-USD"),
        ("EUR-BTC", "EUR-BTC"),
        ("X:FOOBAR", "X:FOOBAR"),  # no known quote ends it: kept
        ("X:USD", "X:USD"),
        # forex: the WebSocket form, the REST form, a hyphen, lower case
        ("EUR/USD", "EUR/USD"),
        ("C:EURUSD", "EUR/USD"),
        ("c:eurusd", "EUR/USD"),
        ("EUR-USD", "EUR/USD"),
        ("eur/usd", "EUR/USD"),
        ("C:XAUUSD", "XAU/USD"),
        ("X:EURUSD", "EUR/USD"),  # two fiat codes are a forex pair whatever the prefix
        ("C:EURUSDX", "C:EURUSDX"),  # not two three-letter codes: kept
        ("C:EUR/USD", "C:EUR/USD"),
    ],
)
def test_canonical_symbol(given_as: str, stored: str) -> None:
    assert canonical_symbol(given_as) == stored


@pytest.mark.parametrize(
    ("symbol", "market"),
    [("AAPL", "stocks"), ("BTC-USD", "crypto"), ("EUR/USD", "forex"), ("BRK/B", "stocks"),
     ("X:FOOBAR", "crypto"), ("C:EURUSDX", "forex"), ("BC-PC", "stocks")],
)  # fmt: skip
def test_market_of(symbol: str, market: str) -> None:
    assert market_of(symbol) == market


@given(st.from_regex(SYMBOL_RE, fullmatch=True))
def test_canonical_is_idempotent_and_valid(symbol: str) -> None:
    once = canonical_symbol(symbol)
    assert canonical_symbol(once) == once
    assert SYMBOL_RE.match(once) is not None


@given(
    st.sampled_from(["BTC", "ETH", "SOL", "DOGE", "1INCH", "EUR", "USD", "GBP", "XAU"]),
    st.sampled_from(["USD", "USDT", "EUR", "BTC", "JPY", "CHF", "CAD"]),
)
def test_every_form_of_a_pair_is_one_key(base: str, quote: str) -> None:
    forms = {f"{base}-{quote}", f"{base}/{quote}", f"X:{base}{quote}"}
    forms |= {form.lower() for form in forms}
    keys = {canonical_symbol(form) for form in forms}
    assert len(keys) == 1, keys
    (key,) = keys
    assert key in (f"{base}-{quote}", f"{base}/{quote}")


@pytest.mark.parametrize(
    ("given_as", "symbol", "stored", "says"),
    [
        ("aapl", "AAPL", True, "AAPL has candles (aapl is read as AAPL)"),
        ("x:btcusd", "BTC-USD", True, "BTC-USD has candles (x:btcusd is read as BTC-USD)"),
        ("EUR/USD", "EUR/USD", True, "EUR/USD has candles"),
        ("Aapl", "Aapl", False, "case-sensitive"),
        ("ampb", "AMPB", False, "AMpB has candles"),
        ("X:FOOBAR", "X:FOOBAR", False, "FOOBAR is not read as a pair"),
        ("ZZZ", "ZZZ", False, "not among the 5 symbols with candles"),
    ],
)
def test_explain(given_as: str, symbol: str, stored: bool, says: str) -> None:
    known = {"AAPL", "AMpB", "BTC-USD", "EUR/USD", "MSFT"}
    got_symbol, got_stored, message = explain(given_as, known)
    assert (got_symbol, got_stored) == (symbol, stored)
    assert says in message, message
