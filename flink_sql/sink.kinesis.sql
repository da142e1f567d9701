-- The ${name} candle stream. Kinesis has no upsert mode, so the job's changes go out in the
-- Debezium JSON envelope, partitioned by symbol like every record on the bus: {"after": <the
-- candle record>, "op": "c"} for each new value, {"before": <the old value>, "op": "d"} for
-- each value it replaces. The bus and the Lambda handlers read the candle of the first kind and
-- skip the second (speedlayer/bus/wire.py, docs/flink.md#kinesis).
CREATE TABLE candles_${name} (
  `type` STRING, symbol STRING, `interval` STRING, `timestamp` BIGINT,
  `open` DOUBLE, high DOUBLE, low DOUBLE, `close` DOUBLE, volume DOUBLE, vwap DOUBLE,
  trades BIGINT, bars BIGINT, `final` BOOLEAN, revision BIGINT, ttl BIGINT
) PARTITIONED BY (symbol) WITH (
  'connector' = 'kinesis',
  'stream.arn' = '${stream_arn}',
  ${aws_options}${sink_options}'format' = 'debezium-json'
);
