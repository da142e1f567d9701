-- The ${name} candles for the files environment: a directory of changelog files (Debezium JSON,
-- the format of Flink's filesystem sink that takes updates). The runner turns them into candle
-- records, one JSON line per update (launch/flink.py, changelog_to_records).
CREATE TABLE candles_${name} (
  `type` STRING, symbol STRING, `interval` STRING, `timestamp` BIGINT,
  `open` DOUBLE, high DOUBLE, low DOUBLE, `close` DOUBLE, volume DOUBLE, vwap DOUBLE,
  trades BIGINT, bars BIGINT, `final` BOOLEAN, revision BIGINT, ttl BIGINT
) WITH (
  'connector' = 'filesystem',
  'path' = '${output_dir}/${name}',
  'format' = 'debezium-json'
);
