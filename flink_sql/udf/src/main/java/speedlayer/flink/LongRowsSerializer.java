package speedlayer.flink;

import java.io.IOException;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;

/**
 * An accumulator of {@link LongRows} in checkpoints: its head, the number of rows, then their
 * longs. Stateless; each accumulator has its own subclass (the name Flink records with the state)
 * and snapshot.
 */
public abstract class LongRowsSerializer<T extends LongRows> extends TypeSerializer<T> {
    private static final long serialVersionUID = 1L;

    /** An empty accumulator with room for {@code capacity} rows. */
    abstract T create(int capacity);

    @Override
    public boolean isImmutableType() {
        return false;
    }

    @Override
    public TypeSerializer<T> duplicate() {
        return this;
    }

    @Override
    public T createInstance() {
        return create(1);
    }

    @Override
    public T copy(T from) {
        return from.copyInto(create(0));
    }

    @Override
    public T copy(T from, T reuse) {
        return copy(from);
    }

    @Override
    public int getLength() {
        return -1;
    }

    @Override
    public void serialize(T acc, DataOutputView out) throws IOException {
        out.writeLong(acc.head);
        out.writeInt(acc.size);
        int longs = acc.size * LongRows.STRIDE;
        for (int i = 0; i < longs; i++) {
            out.writeLong(acc.data[i]);
        }
    }

    @Override
    public T deserialize(DataInputView in) throws IOException {
        long head = in.readLong();
        int size = in.readInt();
        T acc = create(Math.max(1, size));
        acc.head = head;
        acc.size = size;
        int longs = size * LongRows.STRIDE;
        for (int i = 0; i < longs; i++) {
            acc.data[i] = in.readLong();
        }
        return acc;
    }

    @Override
    public T deserialize(T reuse, DataInputView in) throws IOException {
        return deserialize(in);
    }

    @Override
    public void copy(DataInputView in, DataOutputView out) throws IOException {
        serialize(deserialize(in), out);
    }

    @Override
    public boolean equals(Object other) {
        return other != null && other.getClass() == getClass();
    }

    @Override
    public int hashCode() {
        return getClass().hashCode();
    }
}
