package speedlayer.flink;

/**
 * The minutes of one bucket, in time order: per minute its bar (o, h, l, c, v, vw, n), its
 * arrival, the watermark when it was read, and which of vw and n it has. One {@code long[]} of
 * {@link #STRIDE} longs per minute (doubles as their bits), 88 bytes per minute, and the
 * interval's length as the head (CandleAgg).
 */
public final class CandleAcc extends LongRows {
    static final int T = 0;
    static final int O = 1;
    static final int H = 2;
    static final int L = 3;
    static final int C = 4;
    static final int V = 5;
    static final int VW = 6;
    static final int N = 7;
    static final int ARRIVAL = 8;
    static final int WM = 9;
    static final int FLAGS = 10;
    static final long HAS_VW = 1;
    static final long HAS_N = 2;

    public CandleAcc() {
        this(1);
    }

    CandleAcc(int capacity) {
        super(capacity, 60_000L);
    }

    /** The interval's length in ms (the same for every minute of a bucket). */
    long intervalMs() {
        return head;
    }

    void setIntervalMs(long ms) {
        head = ms;
    }

    /** The index of minute {@code t}, or -(insertion point) - 1. */
    int find(long t) {
        int low = 0;
        int high = size - 1;
        while (low <= high) {
            int mid = (low + high) >>> 1;
            long at = data[mid * STRIDE + T];
            if (at < t) {
                low = mid + 1;
            } else if (at > t) {
                high = mid - 1;
            } else {
                return mid;
            }
        }
        return -(low + 1);
    }

    /** Make room at {@code at} for a new minute. */
    void insertAt(int at) {
        reserve();
        System.arraycopy(data, at * STRIDE, data, (at + 1) * STRIDE, (size - at) * STRIDE);
        size++;
    }

    void removeAt(int at) {
        System.arraycopy(data, (at + 1) * STRIDE, data, at * STRIDE, (size - at - 1) * STRIDE);
        size--;
    }
}
