package speedlayer.flink;

import java.util.Arrays;

/**
 * The live versions of one candle (VersionAgg), each with its count (+1 per accumulate, -1 per
 * retract of an equal version, as the multiset a retractable MAX keeps), and the sum of their
 * `closed` flags. One {@code long[]} of {@link #STRIDE} longs per version (doubles as their
 * bits); usually one or two versions.
 */
public final class VersionAcc extends LongRows {
    static final int REVISION = 0;
    static final int OPEN = 1;
    static final int HIGH = 2;
    static final int LOW = 3;
    static final int CLOSE = 4;
    static final int VOLUME = 5;
    static final int VWAP = 6;
    static final int TRADES = 7;
    static final int BARS = 8;
    static final int FLAGS = 9;
    static final int COUNT = 10;
    static final long HAS_VWAP = 1;
    static final long HAS_TRADES = 2;

    public VersionAcc() {
        this(1);
    }

    VersionAcc(int capacity) {
        super(capacity, 0L);
    }

    /** The sum of the live versions' `closed` flags (the head). */
    long closed() {
        return head;
    }

    void addClosed(long delta) {
        head += delta;
    }

    /** A new entry at the end (all zero). */
    int append() {
        reserve();
        Arrays.fill(data, size * STRIDE, (size + 1) * STRIDE, 0L);
        return size++;
    }

    /** Remove entry {@code at}, moving the last entry into its place. */
    void removeAt(int at) {
        int last = size - 1;
        if (at != last) {
            System.arraycopy(data, last * STRIDE, data, at * STRIDE, STRIDE);
        }
        size = last;
    }
}
