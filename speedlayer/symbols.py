"""Symbols: the one form a symbol is stored and served under (docs/design.md#symbols).

The stored key of an instrument is the form Polygon's WebSocket sends: ``AAPL`` (stocks, ``AM``),
``BTC-USD`` (crypto, ``XA``), ``EUR/USD`` (forex, ``CA``). :func:`canonical_symbol` maps every
other way of writing it to that key; it is applied where a bar enters (``validate_bar``) and
where a request names a symbol (every route, the WebSocket and SSE subscriptions, the CLI), so
the two always agree:

1. Case: a symbol with no upper-case letter is upper-cased (``aapl`` -> ``AAPL``,
   ``btc-usd`` -> ``BTC-USD``); one with an upper-case letter is kept as written, because
   Polygon's tickers are case-sensitive (``AMpB`` is AM's preferred B, not ``AMPB``).
2. REST tickers: ``C:EURUSD`` -> ``EUR/USD`` (a forex body is two three-letter codes);
   ``X:BTCUSD`` -> ``BTC-USD``, split before the longest known quote currency that ends it
   (:data:`CRYPTO_QUOTES`: ``X:ETHBUSD`` -> ``ETH-BUSD``, not ``ETHB-USD``). A body that no known
   quote ends (``X:FOOBAR``), or a forex body that is not six letters, keeps its prefixed form.
3. Pairs written with ``-`` or ``/``: both sides fiat currencies (:data:`FIAT`) -> forex form
   ``EUR/USD`` (``EUR-USD`` too); else a known quote on the right -> crypto form ``BTC-USD``
   (``BTC/USD`` too); anything else (``BRK/B``, ``BC-PC``) is kept.

The mapping is idempotent, so a stored key maps to itself. Results are cached: bars of a few
thousand instruments pass it at a dictionary look-up each.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from speedlayer.errors import ConfigError

# What a symbol may look like (a bar with another is rejected, a request gets a 422), as a
# JSON-schema pattern and as a regular expression.
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.:/_^=+-]{0,39}$"
SYMBOL_RE = re.compile(SYMBOL_PATTERN.removesuffix("$") + r"\Z")
# Fiat (and precious-metal) ISO 4217 codes: a pair of two of them is forex.
FIAT = frozenset({
    "USD", "EUR", "JPY", "GBP", "CHF", "CAD", "AUD", "NZD", "CNH", "CNY", "HKD", "SGD", "SEK",
    "NOK", "DKK", "MXN", "ZAR", "TRY", "PLN", "CZK", "HUF", "ILS", "INR", "KRW", "BRL", "RUB",
    "THB", "TWD", "IDR", "MYR", "PHP", "SAR", "AED", "XAU", "XAG", "XPT", "XPD",
})  # fmt: skip
# The quote currencies a crypto pair may end with, longest first so that the longest match wins.
CRYPTO_QUOTES = tuple(
    sorted(
        {"USD", "USDT", "USDC", "BUSD", "DAI", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "KRW"}
        | {"BTC", "ETH", "SOL"},
        key=lambda q: (-len(q), q),
    )
)
_PAIR_RE = re.compile(r"^([A-Z0-9]+)[-/]([A-Z]+)\Z")
_CACHE_MAX = 100_000
_cache: dict[str, str] = {}


def canonical_symbol(symbol: str) -> str:
    """The stored key ``symbol`` names (see the module docstring for the rule)."""
    try:
        return _cache[symbol]
    except KeyError:
        pass
    out = _canonical(symbol)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[symbol] = out
    return out


def parse_symbol(text: object, what: str = "symbol") -> str:
    """The stored key of a symbol a request names (a route, a subscription, the CLI), or
    ConfigError (the API's 422) saying why ``text`` is no ticker."""
    if not isinstance(text, str) or SYMBOL_RE.match(text) is None:
        raise ConfigError(
            f"{what} {text!r} is not a valid ticker (1-40 of A-Z a-z 0-9 . : / _ ^ = + -, "
            "starting with a letter or digit)"
        )
    return canonical_symbol(text)


def _canonical(symbol: str) -> str:
    if symbol == symbol.lower():
        symbol = symbol.upper()
    if len(symbol) > 2 and symbol[1] == ":":
        prefix, body = symbol[0], symbol[2:]
        if prefix == "C" and len(body) == 6 and body.isalpha() and body.isupper():
            return f"{body[:3]}/{body[3:]}"
        if prefix == "X" and body.isalnum() and body.isupper():
            for quote in CRYPTO_QUOTES:
                if body.endswith(quote) and len(body) > len(quote):
                    return _pair(body[: -len(quote)], quote)
        return symbol
    match = _PAIR_RE.match(symbol)
    if match is not None:
        base, quote = match.groups()
        if (base in FIAT and quote in FIAT) or quote in CRYPTO_QUOTES:
            return _pair(base, quote)
    return symbol


def _pair(base: str, quote: str) -> str:
    return f"{base}/{quote}" if base in FIAT and quote in FIAT else f"{base}-{quote}"


def market_of(symbol: str) -> str:
    """``forex``, ``crypto`` or ``stocks`` (anything else) for a canonical symbol: for display
    and filters, the rule above read backwards."""
    match = _PAIR_RE.match(symbol)
    if match is not None:
        base, quote = match.groups()
        if "/" in symbol and base in FIAT and quote in FIAT:
            return "forex"
        if "-" in symbol and quote in CRYPTO_QUOTES:
            return "crypto"
    if symbol.startswith("X:"):
        return "crypto"
    if symbol.startswith("C:"):
        return "forex"
    return "stocks"


def explain(given: str, known: Collection[str]) -> tuple[str, bool, str]:
    """``(symbol, stored, message)``: the key ``given`` names, whether ``known`` (the stored
    symbols) holds it, and in words how ``given`` was read or why it has no candles."""
    symbol = canonical_symbol(given)
    read = f" ({given} is read as {symbol})" if symbol != given else ""
    if symbol in known:
        return symbol, True, f"{symbol} has candles{read}"
    upper = symbol.upper()
    other_case = sorted(k for k in known if k.upper() == upper and k != symbol)
    if other_case:
        why = (
            f"tickers are case-sensitive (Polygon's AMpB is not AMPB): an all-lower-case one is "
            f"upper-cased, any other is kept as written; {', '.join(other_case)} has candles"
        )
    elif len(symbol) > 2 and symbol[1] == ":" and symbol[0] in "XC":
        why = (
            f"{symbol[2:]} is not read as a pair (crypto: no known quote currency ends it; "
            "forex: not two three-letter currency codes), and no symbol is stored as it is"
        )
    else:
        why = f"it is not among the {len(known)} symbols with candles"
    return symbol, False, f"no candles for {symbol}{read}: {why}"
