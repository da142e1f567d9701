"""PageCache: an entry is served only at its data version and within its times; the bytes held
stay within the budget, least recently used first out."""

from __future__ import annotations

from api.page_cache import MAX_ENTRY_SHARE, PageCache


def test_served_at_its_version_and_times_only() -> None:
    cache = PageCache(1000)
    cache.put("k", ("c", 1), 100, 200, b"page")
    assert cache.get("k", ("c", 1), 100) == b"page"
    assert cache.get("k", ("c", 1), 199) == b"page"
    assert (cache.hits, cache.misses) == (2, 0)
    assert cache.get("k", ("c", 1), 200) is None  # a candle of the page has expired
    assert len(cache) == 0 and cache.size == 0  # the stale entry is gone
    cache.put("k", ("c", 1), 100, 200, b"page")
    assert cache.get("k", ("c", 1), 99) is None  # a clock set back
    cache.put("k", ("c", 1), 100, 200, b"page")
    assert cache.get("k", ("c", 2), 150) is None  # written since
    assert cache.get("other", ("c", 1), 150) is None
    assert cache.misses == 4


def test_budget_evicts_least_recently_used() -> None:
    body = b"x" * 100
    cache = PageCache(100 * MAX_ENTRY_SHARE)
    for i in range(MAX_ENTRY_SHARE):
        cache.put(i, 1, 0, 10, body)
    assert cache.size == 100 * MAX_ENTRY_SHARE
    assert cache.get(0, 1, 5) == body  # now the most recently used
    cache.put("new", 1, 0, 10, body)
    assert cache.size == 100 * MAX_ENTRY_SHARE
    assert cache.get(1, 1, 5) is None  # the least recently used went
    assert cache.get(0, 1, 5) == body
    cache.put(0, 1, 0, 10, b"y" * 50)  # a replaced entry frees its old bytes
    assert cache.size == 100 * (MAX_ENTRY_SHARE - 1) + 50


def test_too_large_or_disabled_keeps_nothing() -> None:
    cache = PageCache(100 * MAX_ENTRY_SHARE)
    cache.put("big", 1, 0, 10, b"x" * 101)
    assert len(cache) == 0
    off = PageCache(0)
    assert not off.enabled
    off.put("k", 1, 0, 10, b"")
    assert len(off) == 0
