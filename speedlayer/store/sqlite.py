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
from typing import TypeVar

from msgspec.structs import astuple

from speedlayer.clock import Clock
from speedlayer.errors import StoreError
from speedlayer.intervals import Interval, IntervalSet
from speedlayer.models import CANDLE_FIELDS, Bar, Candle
from speedlayer.store.base import Order, Store

T = TypeVar("T")
INLINE_READ_ROWS = 201  # range reads of up to this many rows run on the caller's thread
_COLUMNS = ", ".join(CANDLE_FIELDS)
# A range read knows its symbol and interval: it reads the other columns only (fewer objects).
_VALUE_COLUMNS = ", ".join(f for f in CANDLE_FIELDS if f not in ("symbol", "interval"))
_PLACEHOLDERS = ", ".join("?" for _ in CANDLE_FIELDS)
_UPDATES = ", ".join(
    f"{f} = excluded.{f}" for f in CANDLE_FIELDS if f not in ("symbol", "timestamp")
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
        # (symbol, interval, ..., ttl last).
        by_table: dict[str, list[tuple[object, ...]]] = {
            table: [] for table in self._tables.values()
        }
        append = {name: by_table[table].append for name, table in self._tables.items()}
        newest_ttl: dict[str, int] = {}
        newest = newest_ttl.get
        for row in map(astuple, candles):
            append[row[1]](row)
            symbol, ttl = row[0], row[13]
            if newest(symbol, -1) < ttl:
                newest_ttl[symbol] = ttl

        def write() -> int:
            conn = self._writer
            assert conn is not None
            changed = 0
            try:
                with conn:
                    for table, rows in by_table.items():
                        if not rows:
                            continue
                        cur = conn.executemany(
                            f"INSERT INTO {table} ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) "
                            f"ON CONFLICT (symbol, timestamp) DO UPDATE SET {_UPDATES} "
                            f"WHERE excluded.revision >= {table}.revision",
                            rows,
                        )
                        changed += cur.rowcount
                    conn.executemany(_SYMBOLS_UPSERT, newest_ttl.items())
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite write failed: {exc}") from exc
            return changed

        return await self._write(write)

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

    async def ping(self) -> None:
        # Touch a real table, so a missing or corrupted database file is noticed.
        sql = f"SELECT 1 FROM {self._minute_table} LIMIT 1"
        await self._read(lambda conn: conn.execute(sql).fetchone())
