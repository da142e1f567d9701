"""DynamoDB store (aioboto3): seven candle tables, one per interval (docs/design.md#backends).

Tables ``speed_layer_ohlcv_{1min,...,4h}`` (``Interval.table``, optionally prefixed): partition key
``symbol`` (S), sort key ``timestamp`` (N, epoch ms), PAY_PER_REQUEST, TTL on ``ttl`` (epoch s).
Attributes: ``open high low close volume vwap trades bars final revision interval ttl``; ``vwap``
and ``trades`` are left out when null.

**Writes and idempotency.** The store contract: a write never replaces a higher revision, so
replays and duplicated deliveries converge. Keys are de-duplicated per call (the highest revision
wins), and two write modes keep the rule (``write_mode``):

* ``batch`` (default): BatchWriteItem, 25 items per request, ``8`` requests in flight,
  UnprocessedItems and throttling retried with backoff and jitter until ``retry_timeout_s``.
  BatchWriteItem cannot carry a condition, so the store keeps the revision rule itself: it
  remembers the revision it last wrote or read per key (an LRU of ``revision_cache_size`` keys)
  and, for keys it does not know, reads the stored revisions first (BatchGetItem, 100 keys per
  request, ConsistentRead, projection ``symbol, timestamp, revision``); stale candles are skipped.
  Writes of one store are serialized by a lock, so this is exact for **one writer per table** (the
  processing service: one process per consumer name). In the live pipeline a key is read once,
  when its bucket opens; every later revision of the candle is a cache hit. Capacity is the same
  as PutItem (one write unit per item up to 1 KB) plus one read unit per new key; requests are
  about 25 times fewer.
* ``conditional``: one PutItem per candle with ``attribute_not_exists(revision) OR revision <=
  :r``, ``write_concurrency`` at a time. The rule holds in DynamoDB itself, with no
  read-modify-write race: the mode for writers that may race on the same keys (several processes
  or Lambda invocations writing the same symbols, replays running beside the live service).

In both modes the 1-minute table is written **last**, after every other interval's candles of the
call: it is the pipeline's record of which bars are stored (``bars_between``, ``last_bar_times``),
so a crash in the middle of a write never leaves a bar recorded whose derived candles are missing;
the re-delivered bar is processed again and completes them. BatchWriteItem (no guard) is also used
for deleting expired candles.

**Numbers** are written exactly: a float is sent as ``Decimal(repr(x))`` (the shortest decimal
that reads back as the same float, at most 17 significant digits, well inside DynamoDB's 38) and
read back with ``float()``, so the value read equals the value written.

**Reads.** Queries use ``KeyConditionExpression`` on the timestamp range with
``ExpressionAttributeNames`` (``timestamp`` and ``ttl`` are reserved words), a FilterExpression
``ttl > now`` (DynamoDB deletes expired items only lazily, emulators never), and page with
``LastEvaluatedKey`` until ``limit`` unexpired items are collected (Limit applies before the
filter). Resampler state (``get_candles``, ``bars_between``, ``last_bar_times``, ``forming``) is
read with ConsistentRead. ``forming`` is a Scan: it reads every item of every table (capacity
proportional to the table size, not to the answer) — fine for recovery at start-up, not for a hot
path. ``symbols`` is answered from an index in memory (each symbol's largest ``ttl``), filled by a
Scan of the tables at most once every ``SYMBOLS_SCAN_EVERY_S`` (60 s; every
``SYMBOLS_RESCAN_EMPTY_S``, 5 s, while it knows no symbol, as an API started before the first
candles does) and by the store's own upserts at once: symbols that another process writes appear
within that minute.

**Expiry.** On AWS, TTL deletes expired items (``purge_expired`` returns 0 there). Emulators never
expire anything, so with an ``endpoint_url`` (or ``scan_purge=True``) ``purge_expired`` scans for
``ttl <= now`` and deletes with BatchWriteItem. The blind delete is safe: ``ttl`` is a function of
the key (bucket end + retention), so a rewrite of an expired key is expired too.

Throttling (ProvisionedThroughputExceededException, ThrottlingException, RequestLimitExceeded) is
retried with exponential backoff and jitter up to ``retry_timeout_s``; every botocore error is
mapped to StoreError at this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, Literal

from speedlayer.aws import (
    AWS_ERRORS,
    call,
    configuration_error,
    ensure_table,
    error_code,
    is_throttle,
    open_client,
)
from speedlayer.clock import Clock
from speedlayer.errors import StoreError, TableMissing
from speedlayer.intervals import Interval, IntervalSet
from speedlayer.models import Bar, Candle, candle_as_bar
from speedlayer.retry import Backoff
from speedlayer.store.base import Order, Store

log = logging.getLogger(__name__)

Item = dict[str, Any]
WriteMode = Literal["batch", "conditional"]
WRITE_MODES: tuple[WriteMode, ...] = ("batch", "conditional")
_NAMES = {"#s": "symbol", "#t": "timestamp", "#ttl": "ttl"}
_BATCH_WRITE = 25
_BATCH_GET = 100
_PUT_CONDITION = "attribute_not_exists(#rev) OR #rev <= :rev"


def _store_error(message: str) -> StoreError:
    return StoreError(f"DynamoDB {message}")


def encode_number(x: float) -> str:
    """The exact DynamoDB number for a float (``Decimal(repr(x))``)."""
    return str(Decimal(repr(float(x))))


def candle_to_item(c: Candle) -> Item:
    item: Item = {
        "symbol": {"S": c.symbol},
        "timestamp": {"N": str(int(c.timestamp))},
        "interval": {"S": c.interval},
        "open": {"N": encode_number(c.open)},
        "high": {"N": encode_number(c.high)},
        "low": {"N": encode_number(c.low)},
        "close": {"N": encode_number(c.close)},
        "volume": {"N": encode_number(c.volume)},
        "bars": {"N": str(int(c.bars))},
        "final": {"BOOL": bool(c.final)},
        "revision": {"N": str(int(c.revision))},
        "ttl": {"N": str(int(c.ttl))},
    }
    if c.vwap is not None:
        item["vwap"] = {"N": encode_number(c.vwap)}
    if c.trades is not None:
        item["trades"] = {"N": str(int(c.trades))}
    return item


def item_to_candle(item: Item) -> Candle:
    vwap = item.get("vwap")
    trades = item.get("trades")
    return Candle(
        symbol=item["symbol"]["S"],
        interval=item["interval"]["S"],
        timestamp=int(item["timestamp"]["N"]),
        open=float(item["open"]["N"]),
        high=float(item["high"]["N"]),
        low=float(item["low"]["N"]),
        close=float(item["close"]["N"]),
        volume=float(item["volume"]["N"]),
        vwap=float(vwap["N"]) if vwap and "N" in vwap else None,
        trades=int(trades["N"]) if trades and "N" in trades else None,
        bars=int(item["bars"]["N"]),
        final=bool(item["final"]["BOOL"]),
        revision=int(item["revision"]["N"]),
        ttl=int(item["ttl"]["N"]),
    )


def _key(symbol: str, timestamp: int) -> Item:
    return {"symbol": {"S": symbol}, "timestamp": {"N": str(int(timestamp))}}


async def run_bounded(jobs: Iterable[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run jobs with at most ``limit`` in flight; the first failure cancels the rest."""
    pending = list(jobs)
    if not pending:
        return
    source = iter(pending)

    async def worker() -> None:
        for job in source:
            await job()

    tasks = [asyncio.create_task(worker()) for _ in range(min(limit, len(pending)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


SYMBOLS_SCAN_EVERY_S = 60.0  # symbols(): how old the Scan behind the index may be
SYMBOLS_RESCAN_EMPTY_S = 5.0  # ... while the index is empty


class DynamoDBStore(Store):
    def __init__(
        self,
        intervals: IntervalSet,
        clock: Clock,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        credentials: tuple[str, str] | None = None,
        table_prefix: str = "",
        create_tables: bool = True,
        write_concurrency: int = 32,
        retry_timeout_s: float = 60.0,
        scan_purge: bool | None = None,
        active_timeout_s: float = 120.0,
        write_mode: WriteMode = "batch",
        revision_cache_size: int = 500_000,
    ) -> None:
        super().__init__(intervals, clock)
        if write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {WRITE_MODES}, not {write_mode!r}")
        self.write_mode = write_mode
        self.revision_cache_size = revision_cache_size
        # batch mode: (table, symbol, timestamp) -> the revision stored there, as last written/read
        self._revisions: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._write_lock = asyncio.Lock()
        self.revision_reads = 0  # keys whose stored revision had to be read (batch mode)
        self.stale_skipped = 0  # candles not written: the store held a higher revision
        self.endpoint_url = endpoint_url
        self.region = region
        self.credentials = credentials
        self.create_tables = create_tables
        self.write_concurrency = write_concurrency
        self.retry_timeout_s = retry_timeout_s
        self.scan_purge = endpoint_url is not None if scan_purge is None else scan_purge
        self.active_timeout_s = active_timeout_s
        self.table_prefix = table_prefix
        self.tables = {iv.name: table_prefix + iv.table for iv in intervals}
        self._minute_table = self.tables[intervals.items[0].name]
        self._symbol_ttl: dict[str, int] = {}  # symbol -> largest ttl seen (symbols())
        self._symbols_scanned_at: float | None = None  # time.monotonic() of the last Scan
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await open_client(
                stack,
                "dynamodb",
                self.region,
                self.endpoint_url,
                self.credentials,
                max(10, self.write_concurrency),
            )
        except AWS_ERRORS as exc:
            await stack.aclose()
            raise StoreError(f"cannot create the DynamoDB client: {exc}") from exc
        self._stack = stack
        if self.create_tables:
            try:
                await self.ensure_tables()
            except BaseException:
                await self.stop()
                raise

    async def stop(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        """The aiobotocore DynamoDB client (tests register botocore event hooks on it)."""
        if self._client is None:
            raise StoreError("DynamoDB store is not started")
        return self._client

    async def _call(self, op: str, ok_codes: frozenset[str] = frozenset(), **kwargs: Any) -> Any:
        """One API call with throttling retried; None when the error code is in ``ok_codes``."""
        try:
            return await call(
                self.client,
                op,
                timeout_s=self.retry_timeout_s,
                error=_store_error,
                ok_codes=ok_codes,
                **kwargs,
            )
        except StoreError as exc:
            cause = exc.__cause__
            if cause is None or error_code(cause) != "ResourceNotFoundException":
                raise
            raise TableMissing(self._missing(kwargs)) from exc

    def _missing(self, request: dict[str, Any]) -> str:
        tables = request.get("TableName") or ", ".join(request.get("RequestItems", ())) or "?"
        where = self.endpoint_url or f"AWS ({self.region})"
        return (
            f"DynamoDB table {tables} does not exist at {where}: create the tables with "
            "`speedlayer init-aws` (or the infrastructure code), with the same "
            f"SPEEDLAYER_DYNAMODB_TABLE_PREFIX ({self.table_prefix!r} here)"
        )

    # -- tables ---------------------------------------------------------------------------------

    async def ensure_tables(self) -> dict[str, str]:
        """Create the interval tables if missing, wait until ACTIVE, set up TTL (idempotent).
        Returns each table's TTL state (see ``ensure_ttl``)."""
        names = list(self.tables.values())
        await asyncio.gather(
            *(
                ensure_table(
                    self.client,
                    name,
                    ("symbol", "S"),
                    ("timestamp", "N"),
                    timeout_s=self.retry_timeout_s,
                    active_timeout_s=self.active_timeout_s,
                    error=_store_error,
                )
                for name in names
            )
        )
        return {name: await self.ensure_ttl(name) for name in names}

    async def ensure_ttl(self, table: str) -> str:
        """Enable TTL on ``ttl``: describe first, then update. Returns the resulting state:
        ``enabled``, or ``unsupported`` (an emulator without UpdateTimeToLive, e.g. dynalite —
        tolerated only when an ``endpoint_url`` is configured; on AWS it is an error)."""
        client = self.client
        try:
            desc = await client.describe_time_to_live(TableName=table)
            ttl = desc.get("TimeToLiveDescription", {})
            if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
                if ttl.get("AttributeName") != "ttl":
                    raise StoreError(
                        f"TTL on {table} uses attribute {ttl.get('AttributeName')!r}, not 'ttl'"
                    )
                return "enabled"
            await client.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
            )
            return "enabled"
        except AWS_ERRORS as exc:
            if (problem := configuration_error(exc, client)) is not None:
                raise problem from exc
            code = error_code(exc)
            if code == "ValidationException" and "already enabled" in str(exc).lower():
                return "enabled"
            if code == "UnknownOperationException" and self.endpoint_url:
                log.info("%s: no TTL support at %s; expired items are purged by scan",
                         table, self.endpoint_url)  # fmt: skip
                return "unsupported"
            raise StoreError(f"cannot enable TTL on {table}: {exc}") from exc

    async def delete_tables(self) -> None:
        """Delete this store's tables (tests, teardown of a prefixed set)."""
        for name in self.tables.values():
            await self._call(
                "delete_table", frozenset({"ResourceNotFoundException"}), TableName=name
            )

    # -- writes ---------------------------------------------------------------------------------

    async def upsert(self, candles: Sequence[Candle]) -> int:
        best: dict[tuple[str, str, int], Candle] = {}
        for c in candles:
            key = (c.interval, c.symbol, c.timestamp)
            held = best.get(key)
            if held is None or c.revision >= held.revision:
                best[key] = c
        symbol_ttl = self._symbol_ttl
        for c in best.values():
            if symbol_ttl.get(c.symbol, -1) < c.ttl:
                symbol_ttl[c.symbol] = c.ttl
        minute = self.intervals.items[0].name
        derived = [c for c in best.values() if c.interval != minute]
        minutes = [c for c in best.values() if c.interval == minute]
        write = self._put_batch if self.write_mode == "batch" else self._put_conditional
        changed = 0
        for phase in (derived, minutes):  # the 1-minute table last (see the module docstring)
            if phase:
                changed += await write(phase)
        return changed

    async def _put_conditional(self, candles: Sequence[Candle]) -> int:
        changed = 0

        def job(c: Candle) -> Callable[[], Awaitable[None]]:
            async def put() -> None:
                nonlocal changed
                resp = await self._call(
                    "put_item",
                    frozenset({"ConditionalCheckFailedException"}),
                    TableName=self.tables[c.interval],
                    Item=candle_to_item(c),
                    ConditionExpression=_PUT_CONDITION,
                    ExpressionAttributeNames={"#rev": "revision"},
                    ExpressionAttributeValues={":rev": {"N": str(int(c.revision))}},
                )
                if resp is not None:
                    changed += 1
                else:
                    self.stale_skipped += 1

            return put

        await run_bounded((job(c) for c in candles), self.write_concurrency)
        return changed

    async def _put_batch(self, candles: Sequence[Candle]) -> int:
        """BatchWriteItem of the candles the store holds no higher revision of (one writer)."""
        async with self._write_lock:
            cache = self._revisions
            keys = [(self.tables[c.interval], c.symbol, int(c.timestamp)) for c in candles]
            unknown = [key for key in keys if key not in cache]
            if unknown:
                await self._read_revisions(unknown)
            fresh: list[tuple[tuple[str, str, int], Candle]] = []
            for key, c in zip(keys, candles, strict=True):
                stored = cache.get(key)
                if stored is not None and stored > c.revision:
                    self.stale_skipped += 1
                    continue
                fresh.append((key, c))
            await self.batch_write(
                [(key[0], {"PutRequest": {"Item": candle_to_item(c)}}) for key, c in fresh]
            )
            for key, c in fresh:
                self._remember(key, int(c.revision))
            return len(fresh)

    def _remember(self, key: tuple[str, str, int], revision: int) -> None:
        cache = self._revisions
        cache[key] = revision
        cache.move_to_end(key)
        while len(cache) > self.revision_cache_size:
            cache.popitem(last=False)

    async def _read_revisions(self, keys: Sequence[tuple[str, str, int]]) -> None:
        """Load the stored revisions of ``keys`` into the cache (absent keys stay unknown)."""
        by_table: dict[str, list[tuple[str, int]]] = {}
        for table, symbol, ts in keys:
            by_table.setdefault(table, []).append((symbol, ts))
        self.revision_reads += len(keys)
        for table, table_keys in by_table.items():
            items = await self._batch_get(
                table,
                table_keys,
                ProjectionExpression="#s, #t, #rev",
                ExpressionAttributeNames={"#s": "symbol", "#t": "timestamp", "#rev": "revision"},
            )
            for item in items:
                key = (table, item["symbol"]["S"], int(item["timestamp"]["N"]))
                self._remember(key, int(item["revision"]["N"]))

    async def batch_write(self, requests: Sequence[tuple[str, Item]]) -> int:
        """BatchWriteItem of (table, PutRequest/DeleteRequest) pairs, 25 per call, keys
        de-duplicated per batch (a put of the highest revision wins), UnprocessedItems and
        throttling retried with backoff until ``retry_timeout_s``; returns requests written."""
        unique: dict[tuple[str, str, str], tuple[str, Item]] = {}
        for table, request in requests:
            body = request.get("PutRequest", {}).get("Item") or request["DeleteRequest"]["Key"]
            key = (table, body["symbol"]["S"], body["timestamp"]["N"])
            held = unique.get(key)
            if held is not None and "PutRequest" in held[1] and "PutRequest" in request:
                old = int(held[1]["PutRequest"]["Item"]["revision"]["N"])
                if int(request["PutRequest"]["Item"]["revision"]["N"]) < old:
                    continue
            unique[key] = (table, request)
        ordered = list(unique.values())
        chunks = [ordered[i : i + _BATCH_WRITE] for i in range(0, len(ordered), _BATCH_WRITE)]

        def job(chunk: list[tuple[str, Item]]) -> Callable[[], Awaitable[None]]:
            async def write() -> None:
                pending: dict[str, list[Item]] = {}
                for table, request in chunk:
                    pending.setdefault(table, []).append(request)
                backoff = Backoff(timeout_s=self.retry_timeout_s)
                while pending:
                    try:
                        resp = await self.client.batch_write_item(RequestItems=pending)
                    except AWS_ERRORS as exc:
                        if (problem := configuration_error(exc, self.client)) is not None:
                            raise problem from exc
                        if is_throttle(exc) and await backoff.sleep():
                            continue
                        raise StoreError(f"DynamoDB BatchWriteItem failed: {exc}") from exc
                    pending = resp.get("UnprocessedItems") or {}
                    if pending and not await backoff.sleep():
                        left = sum(len(v) for v in pending.values())
                        raise StoreError(
                            f"DynamoDB BatchWriteItem: {left} items still unprocessed after "
                            f"{self.retry_timeout_s:g} s"
                        )

            return write

        await run_bounded((job(chunk) for chunk in chunks), 8)
        return len(ordered)

    async def purge_expired(self) -> int:
        if not self.scan_purge:
            return 0  # DynamoDB's TTL deletes expired items by itself
        now = {":now": {"N": str(self.now_s())}}
        requests: list[tuple[str, Item]] = []
        for table in self.tables.values():
            async for item in self._scan(
                table,
                ProjectionExpression="#s, #t",
                FilterExpression="#ttl <= :now",
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues=now,
            ):
                requests.append((table, {"DeleteRequest": {"Key": item}}))
                self._revisions.pop((table, item["symbol"]["S"], int(item["timestamp"]["N"])), None)
        return await self.batch_write(requests)

    # -- reads ----------------------------------------------------------------------------------

    async def _paged(self, op: str, **kwargs: Any) -> AsyncIterator[Item]:
        start_key = None
        while True:
            if start_key is not None:
                kwargs["ExclusiveStartKey"] = start_key
            page = await self._call(op, **kwargs)
            for item in page.get("Items", []):
                yield item
            start_key = page.get("LastEvaluatedKey")
            if not start_key:
                return

    def _scan(self, table: str, **kwargs: Any) -> AsyncIterator[Item]:
        return self._paged("scan", TableName=table, **kwargs)

    async def query(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
        order: Order = "asc",
    ) -> list[Candle]:
        if limit is not None and limit <= 0:
            return []
        values: Item = {":s": {"S": symbol}, ":now": {"N": str(self.now_s())}}
        names = {"#s": "symbol", "#ttl": "ttl"}
        condition = "#s = :s"
        if start_ms is not None or end_ms is not None:
            names["#t"] = "timestamp"  # a reserved word: it must be aliased
        if start_ms is not None and end_ms is not None:
            if start_ms >= end_ms:
                return []  # BETWEEN with a > b is a ValidationException
            condition += " AND #t BETWEEN :a AND :b"
            values[":a"] = {"N": str(start_ms)}
            values[":b"] = {"N": str(end_ms - 1)}
        elif start_ms is not None:
            condition += " AND #t >= :a"
            values[":a"] = {"N": str(start_ms)}
        elif end_ms is not None:
            condition += " AND #t < :b"
            values[":b"] = {"N": str(end_ms)}
        out: list[Candle] = []
        start_key = None
        while True:
            kwargs: Item = {
                "TableName": self.tables[interval.name],
                "KeyConditionExpression": condition,
                "FilterExpression": "#ttl > :now",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ScanIndexForward": order == "asc",
            }
            if limit is not None:
                kwargs["Limit"] = limit - len(out)  # Limit counts items before the filter
            if start_key is not None:
                kwargs["ExclusiveStartKey"] = start_key
            page = await self._call("query", **kwargs)
            out.extend(item_to_candle(item) for item in page.get("Items", []))
            start_key = page.get("LastEvaluatedKey")
            if not start_key or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]

    async def get_candles(
        self, interval: Interval, keys: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], Candle]:
        found: dict[tuple[str, int], Candle] = {}
        for item in await self._batch_get(self.tables[interval.name], keys):
            candle = item_to_candle(item)
            found[(candle.symbol, candle.timestamp)] = candle
        return found

    async def _batch_get(
        self, table: str, keys: Sequence[tuple[str, int]], **kwargs: Any
    ) -> list[Item]:
        """Consistent BatchGetItem of (symbol, timestamp) keys, 100 per request, 8 in flight,
        UnprocessedKeys retried with backoff; the items found, in no particular order."""
        unique = list(dict.fromkeys((s, int(t)) for s, t in keys))
        found: list[Item] = []

        def job(chunk: list[tuple[str, int]]) -> Callable[[], Awaitable[None]]:
            async def read() -> None:
                pending: Item = {
                    table: {
                        "Keys": [_key(s, t) for s, t in chunk],
                        "ConsistentRead": True,
                        **kwargs,
                    }
                }
                backoff = Backoff(timeout_s=self.retry_timeout_s)
                while pending:
                    resp = await self._call("batch_get_item", RequestItems=pending)
                    found.extend(resp.get("Responses", {}).get(table, []))
                    pending = resp.get("UnprocessedKeys") or {}
                    if pending and not await backoff.sleep():
                        raise StoreError("DynamoDB BatchGetItem: keys still unprocessed")

            return read

        chunks = [unique[i : i + _BATCH_GET] for i in range(0, len(unique), _BATCH_GET)]
        await run_bounded((job(chunk) for chunk in chunks), 8)
        return found

    async def forming(self, interval: Interval) -> list[Candle]:
        return [
            item_to_candle(item)
            async for item in self._scan(
                self.tables[interval.name],
                FilterExpression="#f = :no",
                ExpressionAttributeNames={"#f": "final"},
                ExpressionAttributeValues={":no": {"BOOL": False}},
                ConsistentRead=True,
            )
        ]

    async def bars_between(self, symbol: str, start_ms: int, end_ms: int) -> list[Bar]:
        if start_ms >= end_ms:
            return []
        return [
            candle_as_bar(item_to_candle(item))
            async for item in self._paged(
                "query",
                TableName=self._minute_table,
                KeyConditionExpression="#s = :s AND #t BETWEEN :a AND :b",
                ExpressionAttributeNames={"#s": "symbol", "#t": "timestamp"},
                ExpressionAttributeValues={
                    ":s": {"S": symbol},
                    ":a": {"N": str(start_ms)},
                    ":b": {"N": str(end_ms - 1)},
                },
                ConsistentRead=True,
            )
        ]

    async def last_bar_times(self, symbols: Sequence[str]) -> dict[str, int | None]:
        result: dict[str, int | None] = {}

        def job(symbol: str) -> Callable[[], Awaitable[None]]:
            async def read() -> None:
                page = await self._call(
                    "query",
                    TableName=self._minute_table,
                    KeyConditionExpression="#s = :s",
                    ProjectionExpression="#t",
                    ExpressionAttributeNames={"#s": "symbol", "#t": "timestamp"},
                    ExpressionAttributeValues={":s": {"S": symbol}},
                    ScanIndexForward=False,
                    Limit=1,
                    ConsistentRead=True,
                )
                items = page.get("Items", [])
                result[symbol] = int(items[0]["timestamp"]["N"]) if items else None

            return read

        await run_bounded((job(s) for s in dict.fromkeys(symbols)), self.write_concurrency)
        return {symbol: result[symbol] for symbol in symbols}

    async def symbols(self) -> list[str]:
        scanned_at = self._symbols_scanned_at
        every_s = SYMBOLS_SCAN_EVERY_S if self._symbol_ttl else SYMBOLS_RESCAN_EMPTY_S
        if scanned_at is None or time.monotonic() - scanned_at >= every_s:
            started = time.monotonic()
            found: dict[str, int] = {}
            now = {":now": {"N": str(self.now_s())}}
            for table in self.tables.values():
                async for item in self._scan(
                    table,
                    ProjectionExpression="#s, #ttl",
                    FilterExpression="#ttl > :now",
                    ExpressionAttributeNames={"#s": "symbol", "#ttl": "ttl"},
                    ExpressionAttributeValues=now,
                ):
                    symbol, ttl = item["symbol"]["S"], int(item["ttl"]["N"])
                    if found.get(symbol, -1) < ttl:
                        found[symbol] = ttl
            for symbol, ttl in found.items():  # upserts made during the Scan are kept
                if self._symbol_ttl.get(symbol, -1) < ttl:
                    self._symbol_ttl[symbol] = ttl
            self._symbols_scanned_at = started
        now_s = self.now_s()
        return sorted(symbol for symbol, ttl in self._symbol_ttl.items() if ttl > now_s)

    async def ping(self) -> None:
        await self._call("describe_table", TableName=self._minute_table)
