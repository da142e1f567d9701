"""The bus wire format, shared by every backend that leaves the process (Kinesis, Kafka) and by
the Lambda handlers: one flat JSON object per record, the Bar/Candle's msgspec JSON with a
``"type"`` tag (``bar`` or ``candle``) as its first field. The record key is the symbol.

Consumers also take the same records in the Debezium JSON envelope, which the Flink job writes to
Kinesis (flink_sql/sink.kinesis.sql): ``{"before": ..., "after": <record>, "op": "c"}`` carries
``<record>``; a record whose ``after`` is null (``"op": "d"``, the old value of a changed
candle) carries nothing, like a tombstone on a Kafka topic."""

from __future__ import annotations

import msgspec

from speedlayer.errors import BusError
from speedlayer.models import Bar, Candle, bar_problem, candle_problem
from speedlayer.symbols import canonical_symbol

_ENCODER = msgspec.json.Encoder()
_BAR_TAG = b'{"type":"bar",'
_CANDLE_TAG = b'{"type":"candle",'


class _Tag(msgspec.Struct):
    type: str = ""


class _Envelope(msgspec.Struct):
    after: msgspec.Raw = msgspec.Raw(b"null")
    op: str = ""


_TAG_DECODER = msgspec.json.Decoder(_Tag)
_ENVELOPE_DECODER = msgspec.json.Decoder(_Envelope)
_ENVELOPE_TAG = b'{"before":'
_BAR_DECODER = msgspec.json.Decoder(Bar)
_CANDLE_DECODER = msgspec.json.Decoder(Candle)


def encode_item(item: Bar | Candle) -> bytes:
    """msgspec JSON of a Bar/Candle with ``"type"`` first (a struct always encodes as ``{...}``)."""
    if isinstance(item, Candle):
        return _CANDLE_TAG + _ENCODER.encode(item)[1:]
    if isinstance(item, Bar):
        return _BAR_TAG + _ENCODER.encode(item)[1:]
    raise TypeError(f"the bus carries Bar and Candle items, not {type(item).__name__}")


def decode_item(data: bytes) -> Bar | Candle:
    """The Bar/Candle of one record; msgspec.DecodeError or BusError when it is not one, or not
    a valid one: a bar is checked as ``validate_bar`` checks bars where they enter (a record
    need not come from speedlayer), a candle for numbers that cannot be stored or served."""
    kind = _TAG_DECODER.decode(data).type
    if kind == "bar":
        bar = _BAR_DECODER.decode(data)
        problem = bar_problem(bar)
        if problem is not None:
            raise BusError(f"invalid bar ({problem})")
        key = canonical_symbol(bar.symbol)  # stored under its canonical symbol, as if ingested
        return bar if key == bar.symbol else msgspec.structs.replace(bar, symbol=key)
    if kind == "candle":
        candle = _CANDLE_DECODER.decode(data)
        problem = candle_problem(candle)
        if problem is not None:
            raise BusError(f"invalid candle ({problem})")
        return candle
    raise BusError(f"unknown record type {kind!r}")


def decode_record(data: bytes) -> Bar | Candle | None:
    """:func:`decode_item`, or the item in a Debezium envelope; None for an envelope without one
    (a retraction, skipped by consumers)."""
    if data.startswith(_ENVELOPE_TAG):
        envelope = _ENVELOPE_DECODER.decode(data)
        if bytes(envelope.after) == b"null":
            if envelope.op != "d":
                raise BusError(f"a change record without a value (op {envelope.op!r})")
            return None
        return decode_item(envelope.after)
    return decode_item(data)
