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

-- The newest version of each minute of a ${name} window (by arrival), as it stood when the
-- watermark passed the window's end (an event-time window: the close of the bucket).
CREATE TEMPORARY VIEW window_minutes_${name} AS
SELECT symbol, t, window_time AS wt, arrival, h, l, v, vw, n, ${minute}
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, symbol, t
                               ORDER BY arrival DESC) AS rn
  FROM TABLE(TUMBLE(TABLE bars, DESCRIPTOR(rt), INTERVAL '${minutes}' MINUTE(6)))
)
WHERE rn = 1;

-- The closing candle of each ${name} window.
CREATE TEMPORARY VIEW closing_${name} AS
SELECT symbol, MIN(t) - MOD(MIN(t), ${interval_ms}) AS ts, ${aggregates}, TRUE AS is_final
FROM TABLE(TUMBLE(TABLE window_minutes_${name}, DESCRIPTOR(wt), INTERVAL '${minutes}' MINUTE(6)))
GROUP BY symbol, window_start, window_end;

-- Every version of each candle from both branches. revision = 2 * the arrival of the newest
-- bar in the candle, + 1 for the closing candle (it follows the last forming update of the same
-- bars); final once the watermark has reached the bucket's end. `version`: the candle's values as
-- one string that starts with the zero-padded revision, so that MAX picks the newest.
CREATE TEMPORARY VIEW versions_${name} AS
SELECT symbol, ts, CASE WHEN is_final THEN 1 ELSE 0 END AS closed,
       CONCAT_WS('|', LPAD(CAST(revision AS STRING), 20, '0'),
                 SPLIT_INDEX(okey, '|', 1), CAST(high AS STRING), CAST(low AS STRING),
                 SPLIT_INDEX(ckey, '|', 1), CAST(volume AS STRING),
                 COALESCE(CAST(CASE WHEN bars = 1 THEN vw1 WHEN pvv > 0 THEN pv / pvv END
                               AS STRING), ''),
                 COALESCE(CAST(trades AS STRING), ''), CAST(bars AS STRING)) AS version
FROM (
  SELECT *, arrival * 2 AS revision FROM updates_${name}
  UNION ALL
  SELECT *, arrival * 2 + 1 AS revision FROM closing_${name}
);

-- The bus's candle record (sink.<env>.sql writes it to the ${name} topic): per candle the
-- newest version, final once any version was (the two branches reach here in no fixed order,
-- and after a restart from a checkpoint the watermark starts again from nothing, so a replayed
-- correction can come without the finality its bucket already had; docs/flink.md#finality).
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
       CAST(SPLIT_INDEX(version, '|', 0) AS BIGINT) AS revision,
       (ts + ${interval_ms}) / 1000 + ${retention_s} AS ttl
FROM (
  SELECT symbol, ts, MAX(version) AS version, SUM(closed) AS closed
  FROM versions_${name}
  GROUP BY symbol, ts
);
