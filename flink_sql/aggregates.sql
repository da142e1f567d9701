-- A candle's aggregates over the minutes of its bucket (with the fields of minute.sql); the
-- candle's values follow in interval.sql (open/close from the keys, VWAP with the one-bar rule).
-- `arrivals`: the sum of the minutes' arrivals, each counted from 1 (offsets start at 0, and a
-- minute must raise the sum), the candle's revision in interval.sql.
MIN(okey) AS okey, MAX(ckey) AS ckey, MAX(h) AS high, MIN(l) AS low, SUM(v) AS volume,
SUM(pv) AS pv, SUM(pvv) AS pvv, SUM(n) AS trades, COUNT(*) AS bars, MAX(vw) AS vw1,
SUM(arrival + 1) AS arrivals
