-- The bars every interval is made from (docs/flink.md#the-job).
--
-- `raw_bars` is the source table (source.<env>.sql): the bus's bar records with their position
-- (`arrival`), event time `rt` = the minute's start, watermark = the newest minute seen.

-- Each bar with its `arrival` (the record's position on the bus: the Kafka offset, or the line in
-- a file; one symbol's bars share a partition, so a symbol's arrivals only grow) and `wm` (epoch
-- ms): the watermark current when it was read, or the symbol's newest minute read so far if that
-- is later. The latter is kept in state: after a restart from a checkpoint Flink's watermark
-- starts again from nothing, and a late bar read before it catches up would otherwise look
-- early, while the closing window already dropped it as late.
CREATE TEMPORARY VIEW bars AS
SELECT symbol, t, rt, arrival, o, h, l, c, v, vw, n,
       GREATEST(
         COALESCE(CAST(TIMESTAMPDIFF(MINUTE, TO_TIMESTAMP_LTZ(0, 3), CURRENT_WATERMARK(rt))
                       AS BIGINT) * 60000, -1),
         MAX(t) OVER (PARTITION BY symbol ORDER BY pt
                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS wm
FROM raw_bars
WHERE `type` = 'bar' AND symbol IS NOT NULL AND t IS NOT NULL AND MOD(t, 60000) = 0
  AND o IS NOT NULL AND h IS NOT NULL AND l IS NOT NULL AND c IS NOT NULL AND v IS NOT NULL;

-- The newest version of every (symbol, minute) (last write wins, by arrival): an updating table;
-- a resent minute retracts its old version from every interval downstream (a top-1 per minute,
-- which Flink keeps as one row per minute).
CREATE TEMPORARY VIEW latest AS
SELECT symbol, t, arrival, o, h, l, c, v, vw, n, wm
FROM (
  SELECT symbol, t, arrival, o, h, l, c, v, vw, n, wm,
         ROW_NUMBER() OVER (PARTITION BY symbol, t ORDER BY arrival DESC) AS rn
  FROM bars
)
WHERE rn = 1;
