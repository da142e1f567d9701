-- The ${name} candle topic. Updates are written as their new value, keyed by symbol like every
-- record on the bus; a bucket that loses its only minute to a retraction gives a tombstone
-- (a record without a value), which consumers skip. PRIMARY KEY (symbol) names the record key
-- only: the job sets table.exec.sink.upsert-materialize = NONE.
CREATE TABLE candles_${name} (
  `type` STRING, symbol STRING, `interval` STRING, `timestamp` BIGINT,
  `open` DOUBLE, high DOUBLE, low DOUBLE, `close` DOUBLE, volume DOUBLE, vwap DOUBLE,
  trades BIGINT, bars BIGINT, `final` BOOLEAN, revision BIGINT, ttl BIGINT,
  PRIMARY KEY (symbol) NOT ENFORCED
) WITH (
  'connector' = 'upsert-kafka',
  'topic' = '${topic}',
  'properties.bootstrap.servers' = '${bootstrap_servers}',
  'key.format' = 'raw',
  'value.format' = 'json',
  'value.fields-include' = 'ALL'
);
