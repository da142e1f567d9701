-- The ${name} candles (one copy of this file per configured interval; docs/flink.md#the-job).

-- Forming and corrected candles: every change of a bucket's newest minutes, as it happens.
-- Retractions of resent minutes keep it equal to the bucket's bar set at every step.
-- candle_agg (functions.sql) keeps the bucket's minutes and computes the candle from them: open
-- of the earliest minute, close of the latest, VWAP with the one-bar rule, `arrivals` (the sum
-- of the minutes' arrivals, each counted from 1), and `closes`: whether `wm` of one of its
-- minutes had reached the bucket's end.
CREATE TEMPORARY VIEW updates_${name} AS
SELECT symbol, ts, u.k.`open`, u.k.high, u.k.low, u.k.`close`, u.k.volume, u.k.vwap,
       u.k.trades, u.k.bars, u.k.arrivals, u.k.closes AS is_final
FROM (
  SELECT symbol, t - MOD(t, ${interval_ms}) AS ts,
         candle_agg(t, o, h, l, c, v, vw, n, arrival, wm, CAST(${interval_ms} AS BIGINT)) AS k
  FROM latest
  GROUP BY symbol, t - MOD(t, ${interval_ms})
) u;

-- The close of each ${name} bucket: one row per symbol and bucket that had bars, when the
-- watermark passes the bucket's end (an event-time window). It carries no values: those always
-- come from the updates, which no watermark makes drop a bar (a window drops the bars it reads
-- after it fired, and with several readers, or after a source split went idle, one of a symbol's
-- bars can be read after the window's watermark passed its minute).
CREATE TEMPORARY VIEW closing_${name} AS
SELECT symbol, MIN(t) - MOD(MIN(t), ${interval_ms}) AS ts
FROM TABLE(TUMBLE(TABLE bars, DESCRIPTOR(rt), INTERVAL '${minutes}' MINUTE(6)))
GROUP BY symbol, window_start, window_end;

-- The versions of each candle: its updates, with revision = 2 * the sum of its minutes'
-- arrivals: every bar added and every minute replaced by a resend raises the sum, so the candle
-- of all its newest minutes has the highest one whatever order the updates of several readers
-- reach here in (the newest arrival alone does not: a bar read earlier can come after it); and
-- its close, without values. `closed`: 1 for the close and for an update computed once the
-- bucket's end was reached.
CREATE TEMPORARY VIEW versions_${name} AS
SELECT symbol, ts, arrivals * 2 AS revision, `open`, high, low, `close`, volume, vwap, trades,
       bars, is_final AS closed
FROM updates_${name}
UNION ALL
SELECT symbol, ts, CAST(NULL AS BIGINT) AS revision, CAST(NULL AS DOUBLE) AS `open`,
       CAST(NULL AS DOUBLE) AS high, CAST(NULL AS DOUBLE) AS low, CAST(NULL AS DOUBLE) AS `close`,
       CAST(NULL AS DOUBLE) AS volume, CAST(NULL AS DOUBLE) AS vwap,
       CAST(NULL AS BIGINT) AS trades, CAST(NULL AS BIGINT) AS bars, TRUE AS closed
FROM closing_${name};

-- The bus's candle record (sink.<env>.sql writes it to the ${name} topic): per candle the
-- newest update, final once the candle closed or any update was final (the two branches reach
-- here in no fixed order, and after a restart from a checkpoint the watermark starts again from
-- nothing, so a replayed correction can come without the finality its bucket already had;
-- docs/flink.md#finality). candle_version (functions.sql) keeps the candle's live versions;
-- its revision is the update's, + 1 once final: the close of a candle follows its last forming
-- update, and any later correction raises the sum.
CREATE TEMPORARY VIEW candles_out_${name} AS
SELECT 'candle' AS `type`, symbol, '${name}' AS `interval`, ts AS `timestamp`,
       r.version.`open`, r.version.high, r.version.low, r.version.`close`, r.version.volume,
       r.version.vwap, r.version.trades, r.version.bars, r.version.`final`,
       r.version.revision,
       (ts + ${interval_ms}) / 1000 + ${retention_s} AS ttl
FROM (
  SELECT symbol, ts,
         candle_version(revision, `open`, high, low, `close`, volume, vwap, trades, bars,
                        closed) AS version
  FROM versions_${name}
  GROUP BY symbol, ts
) r
WHERE r.version IS NOT NULL;
