package speedlayer.flink;

import java.io.IOException;
import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;

/** VersionAcc in checkpoints: the sum of `closed`, the number of versions, then their fields. */
public final class VersionAccSerializer extends TypeSerializer<VersionAcc> {
    private static final long serialVersionUID = 1L;

    @Override
    public boolean isImmutableType() {
        return false;
    }

    @Override
    public TypeSerializer<VersionAcc> duplicate() {
        return this;
    }

    @Override
    public VersionAcc createInstance() {
        return new VersionAcc();
    }

    @Override
    public VersionAcc copy(VersionAcc from) {
        return from.copy();
    }

    @Override
    public VersionAcc copy(VersionAcc from, VersionAcc reuse) {
        return from.copy();
    }

    @Override
    public int getLength() {
        return -1;
    }

    @Override
    public void serialize(VersionAcc acc, DataOutputView out) throws IOException {
        out.writeLong(acc.closed);
        out.writeInt(acc.size);
        int longs = acc.size * VersionAcc.STRIDE;
        for (int i = 0; i < longs; i++) {
            out.writeLong(acc.data[i]);
        }
    }

    @Override
    public VersionAcc deserialize(DataInputView in) throws IOException {
        long closed = in.readLong();
        int size = in.readInt();
        VersionAcc acc = new VersionAcc(Math.max(1, size));
        acc.closed = closed;
        acc.size = size;
        int longs = size * VersionAcc.STRIDE;
        for (int i = 0; i < longs; i++) {
            acc.data[i] = in.readLong();
        }
        return acc;
    }

    @Override
    public VersionAcc deserialize(VersionAcc reuse, DataInputView in) throws IOException {
        return deserialize(in);
    }

    @Override
    public void copy(DataInputView in, DataOutputView out) throws IOException {
        serialize(deserialize(in), out);
    }

    @Override
    public boolean equals(Object other) {
        return other instanceof VersionAccSerializer;
    }

    @Override
    public int hashCode() {
        return VersionAccSerializer.class.hashCode();
    }

    @Override
    public TypeSerializerSnapshot<VersionAcc> snapshotConfiguration() {
        return new Snapshot();
    }

    /** The serializer has no configuration: its snapshot only names it. */
    public static final class Snapshot extends SimpleTypeSerializerSnapshot<VersionAcc> {
        public Snapshot() {
            super(VersionAccSerializer::new);
        }
    }
}
