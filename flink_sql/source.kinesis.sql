-- Bars from the bus's raw Kinesis stream (Amazon Managed Service for Apache Flink).
CREATE TABLE kinesis_bars (
  `type` STRING, symbol STRING, t BIGINT,
  o DOUBLE, h DOUBLE, l DOUBLE, c DOUBLE, v DOUBLE, vw DOUBLE, n BIGINT,
  rt AS TO_TIMESTAMP_LTZ(t, 3),
  pt AS PROCTIME(),
  WATERMARK FOR rt AS rt
) WITH (
  'connector' = 'kinesis',
  'stream.arn' = '${raw_stream_arn}',
  ${aws_options}'source.init.position' = 'TRIM_HORIZON',
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);

-- A Kinesis sequence number (up to 128 digits) does not fit a BIGINT (and the connector's
-- metadata columns fail to deserialise in 6.0.0), so a bar's `arrival` is made of the second the
-- job read it (never lower than the symbol's previous bar's) times 10^6 plus its rank among the
-- symbol's bars of that second. Within a symbol (one shard, read in order) arrivals only grow,
-- also across restarts, with or without the job's state; a bar read again after a restore gets
-- a higher one than the first time (docs/flink.md#kinesis).
CREATE TEMPORARY VIEW kinesis_arrivals AS
SELECT *, MAX(CAST(TIMESTAMPDIFF(SECOND, TO_TIMESTAMP_LTZ(0, 3), pt) AS BIGINT))
            OVER (PARTITION BY symbol ORDER BY pt
                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS arrived_s
FROM kinesis_bars;

CREATE TEMPORARY VIEW raw_bars AS
SELECT `type`, symbol, t, o, h, l, c, v, vw, n, rt, pt,
       arrived_s * 1000000 + COUNT(*) OVER (PARTITION BY symbol, arrived_s ORDER BY pt
                                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
         AS arrival
FROM kinesis_arrivals;
