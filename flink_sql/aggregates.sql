-- A candle's aggregates over the unpacked minutes of its bucket (unpack.sql); the candle's
-- values follow in interval.sql (open/close from the keys, VWAP with the one-bar rule).
MIN(t) - MOD(MIN(t), ${interval_ms}) AS ts,
MIN(okey) AS okey, MAX(ckey) AS ckey, MAX(h) AS high, MIN(l) AS low, SUM(v) AS volume,
SUM(pv) AS pv, SUM(pvv) AS pvv, SUM(n) AS trades, COUNT(*) AS bars, MAX(vw) AS vw1,
MAX(arrival) AS arrival, MAX(wm) AS wm
