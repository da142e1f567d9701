"""Time parameters: epoch milliseconds or ISO 8601 (naive means UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from speedlayer.errors import ConfigError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time_ms(text: str | int) -> int:
    """``1549895400000`` or ``2019-02-11T14:30:00Z`` / ``2019-02-11`` -> epoch ms (UTC)."""
    if isinstance(text, int):
        return text
    value = text.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"invalid time {text!r}: expected epoch milliseconds or ISO 8601 "
            "(e.g. 2024-01-02T14:30:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // timedelta(milliseconds=1)
