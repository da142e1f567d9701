-- What the aggregates (aggregates.sql) need of one minute's bar, for a query that has the bar's
-- columns: `okey`/`ckey`: '<13-digit t>|<price>', so that MIN/MAX pick the earliest open and the
-- latest close whatever order the minutes arrive in; `pv`, `pvv`: vw*v and v over bars that carry
-- vw; `closes`: whether the watermark when the bar was read (`wm`) had reached the end of the
-- bucket (1 or 0; its sum over a bucket's minutes is positive once MAX(wm) reaches the end).
CONCAT(LPAD(CAST(t AS STRING), 13, '0'), '|', CAST(o AS STRING)) AS okey,
CONCAT(LPAD(CAST(t AS STRING), 13, '0'), '|', CAST(c AS STRING)) AS ckey,
vw * v AS pv,
CASE WHEN vw IS NOT NULL THEN v END AS pvv,
CASE WHEN wm >= t - MOD(t, ${interval_ms}) + ${interval_ms} THEN 1 ELSE 0 END AS closes
