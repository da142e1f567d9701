-- The job's aggregate functions (flink_sql/udf, the jar speedlayer-flink-udf.jar that every
-- environment loads; docs/flink.md#the-job). Each keeps one compact object per group in state,
-- where the retracting MIN/MAX of plain SQL keep a map of every value they have seen.

-- A bucket's candle from the newest version of each of its minutes.
CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS candle_agg
  AS 'speedlayer.flink.CandleAgg' LANGUAGE JAVA;

-- A candle's record from its live versions: the newest by revision, final if any is.
CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS candle_version
  AS 'speedlayer.flink.VersionAgg' LANGUAGE JAVA;
