"""The columnar file reader (``ingest.files.read_bar_columns``, what ``speedlayer replay`` reads
history with) against the row reader (``ingest.files.read_bars``): the same bars, bit for bit and
in file order, and the same rejections with the same reasons at the same lines, whatever the
cells hold (numbers in every spelling Python and polars read differently, empty cells, ragged
and empty lines, quotes, CRLF and lone CR line ends, symbols to canonicalise) and wherever the
chunks are cut.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.files import Rejected, read_bar_columns, read_bars
from ingest.replay import ReadCounts, read_batches, read_column_batches
from speedlayer.columns import BarColumns, SymbolTable
from speedlayer.errors import ReplayFormatError

FAST = bool(os.environ.get("SPEEDLAYER_TEST_FAST"))
CASES = settings(
    max_examples=40 if FAST else 200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
T0 = 1_700_000_040_000  # a whole minute
HEADER = "symbol,t,o,h,l,c,v,vw,n"

# Spellings the two parsers might read differently, or not at all.
ODD_NUMBERS = [
    "", " 1.5", "1.5 ", "1e3", "1E3", "+2", ".5", "5.", "inf", "-inf", "Infinity", "nan",
    "NaN", "1_0", "0x10", "1e400", "-0", "-0.0", "0", "1e-320", "abc", "--1", "1.5.2",
    "0.1000000000000000055511151231257827", "9007199254740993", "1e15", "1000000000000001",
]  # fmt: skip
ODD_TIMES = [
    str(T0), f"+{T0}", f"{T0}.0", f"{T0 + 1}", "1.70000004e12", "-60000", "", "7258118400000",
    "7258118340000", " 1700000040000", "abc", "0",
]  # fmt: skip
ODD_SYMBOLS = ["AAPL", "aapl", "X:BTCUSD", "C:EURUSD", "BRK/B", "", " AAPL", "*", "A" * 40]


def prices() -> st.SearchStrategy[str]:
    return st.one_of(
        st.floats(1.0, 200.0).map(repr),
        st.integers(1, 300).map(str),
        st.sampled_from(ODD_NUMBERS),
    )


@st.composite
def rows(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) < 7:  # mostly a valid bar, its numbers in various spellings
        low = draw(st.floats(1.0, 100.0))
        high = low + draw(st.floats(0.0, 5.0))
        cells = [
            draw(st.sampled_from(["AAPL", "MSFT", "X:BTCUSD", "aapl", "S1", "S2"])),
            str(T0 + 60_000 * draw(st.integers(0, 500))),
            repr(draw(st.floats(low, high))),
            repr(high),
            repr(low),
            repr(draw(st.floats(low, high))),
            draw(st.sampled_from(["0", "100", "2.5", "1e3", "-0.0"])),
            draw(st.sampled_from(["", repr(low), "nan", "-1"])),
            draw(st.sampled_from(["", "3", "-1", "1.0", "1000000000001"])),
        ]
        if draw(st.booleans()):
            at = draw(st.integers(2, 8))
            cells[at] = draw(prices() if at < 8 else st.sampled_from(ODD_NUMBERS))
    else:
        cells = [
            draw(st.sampled_from(ODD_SYMBOLS)),
            draw(st.sampled_from(ODD_TIMES)),
            *(draw(prices()) for _ in range(7)),
        ]
    shape = draw(st.integers(0, 19))
    if shape == 0:
        cells = cells[: draw(st.integers(0, 8))]  # ragged: too few fields (or an empty line)
    elif shape == 1:
        cells.append("extra")  # too many: ignored by the row reader
    elif shape == 2:
        cells[0] = f'"{cells[0]}"'  # a quoted field
    return ",".join(cells)


def bars_of(columns: BarColumns, names: list[str]) -> list[tuple[object, ...]]:
    """The bars of columns as reprs of their fields (-0.0 differs from 0.0)."""
    vw = [None if x != x else x for x in columns.vw.tolist()]
    n = [None if x < 0 else x for x in columns.n.tolist()]
    return [
        tuple(repr(x) for x in row)
        for row in zip(
            [names[s] for s in columns.sym.tolist()],
            columns.t.tolist(),
            columns.o.tolist(),
            columns.h.tolist(),
            columns.l.tolist(),
            columns.c.tolist(),
            columns.v.tolist(),
            vw,
            n,
            strict=True,
        )
    ]


def row_reader(path: Path) -> tuple[list[tuple[object, ...]], list[Rejected]]:
    bars: list[tuple[object, ...]] = []
    rejected: list[Rejected] = []
    for record in read_bars(path):
        if isinstance(record, Rejected):
            rejected.append(record)
        else:
            fields: tuple[object, ...] = (record.symbol, record.t, record.o, record.h)
            fields += (record.l, record.c, record.v, record.vw, record.n)
            bars.append(tuple(repr(x) for x in fields))
    return bars, rejected


def column_reader(
    path: Path, chunk_bytes: int
) -> tuple[list[tuple[object, ...]], list[Rejected], int]:
    symbols = SymbolTable()
    bars: list[tuple[object, ...]] = []
    rejected: list[Rejected] = []
    records = 0
    position = 0
    for chunk in read_bar_columns(path, symbols, chunk_bytes):
        bars += bars_of(chunk.columns, symbols.names)
        rejected += chunk.rejected
        records += chunk.records
        assert chunk.position >= position  # progress only moves forward
        position = chunk.position
    assert position == path.stat().st_size or records == 0  # the end, when anything was read
    return bars, rejected, records


@CASES
@given(
    lines=st.lists(rows(), max_size=60),
    line_end=st.sampled_from(["\n", "\r\n", "\n", "\n"]),
    lone_cr=st.booleans(),
    final_newline=st.booleans(),
    chunk_bytes=st.sampled_from([1, 50, 300, 1 << 20]),
)
def test_same_bars_and_rejections_as_the_row_reader(
    tmp_path_factory: object,
    lines: list[str],
    line_end: str,
    lone_cr: bool,
    final_newline: bool,
    chunk_bytes: int,
) -> None:
    body = line_end.join([HEADER, *lines]) + (line_end if final_newline else "")
    if lone_cr and lines:
        body = body.replace(line_end, "\r", 1)  # the header ends in a lone CR
    path = Path(tmp_path_factory.mktemp("csv")) / "bars.csv"  # type: ignore[attr-defined]
    path.write_bytes(body.encode())
    try:
        expected_bars, expected_rejected = row_reader(path)
    except ReplayFormatError:
        return  # the header itself is broken: the column reader says so too (next test)
    bars, rejected, records = column_reader(path, chunk_bytes)
    assert bars == expected_bars
    assert rejected == expected_rejected
    assert records == len(expected_bars) + len(expected_rejected)


def test_a_large_file_with_a_few_bad_rows_in_its_chunks(tmp_path: Path) -> None:
    """The vectorised path with rows read again one by one (chunks of 64 KiB of a 3 MB file),
    columns in another order and an extra column."""
    rng = np.random.default_rng(3)
    count = 40_000
    low = rng.uniform(1, 100, count).round(4)
    high = (low + rng.uniform(0, 2, count)).round(4)
    lines = ["extra,n,vw,v,c,l,h,o,t,symbol"]
    for i in range(count):
        sym = f"S{i % 97}" if i % 1000 else "bad symbol"
        t = T0 + 60_000 * (i // 97) + (1 if i % 4999 == 0 else 0)
        vw = "" if i % 7 == 0 else repr(float(low[i]))
        v = "-5" if i % 3001 == 0 else str(int(rng.integers(0, 10_000)))
        lines.append(f"x,{i % 50},{vw},{v},{high[i]},{low[i]},{high[i]},{low[i]},{t},{sym}")
    path = tmp_path / "bars.csv"
    path.write_text("\n".join(lines) + "\n")
    expected_bars, expected_rejected = row_reader(path)
    bars, rejected, records = column_reader(path, 64 << 10)
    assert len(expected_rejected) > 50  # bad symbols, times, volumes
    assert bars == expected_bars
    assert rejected == expected_rejected
    assert records == count


def test_read_column_batches_counts_as_read_batches(tmp_path: Path) -> None:
    csv_file = tmp_path / "a.csv"
    csv_file.write_text(
        f"{HEADER}\nAAPL,{T0},1,2,1,2,10,,\nAAPL,{T0 + 1},1,2,1,2,10,,\nMSFT,{T0},1,1,1,1,1,1,1\n"
        f"AAPL,{T0},1,2,3,2,10,,\n"
    )
    json_file = tmp_path / "b.jsonl"
    json_file.write_text(
        f'{{"ev":"AM","sym":"AAPL","s":{T0 + 60_000},"o":1,"h":1,"l":1,"c":1,"v":1}}\nnot json\n'
    )
    files = [csv_file, json_file]
    expected = ReadCounts()
    bars = [bar for batch, _ in read_batches(files, 2, expected) for bar in batch]
    counts = ReadCounts()
    symbols = SymbolTable()
    columns = BarColumns.concat([c for c, _ in read_column_batches(files, symbols, counts)])
    assert len(columns) == len(bars) == 3
    assert [symbols.names[s] for s in columns.sym.tolist()] == [bar.symbol for bar in bars]
    assert columns.t.tolist() == [bar.t for bar in bars]
    assert (counts.files, counts.bars_read) == (expected.files, expected.bars_read) == (2, 6)
    assert counts.rejected == expected.rejected
    assert counts.first_rejected == expected.first_rejected
    assert counts.first_rejected["time_not_minute_aligned"] == f"{csv_file}:3"
    assert counts.bytes_read == expected.bytes_read == sum(f.stat().st_size for f in files)


def test_a_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        f"{HEADER}\nAAPL,{T0},1,1,1,1,1,,\n\xc9T\xc9,{T0},1,1,1,1,1,,\n".encode("latin-1")
    )
    try:
        list(read_bar_columns(path, SymbolTable()))
    except ReplayFormatError as exc:
        assert f"{path}:3: not UTF-8 text" in str(exc)
    else:
        raise AssertionError("no ReplayFormatError")


def test_a_csv_without_the_required_header_is_the_same_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("symbol,t,o,h\nAAPL,1,2,3\n")
    messages = []
    for read in (
        lambda: list(read_bars(path)),
        lambda: list(read_bar_columns(path, SymbolTable())),
    ):
        try:
            read()
        except ReplayFormatError as exc:
            messages.append(str(exc))
    assert len(messages) == 2 and messages[0] == messages[1]
    assert "header lacks l, c, v" in messages[0]
