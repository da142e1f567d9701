-- The ${name} candles (one copy of this file per configured interval; docs/flink.md#the-job).

-- Forming and corrected candles: every change of a bucket's newest minutes, as it happens.
-- Retractions of resent minutes keep it equal to the bucket's bar set at every step.
CREATE TEMPORARY VIEW updates_${name} AS
SELECT /*+ STATE_TTL('latest' = '${state_ttl}') */ symbol, ${aggregates}
FROM latest
GROUP BY symbol, t - MOD(t, ${interval_ms});

-- The newest version of each minute of a ${name} window, as it stood when the watermark passed
-- the window's end (an event-time window: the close of the bucket).
CREATE TEMPORARY VIEW window_minutes_${name} AS
SELECT symbol, t, wt, ${unpack}
FROM (
  SELECT symbol, t, window_time AS wt, MAX(packed) AS packed
  FROM TABLE(TUMBLE(TABLE bars, DESCRIPTOR(rt), INTERVAL '${minutes}' MINUTE(6)))
  GROUP BY symbol, t, window_start, window_end, window_time
);

-- The closing candle of each ${name} window.
CREATE TEMPORARY VIEW closing_${name} AS
SELECT symbol, ${aggregates}
FROM TABLE(TUMBLE(TABLE window_minutes_${name}, DESCRIPTOR(wt), INTERVAL '${minutes}' MINUTE(6)))
GROUP BY symbol, window_start, window_end;

-- Both, as the bus's candle record (the sink, sink.<env>.sql, writes it to the ${name} topic). revision = 2 * arrival of the newest
-- bar in the candle (+1 for the closing candle, so that it follows the last forming update of the
-- same bars); final once the watermark has reached the bucket's end.
CREATE TEMPORARY VIEW candles_out_${name} AS
SELECT 'candle' AS `type`, symbol, '${name}' AS `interval`, ts AS `timestamp`,
       CAST(SPLIT_INDEX(okey, '|', 1) AS DOUBLE) AS `open`, high, low,
       CAST(SPLIT_INDEX(ckey, '|', 1) AS DOUBLE) AS `close`, volume,
       CASE WHEN bars = 1 THEN vw1 WHEN pvv > 0 THEN pv / pvv END AS vwap,
       trades, bars, is_final AS `final`, revision,
       (ts + ${interval_ms}) / 1000 + ${retention_s} AS ttl
FROM (
  SELECT *, wm >= ts + ${interval_ms} AS is_final, arrival * 2 AS revision FROM updates_${name}
  UNION ALL
  SELECT *, TRUE AS is_final, arrival * 2 + 1 AS revision FROM closing_${name}
);
