package speedlayer.flink;

import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;

/** CandleAcc in checkpoints: the interval's length, the number of minutes, their fields. */
public final class CandleAccSerializer extends LongRowsSerializer<CandleAcc> {
    private static final long serialVersionUID = 1L;

    @Override
    CandleAcc create(int capacity) {
        return new CandleAcc(capacity);
    }

    @Override
    public TypeSerializerSnapshot<CandleAcc> snapshotConfiguration() {
        return new Snapshot();
    }

    /** The serializer has no configuration: its snapshot only names it. */
    public static final class Snapshot extends SimpleTypeSerializerSnapshot<CandleAcc> {
        public Snapshot() {
            super(CandleAccSerializer::new);
        }
    }
}
