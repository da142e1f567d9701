"""Time parameters: epoch milliseconds or ISO 8601 (naive means UTC).

The one rule for numbers: a numeric time is epoch milliseconds, and one below ``10**11``
(1973-03-03 in milliseconds, but a plausible date in epoch seconds) is rejected as looking like
epoch seconds, rather than silently read as a date in early 1970. Earlier times are written in
ISO 8601.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from speedlayer.errors import ConfigError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Epoch milliseconds of 0001-01-01 and 9999-12-31T23:59:59.999Z: the range ISO 8601 can express.
MIN_MS = -62_135_596_800_000
MAX_MS = 253_402_300_799_999
# Numeric times below this (1973-03-03T09:46:40Z in ms; 5138-11-16 in seconds) look like seconds.
MIN_NUMERIC_MS = 10**11


def parse_time_ms(text: str | int, name: str = "time", *, any_number: bool = False) -> int:
    """``1549895400000`` or ``2019-02-11T14:30:00Z`` / ``2019-02-11`` -> epoch ms (UTC).

    ``name`` is the parameter's name, used in the error message. A number below
    ``MIN_NUMERIC_MS`` is rejected as looking like epoch seconds, unless ``any_number`` (for
    values the program wrote itself, such as cursors).
    """
    numeric = True
    if isinstance(text, int):
        value_ms = text
    else:
        value = text.strip()
        digits = value[1:] if value.startswith("-") else value
        if digits.isascii() and digits.isdigit():
            if len(digits) > 16:
                raise ConfigError(f"{name} {text!r} is out of range for epoch milliseconds")
            value_ms = int(value)
        else:
            numeric = False
            value_ms = _parse_iso(text, value, name)
    if not MIN_MS <= value_ms <= MAX_MS:
        raise ConfigError(f"{name} {text!r} is out of range for epoch milliseconds")
    if numeric and not any_number and value_ms < MIN_NUMERIC_MS:
        raise ConfigError(
            f"{name} {text!r} looks like epoch seconds; pass milliseconds (×1000) or ISO 8601 "
            "(numeric times are epoch milliseconds, from 10^11 = 1973-03-03 on; write earlier "
            "times in ISO 8601)"
        )
    return value_ms


def _parse_iso(text: str, value: str, name: str) -> int:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{name} {text!r} is not a time: expected epoch milliseconds or ISO 8601 "
            "(e.g. 2024-01-02T14:30:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // timedelta(milliseconds=1)
