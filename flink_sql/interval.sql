-- The ${name} candles (one copy of this file per configured interval; docs/flink.md#the-job).

-- Forming and corrected candles: every change of a bucket's newest minutes, as it happens.
-- Retractions of resent minutes keep it equal to the bucket's bar set at every step. Final if `wm`
-- of one of its minutes had reached the bucket's end (MAX(wm) >= end, counted as a sum: a
-- retracting SUM keeps one number, a retracting MAX every value in state).
CREATE TEMPORARY VIEW updates_${name} AS
SELECT symbol, ts, ${aggregates}, SUM(closes) > 0 AS is_final
FROM (
  SELECT symbol, t - MOD(t, ${interval_ms}) AS ts, arrival, h, l, v, vw, n, ${minute}
  FROM latest
)
GROUP BY symbol, ts;

-- The close of each ${name} bucket: one row per symbol and bucket that had bars, when the
-- watermark passes the bucket's end (an event-time window). It carries no values: those always
-- come from the updates, which no watermark makes drop a bar (a window drops the bars it reads
-- after it fired, and with several readers, or after a source split went idle, one of a symbol's
-- bars can be read after the window's watermark passed its minute).
CREATE TEMPORARY VIEW closing_${name} AS
SELECT symbol, MIN(t) - MOD(MIN(t), ${interval_ms}) AS ts
FROM TABLE(TUMBLE(TABLE bars, DESCRIPTOR(rt), INTERVAL '${minutes}' MINUTE(6)))
GROUP BY symbol, window_start, window_end;

-- The versions of each candle: its updates, `version` = its values as one string that starts
-- with the zero-padded 2 * the sum of its minutes' arrivals (aggregates.sql), so that MAX picks
-- the newest: every bar added and every minute replaced by a resend raises the sum, so the
-- candle of all its newest minutes has the highest one whatever order the updates of several
-- readers reach here in (the newest arrival alone does not: a bar read earlier can come after
-- it); and its close, without values. `closed`: 1 for the close and for an update computed once
-- the bucket's end was reached.
CREATE TEMPORARY VIEW versions_${name} AS
SELECT symbol, ts, CASE WHEN is_final THEN 1 ELSE 0 END AS closed,
       CONCAT_WS('|', LPAD(CAST(arrivals * 2 AS STRING), 20, '0'),
                 SPLIT_INDEX(okey, '|', 1), CAST(high AS STRING), CAST(low AS STRING),
                 SPLIT_INDEX(ckey, '|', 1), CAST(volume AS STRING),
                 COALESCE(CAST(CASE WHEN bars = 1 THEN vw1 WHEN pvv > 0 THEN pv / pvv END
                               AS STRING), ''),
                 COALESCE(CAST(trades AS STRING), ''), CAST(bars AS STRING)) AS version
FROM updates_${name}
UNION ALL
SELECT symbol, ts, 1 AS closed, CAST(NULL AS STRING) AS version
FROM closing_${name};

-- The bus's candle record (sink.<env>.sql writes it to the ${name} topic): per candle the
-- newest update, final once the candle closed or any update was final (the two branches reach
-- here in no fixed order, and after a restart from a checkpoint the watermark starts again from
-- nothing, so a replayed correction can come without the finality its bucket already had;
-- docs/flink.md#finality). revision = 2 * the sum of arrivals, + 1 once final: the close of a
-- candle follows its last forming update, and any later correction raises the sum.
CREATE TEMPORARY VIEW candles_out_${name} AS
SELECT 'candle' AS `type`, symbol, '${name}' AS `interval`, ts AS `timestamp`,
       CAST(SPLIT_INDEX(version, '|', 1) AS DOUBLE) AS `open`,
       CAST(SPLIT_INDEX(version, '|', 2) AS DOUBLE) AS high,
       CAST(SPLIT_INDEX(version, '|', 3) AS DOUBLE) AS low,
       CAST(SPLIT_INDEX(version, '|', 4) AS DOUBLE) AS `close`,
       CAST(SPLIT_INDEX(version, '|', 5) AS DOUBLE) AS volume,
       CAST(NULLIF(SPLIT_INDEX(version, '|', 6), '') AS DOUBLE) AS vwap,
       CAST(NULLIF(SPLIT_INDEX(version, '|', 7), '') AS BIGINT) AS trades,
       CAST(SPLIT_INDEX(version, '|', 8) AS BIGINT) AS bars,
       closed > 0 AS `final`,
       CAST(SPLIT_INDEX(version, '|', 0) AS BIGINT) + CASE WHEN closed > 0 THEN 1 ELSE 0 END
         AS revision,
       (ts + ${interval_ms}) / 1000 + ${retention_s} AS ttl
FROM (
  SELECT symbol, ts, MAX(version) AS version, SUM(closed) AS closed
  FROM versions_${name}
  GROUP BY symbol, ts
)
WHERE version IS NOT NULL;
