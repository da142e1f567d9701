package speedlayer.flink;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.types.Row;

/**
 * A bucket's candle from the newest version of each of its minutes (interval.sql,
 * docs/flink.md#the-job): {@code candle_agg(t, o, h, l, c, v, vw, n, arrival, wm, interval_ms)}.
 *
 * <p>The accumulator keeps the minutes themselves (CandleAcc), so a retraction removes exactly
 * one minute and the candle is recomputed from what is left: one object per bucket in state
 * instead of the maps of values every retractable MIN/MAX keeps. {@code accumulate} adds a
 * minute, or replaces the version it holds unless that one arrived later; {@code retract}
 * removes the minute only if it holds that same version (same arrival).
 *
 * <p>The value: open of the earliest minute, close of the latest, max/min, volume, VWAP =
 * Σ(vw·v)/Σv over the minutes with vw (a one-minute candle keeps its own vw; none without a
 * positive Σv), trades = Σn over the minutes with n (null if none), bars, {@code arrivals} =
 * Σ(arrival + 1) over the minutes (every bar added and every minute replaced by a resend raises
 * it: twice it is the candle's revision), and {@code closes}: whether the watermark of one of
 * its minutes had reached the bucket's end (the bucket: t - t % interval_ms). Sums run in time
 * order, as in the embedded resampler. An empty bucket gives null (the group-by drops it
 * before: it counts its rows).
 */
@FunctionHint(
        accumulator =
                @DataTypeHint(
                        value = "RAW",
                        bridgedTo = CandleAcc.class,
                        rawSerializer = CandleAccSerializer.class),
        output =
                @DataTypeHint(
                        "ROW<bucket BIGINT, `open` DOUBLE, high DOUBLE, low DOUBLE, `close` DOUBLE,"
                                + " volume DOUBLE, vwap DOUBLE, trades BIGINT, bars BIGINT,"
                                + " arrivals BIGINT, closes BOOLEAN>"))
public class CandleAgg extends AggregateFunction<Row, CandleAcc> {

    @Override
    public CandleAcc createAccumulator() {
        return new CandleAcc();
    }

    public void accumulate(
            CandleAcc acc,
            Long t,
            Double o,
            Double h,
            Double l,
            Double c,
            Double v,
            Double vw,
            Long n,
            Long arrival,
            Long wm,
            Long length) {
        if (t == null || o == null || h == null || l == null || c == null || v == null) {
            return;
        }
        long a = arrival == null ? Long.MIN_VALUE : arrival;
        int at = acc.find(t);
        if (at >= 0) {
            if (acc.get(at, CandleAcc.ARRIVAL) > a) {
                return;
            }
        } else {
            at = -at - 1;
            acc.insertAt(at);
            acc.set(at, CandleAcc.T, t);
        }
        acc.setDouble(at, CandleAcc.O, o);
        acc.setDouble(at, CandleAcc.H, h);
        acc.setDouble(at, CandleAcc.L, l);
        acc.setDouble(at, CandleAcc.C, c);
        acc.setDouble(at, CandleAcc.V, v);
        acc.setDouble(at, CandleAcc.VW, vw == null ? 0.0 : vw);
        acc.set(at, CandleAcc.N, n == null ? 0L : n);
        acc.set(at, CandleAcc.ARRIVAL, a);
        acc.set(at, CandleAcc.WM, wm == null ? Long.MIN_VALUE : wm);
        acc.set(
                at,
                CandleAcc.FLAGS,
                (vw == null ? 0 : CandleAcc.HAS_VW) | (n == null ? 0 : CandleAcc.HAS_N));
        if (length != null) {
            acc.setIntervalMs(length);
        }
    }

    public void retract(
            CandleAcc acc,
            Long t,
            Double o,
            Double h,
            Double l,
            Double c,
            Double v,
            Double vw,
            Long n,
            Long arrival,
            Long wm,
            Long length) {
        if (t == null) {
            return;
        }
        int at = acc.find(t);
        long a = arrival == null ? Long.MIN_VALUE : arrival;
        if (at >= 0 && acc.get(at, CandleAcc.ARRIVAL) == a) {
            acc.removeAt(at);
        }
    }

    @Override
    public Row getValue(CandleAcc acc) {
        int size = acc.size;
        if (size == 0) {
            return null;
        }
        double high = acc.getDouble(0, CandleAcc.H);
        double low = acc.getDouble(0, CandleAcc.L);
        double volume = 0.0;
        double pv = 0.0;
        double pvv = 0.0;
        boolean anyN = false;
        long trades = 0L;
        long arrivals = 0L;
        long wm = acc.get(0, CandleAcc.WM);
        for (int i = 0; i < size; i++) {
            double h = acc.getDouble(i, CandleAcc.H);
            double l = acc.getDouble(i, CandleAcc.L);
            double v = acc.getDouble(i, CandleAcc.V);
            long flags = acc.get(i, CandleAcc.FLAGS);
            if (h > high) {
                high = h;
            }
            if (l < low) {
                low = l;
            }
            volume += v;
            if ((flags & CandleAcc.HAS_VW) != 0) {
                pv += acc.getDouble(i, CandleAcc.VW) * v;
                pvv += v;
            }
            if ((flags & CandleAcc.HAS_N) != 0) {
                anyN = true;
                trades += acc.get(i, CandleAcc.N);
            }
            arrivals += acc.get(i, CandleAcc.ARRIVAL) + 1;
            wm = Math.max(wm, acc.get(i, CandleAcc.WM));
        }
        Double vwap;
        if (size == 1) {
            boolean hasVw = (acc.get(0, CandleAcc.FLAGS) & CandleAcc.HAS_VW) != 0;
            vwap = hasVw ? acc.getDouble(0, CandleAcc.VW) : null;
        } else {
            vwap = pvv > 0 ? pv / pvv : null;
        }
        long first = acc.get(0, CandleAcc.T);
        long bucket = first - first % acc.intervalMs();
        return Row.of(
                bucket,
                acc.getDouble(0, CandleAcc.O),
                high,
                low,
                acc.getDouble(size - 1, CandleAcc.C),
                volume,
                vwap,
                anyN ? trades : null,
                (long) size,
                arrivals,
                wm >= bucket + acc.intervalMs());
    }
}
