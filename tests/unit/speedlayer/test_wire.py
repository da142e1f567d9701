"""The bus wire format: bare records, and the same records in the Debezium envelope that the
Flink job writes to Kinesis (flink_sql/sink.kinesis.sql)."""

from __future__ import annotations

import base64

import msgspec
import pytest

from processors.kinesis_events import decode_candles
from speedlayer.bus.wire import decode_item, decode_record, encode_item
from speedlayer.errors import BusError
from speedlayer.intervals import IntervalSet
from speedlayer.models import Bar, Candle

CANDLE = Candle("AAPL", "5m", 1_704_204_000_000, 1.0, 2.0, 0.5, 1.5, 10.0, 1.25, 3, 2, True, 7, 0)


def envelope(before: bytes, after: bytes, op: str) -> bytes:
    return b'{"before":%s,"after":%s,"op":"%s"}' % (before, after, op.encode())


def test_bare_records_decode_as_before() -> None:
    bar = Bar("AAPL", 1_704_204_000_000, 1.0, 2.0, 0.5, 1.5, 10.0, None, None)
    for item in (bar, CANDLE):
        assert decode_record(encode_item(item)) == item == decode_item(encode_item(item))


def test_an_envelope_carries_its_after_image() -> None:
    record = envelope(b"null", encode_item(CANDLE), "c")
    assert decode_record(record) == CANDLE


def test_a_retraction_carries_nothing() -> None:
    assert decode_record(envelope(encode_item(CANDLE), b"null", "d")) is None


@pytest.mark.parametrize(
    "record",
    [
        envelope(b"null", b"null", "c"),  # an insert without a value
        envelope(b"null", b'{"type":"quote"}', "c"),  # not a bus record
        b'{"before":null,"after":{"type":"candle"',  # cut short
    ],
)
def test_broken_envelopes_are_errors(record: bytes) -> None:
    with pytest.raises((BusError, msgspec.DecodeError, msgspec.ValidationError)):
        decode_record(record)


def test_the_lambda_decoder_counts_retractions_apart_from_bad_records() -> None:
    def entry(seq: int, data: bytes) -> dict[str, object]:
        return {"kinesis": {"sequenceNumber": str(seq), "partitionKey": "AAPL",
                            "data": base64.b64encode(data).decode()}}  # fmt: skip

    intervals = IntervalSet(["1m", "5m"], {"*": "100y"})
    event = {
        "Records": [
            entry(1, envelope(encode_item(CANDLE), b"null", "d")),
            entry(2, envelope(b"null", encode_item(CANDLE), "c")),
            entry(3, b"not json"),
        ]
    }
    batch = decode_candles(event, intervals)
    assert [index for index, _ in batch.items] == [1]
    assert batch.retractions == 1
    assert dict(batch.skipped) == {"undecodable": 1}


@pytest.mark.parametrize(
    "record",
    [
        # a bar that validate_bar rejects never comes off the bus (the record is skipped)
        b'{"type":"bar","symbol":"AAPL","t":1704204000000,"o":1e308,"h":1e308,"l":1e308,'
        b'"c":1e308,"v":1e308,"vw":null,"n":null}',
        b'{"type":"bar","symbol":"AAPL","t":1704204000000,"o":1.0,"h":2.0,"l":0.5,"c":1.5,'
        b'"v":-1.0,"vw":null,"n":null}',
        b'{"type":"bar","symbol":"AA PL","t":1704204000000,"o":1.0,"h":2.0,"l":0.5,"c":1.5,'
        b'"v":1.0,"vw":null,"n":null}',
        # a candle with a number out of range, or a negative volume
        b'{"type":"candle","symbol":"AAPL","interval":"5m","timestamp":1704204000000,"open":1.0,'
        b'"high":2.0,"low":0.5,"close":1.5,"volume":1e999,"vwap":1.25,"trades":3,"bars":2,'
        b'"final":true,"revision":7,"ttl":0}',
        b'{"type":"candle","symbol":"AAPL","interval":"5m","timestamp":1704204000000,"open":1.0,'
        b'"high":2.0,"low":0.5,"close":1.5,"volume":-10.0,"vwap":1.0,"trades":3,"bars":2,'
        b'"final":true,"revision":7,"ttl":0}',
    ],
)
def test_records_with_values_that_let_sums_overflow_are_errors(record: bytes) -> None:
    # what the consumers catch, count and skip (speedlayer/bus/kinesis.py, kafka.py, the Lambdas)
    with pytest.raises((BusError, msgspec.DecodeError)):
        decode_record(record)
    with pytest.raises((BusError, msgspec.DecodeError)):
        decode_record(envelope(b"null", record, "c"))


def test_a_bar_from_another_producer_gets_its_canonical_symbol() -> None:
    """A record need not come from speedlayer's ingest: its symbol is mapped like an ingested
    bar's (docs/design.md#symbols), so the pipeline stores one key per instrument."""
    for written, stored in (("X:BTCUSD", "BTC-USD"), ("eur-usd", "EUR/USD"), ("AAPL", "AAPL")):
        bar = Bar(written, 1_700_000_040_000, 1.0, 2.0, 0.5, 1.5, 10.0)
        decoded = decode_item(encode_item(bar))
        assert isinstance(decoded, Bar)
        assert decoded == Bar(stored, 1_700_000_040_000, 1.0, 2.0, 0.5, 1.5, 10.0)
