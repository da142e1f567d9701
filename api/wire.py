"""Wire models: what the API documents in OpenAPI. Responses are encoded with msgspec directly
from the domain structs; these pydantic models describe that JSON, they are not built per row."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

CANDLE_EXAMPLE: dict[str, JsonValue] = {
    "symbol": "AAPL",
    "interval": "15m",
    "timestamp": 1704205800000,
    "open": 187.15,
    "high": 187.9,
    "low": 186.95,
    "close": 187.62,
    "volume": 1254873.0,
    "vwap": 187.48,
    "trades": 10432,
    "bars": 15,
    "final": True,
    "revision": 16,
    "ttl": 1706798700,
}


class CandleOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [CANDLE_EXAMPLE]})

    symbol: str = Field(examples=["AAPL"])
    interval: str = Field(examples=["15m"])
    timestamp: int = Field(description="bucket start, epoch ms UTC", examples=[1704205800000])
    open: float = Field(description="open of the earliest bar; prices are in (0, 1e15]")
    high: float
    low: float
    close: float
    volume: float = Field(
        description="sum of the bars' volumes (each in [0, 1e15]), so always a finite number"
    )
    vwap: float | None = Field(description="sum(vw*v)/sum(v) over bars with a VWAP; null if none")
    trades: int | None = Field(description="sum of trade counts; null if no bar carried one")
    bars: int = Field(description="number of 1-minute bars in the candle")
    final: bool = Field(description="true once the bucket's end plus the grace period has passed")
    revision: int = Field(description="increases with every change of this candle")
    ttl: int = Field(description="expiry, epoch seconds (candle end + retention)")


class CandlePage(BaseModel):
    symbol: str
    interval: str
    candles: list[CandleOut]
    next_cursor: str | None = Field(
        description="pass as ?cursor= (with the same other parameters) for the next page; "
        "null on the last page"
    )


class IntervalOut(BaseModel):
    name: str = Field(examples=["15m"])
    interval_ms: int = Field(examples=[900000])
    retention_s: int = Field(examples=[2592000])
    retention: str = Field(description="retention in days", examples=["30d"])
    table: str = Field(examples=["speed_layer_ohlcv_15min"])


class IntervalList(BaseModel):
    intervals: list[IntervalOut]


class SymbolList(BaseModel):
    symbols: list[str]


class SymbolInfo(BaseModel):
    symbol: str = Field(description="the stored key the ticker names", examples=["BTC-USD"])
    given: str = Field(description="the ticker as requested", examples=["X:BTCUSD"])
    market: Literal["stocks", "crypto", "forex"] = Field(description="read from the form")
    stored: bool = Field(description="whether the store has candles of `symbol`")
    message: str = Field(
        description="how the ticker was read, or why it has no candles",
        examples=["BTC-USD has candles (X:BTCUSD is read as BTC-USD)"],
    )


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code", examples=["invalid_parameter"])
    message: str = Field(examples=["interval '7x' is invalid: expected e.g. 15m, 1h, 1d"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class LatestCandles(BaseModel):
    """The newest candle of each requested symbol."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"interval": "15m", "candles": [CANDLE_EXAMPLE], "missing": ["ZZZZ"]}]
        }
    )

    interval: str = Field(examples=["15m"])
    candles: list[CandleOut] = Field(
        description="the newest candle (forming or final) of each requested symbol that has "
        "one, in the order the symbols were requested"
    )
    missing: list[str] = Field(description="requested symbols without any candle at this interval")
