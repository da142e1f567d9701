"""Time parameters: epoch milliseconds or ISO 8601 (naive means UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from speedlayer.errors import ConfigError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Epoch milliseconds of 0001-01-01 and 9999-12-31T23:59:59.999Z: the range ISO 8601 can express.
MIN_MS = -62_135_596_800_000
MAX_MS = 253_402_300_799_999


def parse_time_ms(text: str | int, name: str = "time") -> int:
    """``1549895400000`` or ``2019-02-11T14:30:00Z`` / ``2019-02-11`` -> epoch ms (UTC).

    ``name`` is the parameter's name, used in the error message.
    """
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
            value_ms = _parse_iso(text, value, name)
    if not MIN_MS <= value_ms <= MAX_MS:
        raise ConfigError(f"{name} {text!r} is out of range for epoch milliseconds")
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
