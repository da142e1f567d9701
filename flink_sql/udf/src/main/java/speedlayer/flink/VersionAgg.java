package speedlayer.flink;

import java.util.Arrays;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.types.Row;

/**
 * A candle's record from its versions (interval.sql, docs/flink.md#the-job):
 * {@code candle_version(revision, open, high, low, close, volume, vwap, trades, bars, closed)}
 * gives the values of the live update with the highest revision, and `final` when the sum of
 * `closed` (0 or 1) over the live versions is positive; the revision is the update's, + 1 once
 * final. A close (the event-time window's row) comes with a null revision and values: it only
 * counts in `closed`. Versions are live as a multiset: accumulate counts one up, retract of an
 * equal version one down, all in one small object in state. Two live updates never share a
 * revision (the group-by before retracts an update before it sends the next); if they did, the
 * one added first would be kept. Null while no update is live (a bucket whose close came
 * first).
 */
@FunctionHint(
        accumulator =
                @DataTypeHint(
                        value = "RAW",
                        bridgedTo = VersionAcc.class,
                        rawSerializer = VersionAccSerializer.class),
        output =
                @DataTypeHint(
                        "ROW<`open` DOUBLE, high DOUBLE, low DOUBLE, `close` DOUBLE, volume DOUBLE,"
                                + " vwap DOUBLE, trades BIGINT, bars BIGINT, `final` BOOLEAN,"
                                + " revision BIGINT>"))
public class VersionAgg extends AggregateFunction<Row, VersionAcc> {

    @Override
    public VersionAcc createAccumulator() {
        return new VersionAcc();
    }

    private static void change(
            VersionAcc acc,
            int delta,
            Long revision,
            Double open,
            Double high,
            Double low,
            Double close,
            Double volume,
            Double vwap,
            Long trades,
            Long bars,
            Boolean closed) {
        if (closed != null && closed) {
            acc.addClosed(delta);
        }
        if (revision == null || open == null || high == null || low == null || close == null
                || volume == null || bars == null) {
            return;
        }
        long[] entry = new long[VersionAcc.STRIDE];
        entry[VersionAcc.REVISION] = revision;
        entry[VersionAcc.OPEN] = Double.doubleToLongBits(open);
        entry[VersionAcc.HIGH] = Double.doubleToLongBits(high);
        entry[VersionAcc.LOW] = Double.doubleToLongBits(low);
        entry[VersionAcc.CLOSE] = Double.doubleToLongBits(close);
        entry[VersionAcc.VOLUME] = Double.doubleToLongBits(volume);
        entry[VersionAcc.VWAP] = vwap == null ? 0L : Double.doubleToLongBits(vwap);
        entry[VersionAcc.TRADES] = trades == null ? 0L : trades;
        entry[VersionAcc.BARS] = bars;
        entry[VersionAcc.FLAGS] =
                (vwap == null ? 0 : VersionAcc.HAS_VWAP)
                        | (trades == null ? 0 : VersionAcc.HAS_TRADES);
        int at = -1;
        for (int i = 0; i < acc.size && at < 0; i++) {
            // Equal in every field (doubles by their bits), the count aside.
            if (Arrays.equals(
                    acc.data, i * VersionAcc.STRIDE, i * VersionAcc.STRIDE + VersionAcc.COUNT,
                    entry, 0, VersionAcc.COUNT)) {
                at = i;
            }
        }
        if (at < 0) {
            at = acc.append();
            System.arraycopy(entry, 0, acc.data, at * VersionAcc.STRIDE, VersionAcc.COUNT);
        }
        int count = at * VersionAcc.STRIDE + VersionAcc.COUNT;
        acc.data[count] += delta;
        if (acc.data[count] == 0) {
            acc.removeAt(at);
        }
    }

    public void accumulate(
            VersionAcc acc,
            Long revision,
            Double open,
            Double high,
            Double low,
            Double close,
            Double volume,
            Double vwap,
            Long trades,
            Long bars,
            Boolean closed) {
        change(acc, 1, revision, open, high, low, close, volume, vwap, trades, bars, closed);
    }

    public void retract(
            VersionAcc acc,
            Long revision,
            Double open,
            Double high,
            Double low,
            Double close,
            Double volume,
            Double vwap,
            Long trades,
            Long bars,
            Boolean closed) {
        change(acc, -1, revision, open, high, low, close, volume, vwap, trades, bars, closed);
    }

    @Override
    public Row getValue(VersionAcc acc) {
        int best = -1;
        for (int i = 0; i < acc.size; i++) {
            if (acc.get(i, VersionAcc.COUNT) > 0
                    && (best < 0
                            || acc.get(i, VersionAcc.REVISION)
                                    > acc.get(best, VersionAcc.REVISION))) {
                best = i;
            }
        }
        if (best < 0) {
            return null;
        }
        long flags = acc.get(best, VersionAcc.FLAGS);
        return Row.of(
                acc.getDouble(best, VersionAcc.OPEN),
                acc.getDouble(best, VersionAcc.HIGH),
                acc.getDouble(best, VersionAcc.LOW),
                acc.getDouble(best, VersionAcc.CLOSE),
                acc.getDouble(best, VersionAcc.VOLUME),
                (flags & VersionAcc.HAS_VWAP) != 0 ? acc.getDouble(best, VersionAcc.VWAP) : null,
                (flags & VersionAcc.HAS_TRADES) != 0 ? acc.get(best, VersionAcc.TRADES) : null,
                acc.get(best, VersionAcc.BARS),
                acc.closed() > 0,
                acc.get(best, VersionAcc.REVISION) + (acc.closed() > 0 ? 1 : 0));
    }
}
