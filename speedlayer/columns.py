"""Bars and candles as numpy columns: the form history takes from the file to the store
(``speedlayer replay``: ``ingest.files.read_bar_columns`` -> ``processors.columnar`` ->
``Store.upsert_columns``), with no Python object per bar or per candle on the way.

Symbols are small integer codes into a ``SymbolTable`` shared by the reader and the engine; an
absent VWAP is NaN and an absent trade count -1 (validated bars never have a NaN VWAP or a
negative trade count). Only the replay command uses this module (numpy): the Lambda zip leaves
it out (launch/lambda_package.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import cast

import numpy as np
import numpy.typing as npt

from speedlayer.intervals import Interval
from speedlayer.models import Bar, Candle

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

BAR_FIELDS = ("sym", "t", "o", "h", "l", "c", "v", "vw", "n")


@dataclass
class BarColumns:
    """Bars as columns: ``sym`` codes into a symbol table, ``vw`` NaN and ``n`` -1 when absent."""

    sym: Ints
    t: Ints
    o: Floats
    h: Floats
    l: Floats  # noqa: E741 - the bar's field name
    c: Floats
    v: Floats
    vw: Floats
    n: Ints

    def __len__(self) -> int:
        return len(self.t)

    def take(self, rows: Ints | Bools) -> BarColumns:
        return BarColumns(
            self.sym[rows], self.t[rows], self.o[rows], self.h[rows], self.l[rows],
            self.c[rows], self.v[rows], self.vw[rows], self.n[rows],
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[BarColumns]) -> BarColumns:
        if len(parts) == 1:
            return parts[0]
        return BarColumns(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in BAR_FIELDS)
        )

    @staticmethod
    def empty() -> BarColumns:
        ints, floats = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        return BarColumns(ints, ints, floats, floats, floats, floats, floats, floats, ints)


class SymbolTable:
    """Symbol <-> small integer code, stable for the table's life (codes are given in the order
    symbols are first seen; ``ranks`` orders them by name)."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, symbol: str) -> int:
        code = self.codes.get(symbol)
        if code is None:
            code = self.codes[symbol] = len(self.names)
            self.names.append(symbol)
        return code

    def ranks(self) -> Ints:
        """Each code's place in the symbols sorted by name (the order of the stores' keys: a
        table's rows sorted by (rank, time) are in key order)."""
        ranks = np.empty(len(self.names), dtype=np.int64)
        ranks[np.argsort(np.asarray(self.names, dtype=object), kind="stable")] = np.arange(
            len(self.names)
        )
        return ranks


def bar_columns(bars: Sequence[Bar], symbols: SymbolTable) -> BarColumns:
    """Columns of ``bars`` (same order); new symbols get codes in ``symbols``."""
    codes = symbols.codes
    code = symbols.code
    count = len(bars)
    return BarColumns(
        np.fromiter(
            (codes[b.symbol] if b.symbol in codes else code(b.symbol) for b in bars),
            np.int64,
            count,
        ),
        np.fromiter((b.t for b in bars), np.int64, count),
        np.fromiter((b.o for b in bars), np.float64, count),
        np.fromiter((b.h for b in bars), np.float64, count),
        np.fromiter((b.l for b in bars), np.float64, count),
        np.fromiter((b.c for b in bars), np.float64, count),
        np.fromiter((b.v for b in bars), np.float64, count),
        np.fromiter((np.nan if b.vw is None else b.vw for b in bars), np.float64, count),
        np.fromiter((-1 if b.n is None else b.n for b in bars), np.int64, count),
    )


@dataclass
class CandleColumns:
    """One interval's final candles as columns (``vwap`` NaN and ``trades`` -1 when null);
    ``final`` is true and ``revision`` equals ``bars`` for each (processors/columnar.py)."""

    interval: Interval
    sym: Ints
    timestamp: Ints
    open: Floats
    high: Floats
    low: Floats
    close: Floats
    volume: Floats
    vwap: Floats
    trades: Ints
    bars: Ints

    def __len__(self) -> int:
        return len(self.timestamp)

    def slice(self, start: int, stop: int) -> CandleColumns:
        return CandleColumns(
            self.interval, self.sym[start:stop], self.timestamp[start:stop],
            self.open[start:stop], self.high[start:stop], self.low[start:stop],
            self.close[start:stop], self.volume[start:stop], self.vwap[start:stop],
            self.trades[start:stop], self.bars[start:stop],
        )  # fmt: skip

    def ttls(self) -> Ints:
        """Each candle's ``ttl`` (epoch seconds): its bucket's end plus the retention."""
        return self.interval.bucket_ends(self.timestamp) // 1000 + self.interval.retention_s

    def rows(self, names: Sequence[str], final: object = 1) -> list[tuple[object, ...]]:
        """The candles as tuples of ``Candle``'s fields in declaration order (``names[code]``
        is a code's symbol; ``final`` as 1, SQLite's true), built column by column: no ``Candle``
        per row."""
        fields = self.row_fields(names, final)
        return list(zip(*(f if isinstance(f, list) else repeat(f) for f in fields), strict=False))

    def row_fields(self, names: Sequence[str], final: object) -> list[object]:
        """``Candle``'s fields in order: a list of each candle's value, or one value for all."""
        bar_counts = self.bars.tolist()
        return [
            np.asarray(names, dtype=object)[self.sym].tolist(),
            self.interval.name,
            self.timestamp.tolist(),
            self.open.tolist(),
            self.high.tolist(),
            self.low.tolist(),
            self.close.tolist(),
            self.volume.tolist(),
            _nullable(self.vwap.tolist(), bool(np.isnan(self.vwap).any())),
            _nullable(self.trades.tolist(), bool((self.trades < 0).any())),
            bar_counts,
            final,
            bar_counts,  # revision: one per distinct bar (processors/columnar.py)
            self.ttls().tolist(),
        ]

    def final_flat(self, names: Sequence[str]) -> list[object]:
        """The rows as one flat list of ``symbol, timestamp, open, high, low, close, volume,
        vwap, trades, bars, ttl`` each (the interval, ``final`` and ``revision`` = ``bars`` go
        without saying: ``SQLiteStore.upsert_columns``)."""
        fields = self.row_fields(names, 1)
        del fields[11:13]  # final, revision
        del fields[1]  # interval
        width = len(fields)
        out: list[object] = [None] * (len(self) * width)
        for at, values in enumerate(fields):
            out[at::width] = cast(list[object], values)
        return out


def _nullable(values: list[float] | list[int], has_null: bool) -> list[object]:
    """NaN and negative numbers are the columns' null."""
    if not has_null:
        return values  # type: ignore[return-value]
    return [None if x != x or x < 0 else x for x in values]


def to_candles(columns: Sequence[CandleColumns], names: Sequence[str]) -> list[Candle]:
    """``Candle`` structs of candle columns; ``names[code]`` is the symbol of a code."""
    out: list[Candle] = []
    for cc in columns:
        out.extend(Candle(*row) for row in cc.rows(names, True))  # type: ignore[arg-type]
    return out
