package speedlayer.flink;

import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;

/** VersionAcc in checkpoints: the sum of `closed`, the number of versions, their fields. */
public final class VersionAccSerializer extends LongRowsSerializer<VersionAcc> {
    private static final long serialVersionUID = 1L;

    @Override
    VersionAcc create(int capacity) {
        return new VersionAcc(capacity);
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
