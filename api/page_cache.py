"""Recently served candle pages (``GET /candles/{symbol}``), as the bytes that were sent.

A page is a pure function of its query and of the stored data at a moment of time, so an entry
is served again only while both still hold:

- **the data**: the entry carries the store's data version read *before* the page was queried
  (``Store.data_version``; SQLite's ``PRAGMA data_version``, which changes with every commit by
  any other connection, this process's writer and other processes writing the same file alike).
  Any write anywhere makes every older entry a miss; a store without a version caches nothing.
- **the time**: a query returns unexpired candles only (``ttl > now``), so a page changes when
  one of the candles read for it expires; an entry is valid from the time it was read (a clock
  set back would show candles that had expired then) until the smallest ``ttl`` of the rows its
  query returned.

Entries are kept in least-recently-used order within a budget of bytes
(``SPEEDLAYER_PAGE_CACHE_MB``, 0: no cache). A stale entry is dropped when it is found.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

MAX_ENTRY_SHARE = 8  # an entry larger than budget / this is not kept (it would evict many)


class PageCache:
    """Encoded pages by query key, each with the data version and expiry it is valid for."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.size = 0  # bytes of the bodies held
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[Hashable, int, int, bytes]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, version: Hashable, now_s: int) -> bytes | None:
        """The page stored under ``key`` if it was read at ``version`` and ``now_s`` lies in its
        validity; else None (and a stale entry is dropped)."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] == version and entry[1] <= now_s < entry[2]:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[3]
            del self._entries[key]
            self.size -= len(entry[3])
        self.misses += 1
        return None

    def put(
        self, key: Hashable, version: Hashable, read_s: int, valid_until_s: int, body: bytes
    ) -> None:
        """Keep ``body``, read at ``version`` and time ``read_s``, for the times from ``read_s``
        until ``valid_until_s`` (epoch s, exclusive)."""
        if not self.budget or len(body) * MAX_ENTRY_SHARE > self.budget:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(old[3])
        self._entries[key] = (version, read_s, valid_until_s, body)
        self.size += len(body)
        while self.size > self.budget:
            _, (_, _, _, evicted) = self._entries.popitem(last=False)
            self.size -= len(evicted)
