"""Read 1-minute bars from files, in file order (arrival order matters for last-write-wins).

Formats, detected from the content:

* CSV with a header naming at least ``symbol,t,o,h,l,c,v`` (optional ``vw,n``; other columns are
  ignored; an empty ``vw``/``n`` cell means absent) — the format of ``realbars/*/bars_1m.csv``.
* JSON lines of Polygon WebSocket events: one ``AM``/``XA``/``CA`` event object or one frame (a JSON
  array of events) per line. Status events are skipped; other event types are rejected.
* Polygon REST aggregate responses (``{"ticker": ..., "results": [{t,o,h,l,c,v,vw,n}, ...]}``),
  one per file or one per line.

Every record yields either a ``Bar`` or a ``Rejected`` with a reason; a bad record never stops
the read. Polygon events and REST results are decoded as the live client decodes them
(``ingest.polygon.protocol``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ingest.polygon.protocol import Record, Rejected, from_event, from_rest_result
from speedlayer.columns import BAR_FIELDS, BarColumns, SymbolTable, bar_columns
from speedlayer.errors import ReplayFormatError
from speedlayer.models import (
    MAX_PRICE,
    MAX_TRADES,
    MAX_VOLUME,
    MINUTE_MS,
    SYMBOL_RE,
    T_MAX_MS,
    Bar,
    validate_bar,
)
from speedlayer.symbols import canonical_symbol

__all__ = [
    "REQUIRED_CSV_COLUMNS",
    "ColumnChunk",
    "Record",
    "Rejected",
    "read_bar_columns",
    "read_bars",
]

REQUIRED_CSV_COLUMNS = ("symbol", "t", "o", "h", "l", "c", "v")
# Of a CSV file, read and parsed at a time by ``read_bar_columns``: the first chunk is
# FIRST_CHUNK_BYTES, each next one twice the last, up to CHUNK_BYTES (progress comes early,
# large files go in large chunks).
CHUNK_BYTES = 8 << 20
FIRST_CHUNK_BYTES = 1 << 20
JSON_CHUNK_RECORDS = 100_000  # records of a JSON file per chunk of ``read_bar_columns``


def read_bars(path: str | Path) -> Iterator[Record]:
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise ReplayFormatError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        head = handle.read(4096)
        first = head.lstrip()[:1]
        handle.seek(0)
        if first in ("{", "["):
            yield from _read_json(handle, str(path))
        elif first:
            yield from _read_csv(handle, str(path))


@dataclass(frozen=True)
class _CsvLayout:
    """Where a bar CSV's fields are, from its header."""

    columns: int  # header fields
    i_s: int
    i_t: int
    i_o: int
    i_h: int
    i_l: int
    i_c: int
    i_v: int
    i_vw: int | None
    i_n: int | None
    width: int  # a row needs this many fields

    @staticmethod
    def of(header_row: list[str], name: str) -> _CsvLayout:
        header = [column.strip().lower() for column in header_row]
        missing = [column for column in REQUIRED_CSV_COLUMNS if column not in header]
        if missing:
            raise ReplayFormatError(
                f"{name}: not a bar CSV: header lacks {', '.join(missing)} "
                f"(expected symbol,t,o,h,l,c,v[,vw,n])"
            )
        i_s, i_t, i_o, i_h, i_l, i_c, i_v = (header.index(c) for c in REQUIRED_CSV_COLUMNS)
        i_vw = header.index("vw") if "vw" in header else None
        i_n = header.index("n") if "n" in header else None
        width = max(i_s, i_t, i_o, i_h, i_l, i_c, i_v, i_vw or 0, i_n or 0) + 1
        return _CsvLayout(len(header), i_s, i_t, i_o, i_h, i_l, i_c, i_v, i_vw, i_n, width)


def _read_csv(handle: io.TextIOBase, name: str) -> Iterator[Record]:
    reader = csv.reader(handle)
    layout = _CsvLayout.of(next(reader, []), name)
    yield from _csv_records(reader, layout, name)


def _csv_records(
    reader: Any, layout: _CsvLayout, name: str, lines_before: int = 0
) -> Iterator[Record]:
    """The records of a ``csv.reader``'s rows (``lines_before`` lines precede its first)."""
    for row in reader:
        record = _csv_record(row, layout, name, lines_before + reader.line_num)
        if record is not None:
            yield record


def _csv_record(row: list[str], layout: _CsvLayout, name: str, line: int) -> Record | None:
    """One CSV row's Bar or Rejected (None for an empty row), ``line`` its line number."""
    if len(row) < layout.width:
        return None if not row else Rejected("malformed_row", f"{name}:{line}")
    i_vw, i_n = layout.i_vw, layout.i_n
    s, vw, n = (
        row[layout.i_s],
        row[i_vw] if i_vw is not None else "",
        row[i_n] if i_n is not None else "",
    )
    # The common case, checked inline: the conversions and bounds of ``validate_bar``, which
    # the rest (anything unusual or invalid) goes through for its reason. ``int`` of a string
    # equals ``validate_bar``'s conversion wherever these bounds hold (below 2**53).
    try:
        t, o, h, lo, c, v = (
            int(row[layout.i_t]), float(row[layout.i_o]), float(row[layout.i_h]),
            float(row[layout.i_l]), float(row[layout.i_c]), float(row[layout.i_v]),
        )  # fmt: skip
        fvw = float(vw) if vw else None
        tn = int(n) if n else None
    except ValueError:
        pass
    else:
        if (
            0 < lo <= o <= h <= MAX_PRICE
            and lo <= c <= h
            and 0 <= v <= MAX_VOLUME
            and (fvw is None or 0 <= fvw <= MAX_PRICE)
            and (tn is None or 0 <= tn <= MAX_TRADES)
            and t % MINUTE_MS == 0
            and 0 <= t < T_MAX_MS
            and SYMBOL_RE.match(s) is not None
        ):
            return Bar(canonical_symbol(s), t, o, h, lo, c, v, fvw, tn)
    result = validate_bar(
        s, row[layout.i_t], row[layout.i_o], row[layout.i_h], row[layout.i_l], row[layout.i_c],
        row[layout.i_v], vw if i_vw is not None else None, n if i_n is not None else None,
    )  # fmt: skip
    return result if isinstance(result, Bar) else Rejected(result, f"{name}:{line}")


def _read_json(handle: io.TextIOBase, name: str) -> Iterator[Record]:
    text = handle.read()
    try:
        documents: Iterable[tuple[int, object]] = [(0, orjson.loads(text))]
    except orjson.JSONDecodeError:
        documents = _json_lines(text)
    for line, document in documents:
        yield from _from_document(document, f"{name}:{line}" if line else name)


def _json_lines(text: str) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError:
            yield number, _MALFORMED


_MALFORMED = object()


def _from_document(document: object, where: str) -> Iterator[Record]:
    if document is _MALFORMED:
        yield Rejected("malformed_json", where)
    elif isinstance(document, list):
        for event in document:
            yield from _from_document(event, where)
    elif isinstance(document, dict):
        if "results" in document or "resultsCount" in document:
            yield from _from_rest(document, where)
        elif "ev" in document:
            record = from_event(document, where)
            if record is not None:
                yield record
        else:
            yield Rejected("unknown_record", where)
    else:
        yield Rejected("unknown_record", where)


def _from_rest(document: dict[str, object], where: str) -> Iterator[Record]:
    ticker = document.get("ticker")
    results = document.get("results") or []
    if not isinstance(results, list):
        yield Rejected("malformed_rest_response", where)
        return
    for item in results:
        if not isinstance(item, dict):
            yield Rejected("unknown_record", where)
            continue
        yield from_rest_result(ticker, item, where)


# -- columns -------------------------------------------------------------------------------------


@dataclass
class ColumnChunk:
    """A part of a file read by ``read_bar_columns``: its valid bars as columns, in file order,
    the records it held (valid or not), those rejected, and how far into the file (bytes) the
    read has come with it (for progress; a JSON file's chunks say 0 until the last)."""

    columns: BarColumns
    records: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    position: int = 0


def read_bar_columns(
    path: str | Path, symbols: SymbolTable, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[ColumnChunk]:
    """``read_bars`` as columns, chunk by chunk (memory: a chunk, not the file): the same bars
    (symbols coded by ``symbols``) and the same rejections with the same reasons and places.

    A CSV file is parsed in chunks of up to ``chunk_bytes`` (from ``FIRST_CHUNK_BYTES``,
    doubling) by polars, typed, and checked with the bounds
    of ``validate_bar`` in a few vectorised comparisons; a row that fails them (or that the
    parser could not type) is read again by the row reader for its Bar or its reason. A chunk
    whose lines do not all have the header's number of fields is read by the row reader, and so
    is the rest of a file from its first quote character or lone carriage return (a quoted field
    may hold a line break). Other formats are read by ``read_bars`` and turned into columns."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ReplayFormatError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        head = handle.read(4096)
        try:
            first = head.decode("utf-8", errors="ignore").lstrip()[:1]
        finally:
            handle.seek(0)
        if first in ("{", "["):
            yield from _json_columns(path, symbols)
        elif first:
            yield from _csv_columns(handle, str(path), symbols, max(chunk_bytes, 1))


def _json_columns(path: Path, symbols: SymbolTable) -> Iterator[ColumnChunk]:
    yield from _record_chunks(read_bars(path), symbols, lambda: 0, lambda: path.stat().st_size)


def _record_chunks(
    records: Iterable[Bar | Rejected],
    symbols: SymbolTable,
    position: Callable[[], int],
    end: Callable[[], int],
) -> Iterator[ColumnChunk]:
    """Records of the row readers as column chunks of ``JSON_CHUNK_RECORDS`` records; each chunk
    says how far the read has come (``position()``, and ``end()`` for the last)."""
    chunk = ColumnChunk(BarColumns.empty())
    bars: list[Bar] = []
    for record in records:
        chunk.records += 1
        if isinstance(record, Rejected):
            chunk.rejected.append(record)
        else:
            bars.append(record)
        if chunk.records >= JSON_CHUNK_RECORDS:
            chunk.columns = bar_columns(bars, symbols)
            chunk.position = position()
            yield chunk
            chunk, bars = ColumnChunk(BarColumns.empty()), []
    chunk.columns = bar_columns(bars, symbols)
    chunk.position = end()
    yield chunk


def _csv_columns(
    handle: io.BufferedReader, name: str, symbols: SymbolTable, chunk_bytes: int
) -> Iterator[ColumnChunk]:
    header = handle.readline()
    if b'"' in header or b"\r" in header.rstrip(b"\r\n"):  # rare: the row reader, throughout
        handle.seek(0)
        yield from _row_reader_chunks(handle, name, symbols, None, 0)
        return
    layout = _CsvLayout.of(next(csv.reader([_decode(header, name, 0)]), []), name)
    lines_before = 1
    position = len(header)  # of the next chunk in the file
    pending = b""
    size = min(FIRST_CHUNK_BYTES, chunk_bytes)
    codes: dict[str, int] = {}  # symbol as written -> its code (-1: not a symbol)
    while True:
        block = handle.read(size)
        size = min(2 * size, chunk_bytes)
        data = pending + block
        if not data:
            return
        cut = data.rfind(b"\n") + 1 if block else len(data)
        if cut == 0:  # no line end yet: read on
            pending = data
            continue
        chunk, pending = data[:cut], data[cut:]
        if b'"' in chunk or (b"\r" in chunk and chunk.count(b"\r") != chunk.count(b"\r\n")):
            handle.seek(position)
            yield from _row_reader_chunks(handle, name, symbols, layout, lines_before)
            return
        lines = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
        part = _csv_chunk(chunk, lines, layout, name, symbols, codes, lines_before)
        lines_before += lines
        position += len(chunk)
        part.position = position
        yield part
        if not block:
            return


def _row_reader_chunks(
    handle: io.BufferedReader,
    name: str,
    symbols: SymbolTable,
    layout: _CsvLayout | None,
    lines_before: int,
) -> Iterator[ColumnChunk]:
    """The rest of a CSV file from the handle's position through the row reader (``csv``),
    in chunks; ``layout`` None: the header is the first row."""
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    reader = csv.reader(text)
    if layout is None:
        layout = _CsvLayout.of(next(reader, []), name)
    # The text reader reads ahead: the handle's position is about where the records are.
    records = _csv_records(reader, layout, name, lines_before)
    yield from _record_chunks(records, symbols, handle.tell, handle.tell)
    text.detach()


def _decode(data: bytes, name: str, lines_before: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = lines_before + data.count(b"\n", 0, exc.start) + 1
        raise ReplayFormatError(f"{name}:{line}: not UTF-8 text ({exc.reason})") from None


def _csv_chunk(
    chunk: bytes,
    lines: int,
    layout: _CsvLayout,
    name: str,
    symbols: SymbolTable,
    codes: dict[str, int],
    lines_before: int,
) -> ColumnChunk:
    """One chunk of whole lines without quotes: parsed by polars where every line has the
    header's fields, by the row reader otherwise. ``codes`` caches the code of each symbol as
    written (-1: not a symbol) across the chunks of a file."""
    import polars as pl  # only replay reads columns

    if chunk.count(b",") != lines * (layout.columns - 1):
        return _rows_chunk(_decode(chunk, name, lines_before), layout, name, symbols, lines_before)
    typed = {layout.i_t: pl.Int64, layout.i_o: pl.Float64, layout.i_h: pl.Float64}
    typed |= {layout.i_l: pl.Float64, layout.i_c: pl.Float64, layout.i_v: pl.Float64}
    if layout.i_vw is not None:
        typed[layout.i_vw] = pl.Float64
    if layout.i_n is not None:
        typed[layout.i_n] = pl.Int64
    schema = {f"c{i}": typed.get(i, pl.String) for i in range(layout.columns)}
    try:
        frame = pl.read_csv(
            chunk, has_header=False, schema=schema, quote_char=None, encoding="utf8"
        )
    except (pl.exceptions.PolarsError, ValueError):  # a value it cannot type, a ragged line
        return _rows_chunk(_decode(chunk, name, lines_before), layout, name, symbols, lines_before)
    if frame.height != lines:
        return _rows_chunk(_decode(chunk, name, lines_before), layout, name, symbols, lines_before)

    def column(index: int) -> Any:
        return frame.get_column(f"c{index}")

    raw_symbols = column(layout.i_s).fill_null("")
    names = raw_symbols.unique(maintain_order=True).to_list()
    for s in names:
        if s not in codes:
            codes[s] = symbols.code(canonical_symbol(s)) if SYMBOL_RE.match(s) is not None else -1
    sym = raw_symbols.replace_strict(
        names, [codes[s] for s in names], return_dtype=pl.Int64
    ).to_numpy()
    required = [column(i) for i in (layout.i_t, layout.i_o, layout.i_h, layout.i_l)]
    required += [column(layout.i_c), column(layout.i_v)]
    present = np.ones(lines, dtype=np.bool_)
    for series in required:
        if series.null_count():
            present &= series.is_not_null().to_numpy()
    t, o, h, lo, c, v = (series.fill_null(0).to_numpy() for series in required)
    if layout.i_vw is not None:
        vw_column = column(layout.i_vw)
        vw_null = vw_column.is_null().to_numpy()
        vw = vw_column.fill_null(np.nan).to_numpy()
    else:
        vw_null, vw = np.ones(lines, dtype=np.bool_), np.full(lines, np.nan)
    if layout.i_n is not None:
        n_column = column(layout.i_n)
        n_null = n_column.is_null().to_numpy()
        n = n_column.fill_null(-1).to_numpy()
    else:
        n_null, n = np.ones(lines, dtype=np.bool_), np.full(lines, -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        # The inline check of the row reader (``_csv_record``), element by element.
        valid = (
            present
            & (sym >= 0)
            & (lo > 0) & (lo <= o) & (o <= h) & (h <= MAX_PRICE)
            & (lo <= c) & (c <= h)
            & (v >= 0) & (v <= MAX_VOLUME)
            & (vw_null | ((vw >= 0) & (vw <= MAX_PRICE)))
            & (n_null | ((n >= 0) & (n <= MAX_TRADES)))
            & (t % MINUTE_MS == 0) & (t >= 0) & (t < T_MAX_MS)
        )  # fmt: skip
    columns = BarColumns(sym, t, o, h, lo, c, v, vw, n)
    result = ColumnChunk(columns, lines)
    if valid.all():
        return result
    # The rest, row by row, for their Bar or their reason (into copies: polars' arrays may be
    # read-only views).
    columns = BarColumns(*(np.array(getattr(columns, f)) for f in BAR_FIELDS))
    text_lines = chunk.split(b"\n")
    for row_index in np.flatnonzero(~valid).tolist():
        line = _decode(text_lines[row_index], name, lines_before + row_index)
        row = next(csv.reader([line]), [])
        record = _csv_record(row, layout, name, lines_before + row_index + 1)
        if isinstance(record, Bar):
            valid[row_index] = True
            columns.sym[row_index] = symbols.code(record.symbol)
            columns.t[row_index] = record.t
            columns.o[row_index], columns.h[row_index] = record.o, record.h
            columns.l[row_index], columns.c[row_index] = record.l, record.c
            columns.v[row_index] = record.v
            columns.vw[row_index] = np.nan if record.vw is None else record.vw
            columns.n[row_index] = -1 if record.n is None else record.n
        elif record is not None:
            result.rejected.append(record)
        else:  # an empty row is no record
            result.records -= 1
    result.columns = columns.take(valid)
    return result


def _rows_chunk(
    text: str, layout: _CsvLayout, name: str, symbols: SymbolTable, lines_before: int
) -> ColumnChunk:
    """A chunk through the row reader."""
    result = ColumnChunk(BarColumns.empty())
    bars: list[Bar] = []
    for record in _csv_records(
        csv.reader(io.StringIO(text, newline="")), layout, name, lines_before
    ):
        result.records += 1
        if isinstance(record, Rejected):
            result.rejected.append(record)
        else:
            bars.append(record)
    result.columns = bar_columns(bars, symbols)
    return result
