-- Bars from a JSON-lines file of the bus's bar records, each with its line number as `arrival`
-- (`speedlayer flink run --env files` numbers the lines): development and tests.
CREATE TABLE raw_bars (
  `type` STRING, symbol STRING, t BIGINT,
  o DOUBLE, h DOUBLE, l DOUBLE, c DOUBLE, v DOUBLE, vw DOUBLE, n BIGINT,
  arrival BIGINT,
  rt AS TO_TIMESTAMP_LTZ(t, 3),
  pt AS PROCTIME(),
  WATERMARK FOR rt AS rt
) WITH (
  'connector' = 'filesystem',
  'path' = '${path}',
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);
