-- Bars from the bus's raw Kafka topic (self-hosted Kafka, Amazon MSK).
CREATE TABLE raw_bars (
  `type` STRING, symbol STRING, t BIGINT,
  o DOUBLE, h DOUBLE, l DOUBLE, c DOUBLE, v DOUBLE, vw DOUBLE, n BIGINT,
  arrival BIGINT METADATA FROM 'offset' VIRTUAL,
  rt AS TO_TIMESTAMP_LTZ(t, 3),
  pt AS PROCTIME(),
  WATERMARK FOR rt AS rt
) WITH (
  'connector' = 'kafka',
  'topic' = '${raw_topic}',
  'properties.bootstrap.servers' = '${bootstrap_servers}',
  'properties.group.id' = '${group_id}',
  'scan.startup.mode' = 'group-offsets',
  'properties.auto.offset.reset' = 'earliest',
  ${bounded}'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);
