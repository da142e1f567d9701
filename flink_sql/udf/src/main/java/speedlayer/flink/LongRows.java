package speedlayer.flink;

import java.util.Arrays;

/**
 * Rows of {@link #STRIDE} longs in one {@code long[]} (doubles as their bits), and one long about
 * them all ({@link #head}): the shape of both accumulators (CandleAcc, VersionAcc), so that one
 * accumulator is two small objects in state, and of what {@link LongRowsSerializer} writes to
 * checkpoints.
 */
public abstract class LongRows {
    static final int STRIDE = 11;

    public long head;
    public int size;
    public long[] data;

    LongRows(int capacity, long head) {
        this.data = new long[capacity * STRIDE];
        this.head = head;
    }

    long get(int row, int field) {
        return data[row * STRIDE + field];
    }

    double getDouble(int row, int field) {
        return Double.longBitsToDouble(data[row * STRIDE + field]);
    }

    void set(int row, int field, long value) {
        data[row * STRIDE + field] = value;
    }

    void setDouble(int row, int field, double value) {
        data[row * STRIDE + field] = Double.doubleToRawLongBits(value);
    }

    /** Room for one more row. */
    void reserve() {
        if ((size + 1) * STRIDE > data.length) {
            data = Arrays.copyOf(data, Math.max(2, size * 2) * STRIDE);
        }
    }

    /** This one's rows and head in {@code to}, which is returned. */
    <T extends LongRows> T copyInto(T to) {
        to.head = head;
        to.size = size;
        to.data = Arrays.copyOf(data, size * STRIDE);
        return to;
    }
}
