"""Settings, validated once at start: flags > ``SPEEDLAYER_*`` environment variables > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet, parse_duration_s


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPEEDLAYER_", extra="ignore")

    db: Path = Field(Path("data/speedlayer.db"), description="SQLite database file")
    intervals: Annotated[list[str], NoDecode] = Field(
        list(DEFAULT_INTERVALS),
        description="candle intervals, e.g. 1m,5m,15m,1h,1d (1m is implied)",
    )
    retention: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="retention overrides, e.g. '1m=3d,4h=365d' or '*=10y' for every interval",
    )
    grace_ms: int = Field(10_000, ge=0, description="a candle is final this long after its end")
    lateness_ms: int = Field(
        15 * 60_000, ge=0, description="keep final buckets in memory this long for late bars"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="bars per replay batch")
    max_page: int = Field(10_000, ge=1, description="largest page of candles one request returns")
    purge_interval_s: float = Field(
        3600.0, gt=0, description="how often expired candles are purged"
    )
    log_level: str = "info"

    _interval_set: IntervalSet = PrivateAttr()

    @field_validator("intervals", mode="before")
    @classmethod
    def _parse_intervals(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("retention", mode="before")
    @classmethod
    def _parse_retention(cls, value: Any) -> Any:
        if isinstance(value, str | list | tuple):
            pairs = _split(value) if isinstance(value, str) else list(value)
            parsed = {}
            for pair in pairs:
                key, sep, duration = str(pair).partition("=")
                if not sep:
                    raise ValueError(f"retention {pair!r}: expected INTERVAL=DURATION, e.g. 1m=7d")
                parsed[key.strip()] = duration.strip()
            return parsed
        return value

    @model_validator(mode="after")
    def _build_intervals(self) -> Settings:
        for duration in self.retention.values():
            parse_duration_s(duration)
        self._interval_set = IntervalSet(self.intervals, dict(self.retention))
        return self

    @property
    def interval_set(self) -> IntervalSet:
        return self._interval_set
