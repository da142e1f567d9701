-- The fields of a `packed` bar (bars.sql), for a query that has `t` and `packed`: the bar's
-- values, its arrival and the watermark when it was read, and what the aggregates need
-- (`okey`/`ckey`: '<13-digit t>|<price>', so that MIN/MAX pick the earliest open and the latest
-- close whatever order the minutes arrive in; `pv`, `pvv`: vw*v and v over bars that carry vw).
CAST(SPLIT_INDEX(packed, '|', 0) AS BIGINT) AS arrival,
CAST(SPLIT_INDEX(packed, '|', 2) AS DOUBLE) AS h,
CAST(SPLIT_INDEX(packed, '|', 3) AS DOUBLE) AS l,
CAST(SPLIT_INDEX(packed, '|', 5) AS DOUBLE) AS v,
CAST(NULLIF(SPLIT_INDEX(packed, '|', 6), '') AS DOUBLE) AS vw,
CAST(NULLIF(SPLIT_INDEX(packed, '|', 7), '') AS BIGINT) AS n,
CAST(SPLIT_INDEX(packed, '|', 8) AS BIGINT) AS wm,
CONCAT(LPAD(CAST(t AS STRING), 13, '0'), '|', SPLIT_INDEX(packed, '|', 1)) AS okey,
CONCAT(LPAD(CAST(t AS STRING), 13, '0'), '|', SPLIT_INDEX(packed, '|', 4)) AS ckey,
CAST(NULLIF(SPLIT_INDEX(packed, '|', 6), '') AS DOUBLE) * CAST(SPLIT_INDEX(packed, '|', 5) AS DOUBLE) AS pv,
CASE WHEN SPLIT_INDEX(packed, '|', 6) <> '' THEN CAST(SPLIT_INDEX(packed, '|', 5) AS DOUBLE) END AS pvv
