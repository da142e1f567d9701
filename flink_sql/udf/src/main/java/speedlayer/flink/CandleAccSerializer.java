package speedlayer.flink;

import java.io.IOException;
import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;

/** CandleAcc in checkpoints: the interval, the number of minutes, then their fields as longs. */
public final class CandleAccSerializer extends TypeSerializer<CandleAcc> {
    private static final long serialVersionUID = 1L;

    @Override
    public boolean isImmutableType() {
        return false;
    }

    @Override
    public TypeSerializer<CandleAcc> duplicate() {
        return this;
    }

    @Override
    public CandleAcc createInstance() {
        return new CandleAcc();
    }

    @Override
    public CandleAcc copy(CandleAcc from) {
        return from.copy();
    }

    @Override
    public CandleAcc copy(CandleAcc from, CandleAcc reuse) {
        return from.copy();
    }

    @Override
    public int getLength() {
        return -1;
    }

    @Override
    public void serialize(CandleAcc acc, DataOutputView out) throws IOException {
        out.writeLong(acc.length);
        out.writeInt(acc.size);
        int longs = acc.size * CandleAcc.STRIDE;
        for (int i = 0; i < longs; i++) {
            out.writeLong(acc.data[i]);
        }
    }

    @Override
    public CandleAcc deserialize(DataInputView in) throws IOException {
        long length = in.readLong();
        int size = in.readInt();
        CandleAcc acc = new CandleAcc(Math.max(1, size));
        acc.length = length;
        acc.size = size;
        int longs = size * CandleAcc.STRIDE;
        for (int i = 0; i < longs; i++) {
            acc.data[i] = in.readLong();
        }
        return acc;
    }

    @Override
    public CandleAcc deserialize(CandleAcc reuse, DataInputView in) throws IOException {
        return deserialize(in);
    }

    @Override
    public void copy(DataInputView in, DataOutputView out) throws IOException {
        serialize(deserialize(in), out);
    }

    @Override
    public boolean equals(Object other) {
        return other instanceof CandleAccSerializer;
    }

    @Override
    public int hashCode() {
        return CandleAccSerializer.class.hashCode();
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
