"""SQLite store (WAL): one table per interval, named as the DynamoDB tables.

Writes run on one dedicated thread (SQLite has one writer); reads run on a small pool of threads,
each with its own connection, so queries never block the event loop or each other.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from msgspec.structs import astuple

from speedlayer.clock import Clock
from speedlayer.errors import StoreError
from speedlayer.intervals import Interval, IntervalSet
from speedlayer.models import CANDLE_FIELDS, Bar, Candle
from speedlayer.store.base import Order, Store

if TYPE_CHECKING:
    from speedlayer.columns import CandleColumns

T = TypeVar("T")
INLINE_READ_ROWS = 201  # range reads of up to this many rows run on the caller's thread
_COLUMNS = ", ".join(CANDLE_FIELDS)
# A range read knows its symbol and interval: it reads the other columns only (fewer objects).
_VALUE_COLUMNS = ", ".join(f for f in CANDLE_FIELDS if f not in ("symbol", "interval"))
_PLACEHOLDERS = ", ".join("?" for _ in CANDLE_FIELDS)
_UPDATES = ", ".join(
    f"{f} = excluded.{f}" for f in CANDLE_FIELDS if f not in ("symbol", "timestamp")
)
# Upserts go ROWS_PER_STATEMENT rows to a statement (a multi-row VALUES): one trip through
# SQLite's statement machinery per 50 rows instead of per row, about a third less time per row.
ROWS_PER_STATEMENT = 50
_FIELD_COUNT = len(CANDLE_FIELDS)


def upsert_statement(table: str, rows: int = 1) -> str:
    """The upsert of ``rows`` candles into ``table``: each replaces the stored row of its key
    unless that has a higher revision (rows of one statement apply in order)."""
    values = ", ".join([f"({_PLACEHOLDERS})"] * rows)
    return (
        f"INSERT INTO {table} ({_COLUMNS}) VALUES {values} "
        f"ON CONFLICT (symbol, timestamp) DO UPDATE SET {_UPDATES} "
        f"WHERE excluded.revision >= {table}.revision"
    )


def _upsert_final(conn: sqlite3.Connection, table: str, interval: str, values: list[object]) -> int:
    """``upsert_flat`` of final candles given as ``final_upsert_statement`` binds them."""
    step = ROWS_PER_STATEMENT * _FINAL_COUNT
    whole = len(values) // step * step
    changed = 0
    if whole:
        cur = conn.executemany(
            final_upsert_statement(table, interval, ROWS_PER_STATEMENT),
            (values[at : at + step] for at in range(0, whole, step)),
        )
        changed += cur.rowcount
    if whole < len(values):
        rest = (len(values) - whole) // _FINAL_COUNT
        changed += conn.execute(
            final_upsert_statement(table, interval, rest), values[whole:]
        ).rowcount
    return changed


def upsert_flat(conn: sqlite3.Connection, table: str, values: list[object]) -> int:
    """Upsert candles given as one flat list of their fields (``Candle``'s order, row after
    row) into ``table``, ``ROWS_PER_STATEMENT`` rows to a statement; the rows changed."""
    step = ROWS_PER_STATEMENT * _FIELD_COUNT
    whole = len(values) // step * step
    changed = 0
    if whole:
        cur = conn.executemany(
            upsert_statement(table, ROWS_PER_STATEMENT),
            (values[at : at + step] for at in range(0, whole, step)),
        )
        changed += cur.rowcount
    if whole < len(values):
        rest = (len(values) - whole) // _FIELD_COUNT
        changed += conn.execute(upsert_statement(table, rest), values[whole:]).rowcount
    return changed


# The final candles of ``upsert_columns`` (``final`` 1, ``revision`` = ``bars``): the interval and
# ``final`` are literals of the statement and ``bars`` is bound once for both columns, 11 values a
# row instead of 14 (the same rows, the same conflict rule).
_FINAL_FIELDS = ("symbol", "timestamp", "open", "high", "low", "close", "volume", "vwap", "trades")
_FINAL_COUNT = len(_FINAL_FIELDS) + 2  # and bars, ttl


def final_upsert_statement(table: str, interval: str, rows: int = 1) -> str:
    """``upsert_statement`` for final candles with ``revision`` = ``bars``, bound as
    ``symbol, timestamp, open, high, low, close, volume, vwap, trades, bars, ttl`` per row."""

    def row(first: int) -> str:
        p = [f"?{first + i}" for i in range(_FINAL_COUNT)]
        return f"({p[0]}, '{interval}', {', '.join(p[1:9])}, {p[9]}, 1, {p[9]}, {p[10]})"

    assert interval.isalnum()  # a literal of the statement: an interval name such as 15m
    values = ", ".join(row(1 + r * _FINAL_COUNT) for r in range(rows))
    return (
        f"INSERT INTO {table} ({_COLUMNS}) VALUES {values} "
        f"ON CONFLICT (symbol, timestamp) DO UPDATE SET {_UPDATES} "
        f"WHERE excluded.revision >= {table}.revision"
    )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    symbol    TEXT    NOT NULL,
    interval  TEXT    NOT NULL,
    timestamp INTEGER NOT NULL,
    open      REAL    NOT NULL,
    high      REAL    NOT NULL,
    low       REAL    NOT NULL,
    close     REAL    NOT NULL,
    volume    REAL    NOT NULL,
    vwap      REAL,
    trades    INTEGER,
    bars      INTEGER NOT NULL,
    final     INTEGER NOT NULL,
    revision  INTEGER NOT NULL,
    ttl       INTEGER NOT NULL,
    PRIMARY KEY (symbol, timestamp)
) WITHOUT ROWID
"""


# The symbol index behind symbols(): each symbol with the largest ttl of its candles, kept by
# every upsert and purge, so /symbols reads this small table instead of grouping every candle
# table. A symbol is listed while its largest ttl is in the future.
SYMBOLS_TABLE = "speed_layer_symbols"
_SYMBOLS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {SYMBOLS_TABLE} (
    symbol TEXT    NOT NULL PRIMARY KEY,
    ttl    INTEGER NOT NULL
) WITHOUT ROWID
"""
_SYMBOLS_UPSERT = (
    f"INSERT INTO {SYMBOLS_TABLE} (symbol, ttl) VALUES (?, ?) "
    f"ON CONFLICT (symbol) DO UPDATE SET ttl = excluded.ttl WHERE excluded.ttl > ttl"
)


def _row_to_candle(row: tuple[object, ...]) -> Candle:
    s, iv, ts, o, h, lo, c, v, vw, n, bars, final, rev, ttl = row
    return Candle(s, iv, ts, o, h, lo, c, v, vw, n, bars, bool(final), rev, ttl)  # type: ignore[arg-type]


def _data_version(conn: sqlite3.Connection) -> tuple[int, int]:
    # The connection stays open (and so its id unique) until the store stops.
    return id(conn), conn.execute("PRAGMA data_version").fetchone()[0]


class SQLiteStore(Store):
    def __init__(self, path: str | Path, intervals: IntervalSet, clock: Clock, *, readers: int = 4):
        super().__init__(intervals, clock)
        self.path = Path(path)
        self._reader_count = readers
        self._tables = {iv.name: iv.table for iv in intervals}
        self._minute_table = intervals.items[0].table
        self._writer_pool: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(
            self._reader_count, thread_name_prefix="sqlite-reader"
        )
        await self._write(self._open_writer)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        conn.execute("PRAGMA busy_timeout = 30000")
        with self._lock:
            self._connections.append(conn)
        return conn

    def _open_writer(self) -> None:
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            with conn:
                for table in self._tables.values():
                    conn.execute(_SCHEMA.format(table=table))
                    conn.execute(
                        f"CREATE INDEX IF NOT EXISTS {table}_forming ON {table} (timestamp) "
                        "WHERE final = 0"
                    )
                had_index = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (SYMBOLS_TABLE,),
                ).fetchone()
                conn.execute(_SYMBOLS_SCHEMA)
                if had_index is None:  # a database from before the index: fill it once
                    union = " UNION ALL ".join(
                        f"SELECT symbol, MAX(ttl) AS ttl FROM {table} GROUP BY symbol"
                        for table in self._tables.values()
                    )
                    conn.execute(
                        f"INSERT OR REPLACE INTO {SYMBOLS_TABLE} (symbol, ttl) "
                        f"SELECT symbol, MAX(ttl) FROM ({union}) GROUP BY symbol"
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot initialise SQLite database {self.path}: {exc}") from exc
        self._writer = conn

    async def stop(self) -> None:
        for pool in (self._writer_pool, self._reader_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._writer_pool = self._reader_pool = None
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._writer = None

    async def _write(self, fn: Callable[[], T]) -> T:
        if self._writer_pool is None:
            raise StoreError("SQLite store is not started")
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_pool is None:
            raise StoreError("SQLite store is not started")
        return await asyncio.get_running_loop().run_in_executor(
            self._reader_pool, self._with_reader, fn
        )

    def _with_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc

    # -- writes ---------------------------------------------------------------------------------

    async def upsert(self, candles: Sequence[Candle]) -> int:
        if not candles:
            return 0
        # Rows are the candles' fields in declaration order, the order of the table's columns
        # (symbol, interval, ..., ttl last), one after the other in a flat list per table.
        by_table: dict[str, list[object]] = {table: [] for table in self._tables.values()}
        extend = {name: by_table[table].extend for name, table in self._tables.items()}
        newest_ttl: dict[str, int] = {}
        newest = newest_ttl.get
        for row in map(astuple, candles):
            extend[row[1]](row)
            symbol, ttl = row[0], row[13]
            if newest(symbol, -1) < ttl:
                newest_ttl[symbol] = ttl

        return await self._write(lambda: self._write_rows(by_table, newest_ttl))

    async def upsert_columns(
        self, columns: Sequence[CandleColumns], names: Sequence[str], slice_rows: int = 50_000
    ) -> int:
        """In one transaction with the symbol index, in the columns' order, the rows made on the
        writer thread ``slice_rows`` at a time (no ``Candle`` per row), with ``upsert``'s
        statement."""
        if not any(len(cc) for cc in columns):
            return 0
        step = max(slice_rows, 1)

        def write() -> int:
            conn = self._writer
            assert conn is not None
            newest_ttl: dict[str, int] = {}
            changed = 0
            try:
                with conn:
                    for cc in columns:
                        table = self._tables[cc.interval.name]
                        interval = cc.interval.name
                        for at in range(0, len(cc), step):
                            values = cc.slice(at, at + step).final_flat(names)
                            changed += _upsert_final(conn, table, interval, values)
                        if not len(cc):
                            continue
                        # Each symbol's largest ttl: the last of its rows sorted by (symbol, ttl).
                        ttls = cc.ttls()
                        by_ttl = ttls.argsort(kind="stable")
                        order = by_ttl[cc.sym[by_ttl].argsort(kind="stable")]
                        sym = cc.sym[order]
                        last = order[[*(sym[1:] != sym[:-1]).nonzero()[0].tolist(), len(sym) - 1]]
                        for code, ttl in zip(
                            cc.sym[last].tolist(), ttls[last].tolist(), strict=True
                        ):
                            symbol = names[code]
                            if newest_ttl.get(symbol, -1) < ttl:
                                newest_ttl[symbol] = ttl
                    conn.executemany(_SYMBOLS_UPSERT, newest_ttl.items())
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite write failed: {exc}") from exc
            return changed

        return await self._write(write)

    def _write_rows(self, by_table: dict[str, list[object]], newest_ttl: dict[str, int]) -> int:
        """Upsert rows (flat lists of ``Candle``'s fields, row after row) per table and the
        symbols' largest ttl, in one transaction, on the writer thread."""
        conn = self._writer
        assert conn is not None
        changed = 0
        try:
            with conn:
                for table, values in by_table.items():
                    if values:
                        changed += upsert_flat(conn, table, values)
                conn.executemany(_SYMBOLS_UPSERT, newest_ttl.items())
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc
        return changed

    async def purge_expired(self) -> int:
        now_s = self.now_s()

        def purge() -> int:
            conn = self._writer
            assert conn is not None
            deleted = 0
            with conn:
                for table in self._tables.values():
                    deleted += conn.execute(
                        f"DELETE FROM {table} WHERE ttl <= ?", (now_s,)
                    ).rowcount
                # every candle of these symbols has expired, so they are gone from the tables
                conn.execute(f"DELETE FROM {SYMBOLS_TABLE} WHERE ttl <= ?", (now_s,))
            return deleted

        return await self._write(purge)

    # -- reads ----------------------------------------------------------------------------------

    async def query(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        order: Order = "asc",
    ) -> list[Candle]:
        table = self._tables[interval.name]
        sql = f"SELECT {_VALUE_COLUMNS} FROM {table} WHERE symbol = ? AND ttl > ?"
        params: list[object] = [symbol, self.now_s()]
        if start_ms is not None:
            sql += " AND timestamp >= ?"
            params.append(start_ms)
        if end_ms is not None:
            sql += " AND timestamp < ?"
            params.append(end_ms)
        sql += " ORDER BY timestamp " + ("DESC" if order == "desc" else "ASC")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def read(conn: sqlite3.Connection) -> list[Candle]:
            name = interval.name
            return [
                Candle(symbol, name, ts, o, h, lo, c, v, vw, n, bars, bool(final), rev, ttl)
                for ts, o, h, lo, c, v, vw, n, bars, final, rev, ttl in conn.execute(sql, params)
            ]

        if limit is not None and limit <= INLINE_READ_ROWS:
            # A page this small reads in a few hundred microseconds, about what handing it to a
            # reader thread and back costs the event loop; larger reads go to the reader pool.
            if self._reader_pool is None:
                raise StoreError("SQLite store is not started")
            return self._with_reader(read)
        return await self._read(read)

    async def get_candles(
        self, interval: Interval, keys: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], Candle]:
        table = self._tables[interval.name]
        sql = f"SELECT {_COLUMNS} FROM {table} WHERE symbol = ? AND timestamp = ?"

        def read(conn: sqlite3.Connection) -> dict[tuple[str, int], Candle]:
            found = {}
            for key in keys:
                row = conn.execute(sql, key).fetchone()
                if row is not None:
                    found[key] = _row_to_candle(row)
            return found

        return await self._read(read)

    async def forming(self, interval: Interval) -> list[Candle]:
        sql = f"SELECT {_COLUMNS} FROM {self._tables[interval.name]} WHERE final = 0"
        return await self._read(lambda conn: [_row_to_candle(r) for r in conn.execute(sql)])

    async def bars_between(self, symbol: str, start_ms: int, end_ms: int) -> list[Bar]:
        sql = (
            f"SELECT symbol, timestamp, open, high, low, close, volume, vwap, trades "
            f"FROM {self._minute_table} "
            "WHERE symbol = ? AND timestamp >= ? AND timestamp < ? ORDER BY timestamp"
        )
        return await self._read(
            lambda conn: [Bar(*row) for row in conn.execute(sql, (symbol, start_ms, end_ms))]
        )

    async def last_bar_times(self, symbols: Sequence[str]) -> dict[str, int | None]:
        sql = f"SELECT MAX(timestamp) FROM {self._minute_table} WHERE symbol = ?"

        def read(conn: sqlite3.Connection) -> dict[str, int | None]:
            return {s: conn.execute(sql, (s,)).fetchone()[0] for s in symbols}

        return await self._read(read)

    async def symbols(self) -> list[str]:
        sql = f"SELECT symbol FROM {SYMBOLS_TABLE} WHERE ttl > ? ORDER BY symbol"
        now_s = self.now_s()
        return await self._read(lambda conn: [row[0] for row in conn.execute(sql, (now_s,))])

    def data_version(self) -> tuple[int, int]:
        """``PRAGMA data_version`` of the calling thread's reader connection, which changes
        whenever another connection commits (this store's writer, or any process writing the
        file), paired with that connection's identity: versions of different connections are
        not comparable. About 2 µs, so it runs inline."""
        if self._reader_pool is None:
            raise StoreError("SQLite store is not started")
        return self._with_reader(_data_version)

    async def ping(self) -> None:
        # Touch a real table, so a missing or corrupted database file is noticed.
        sql = f"SELECT 1 FROM {self._minute_table} LIMIT 1"
        await self._read(lambda conn: conn.execute(sql).fetchone())
