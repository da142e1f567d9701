"""The resampler: 1-minute bars in, candles of every configured interval out.

Semantics (docs/design.md#candle-semantics):

* Bars are keyed by (symbol, t). A bar with a known key replaces the old one (last write wins by
  arrival); an exact duplicate changes nothing.
* A candle is a pure function of the set of bars in its bucket: open of the earliest bar, close of
  the latest, max high, min low, summed volume, VWAP = sum(vw * v) / sum(v) over the bars that carry
  vw (a one-bar candle keeps that bar's vw exactly), trades = sum(n) over the bars that carry n,
  ``bars`` = number of bars. Sums are taken in time
  order, so the result is bit-for-bit the same whatever order the bars arrived in.
* Every change of a candle increments its ``revision``. A candle is ``final`` once the injected
  clock passes its end plus ``grace_ms``; that transition is itself a change. A later bar
  re-publishes a final candle with a higher revision.

State is bounded: a bucket is evicted once it is final and the event-time watermark (the latest
bar end seen) has passed its end by ``lateness_ms``; each bar is held once, for as long as an open
bucket may cover its minute. The caller (the pipeline) writes every published candle to the store
before evicting, so an evicted or pre-restart bucket can be rebuilt from the store's 1-minute
table (``restore``) when a late bar for it arrives; ``known_until`` tracks, per symbol, before
which time the store may hold bars that are not in memory.

Buckets come from ``Interval``: UTC-aligned intervals inline ``t - t % size`` (the hot path), the
exchange-aligned ones (docs/design.md#exchange-time-candles) call ``Interval.bucket_start``, which
may say a bar is in no bucket (outside every session of the session ``1d``): such a bar is in
none of that interval's candles. A bucket's end is ``Interval.bucket_end``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from speedlayer.aggregate import ordered_sums
from speedlayer.clock import Clock
from speedlayer.intervals import MINUTE_MS, NO_BUCKET, Interval, IntervalSet
from speedlayer.models import Bar, Candle


class _Bucket:
    """Open bucket: the aggregates of its bars in time order (the bars themselves are kept once
    per minute by the resampler). A bucket knows its own key and expiry, so a batch can collect
    changed buckets by identity and build their candles without looking anything up.
    """

    __slots__ = (
        "close",
        "count",
        "final",
        "first_vw",
        "has_n",
        "has_vw",
        "high",
        "interval",
        "last_t",
        "low",
        "open",
        "pv",
        "pv_volume",
        "revision",
        "stale_ttl",
        "start",
        "symbol",
        "trades",
        "ttl",
        "volume",
    )  # fmt: skip

    def __init__(
        self, symbol: str, interval: Interval, start: int, revision: int = 0, final: bool = False
    ) -> None:
        self.symbol = symbol
        self.interval = interval.name
        self.start = start
        self.ttl = interval.ttl(start)
        self.count = 0
        self.last_t = -1
        self.first_vw: float | None = None
        self.open = self.close = self.high = self.low = 0.0
        self.volume = self.pv = self.pv_volume = 0.0
        self.has_vw = False
        self.trades = 0
        self.has_n = False
        self.revision = revision
        self.final = final
        # Restored from a stored candle whose ttl another retention set: the next bar of the
        # bucket, even an exact duplicate, rewrites the candle with this ttl.
        self.stale_ttl = False

    def append(self, bar: Bar) -> None:
        """Add a bar later than every bar held: the time-ordered sums extend exactly."""
        if self.count:
            if bar.h > self.high:
                self.high = bar.h
            if bar.l < self.low:
                self.low = bar.l
        else:
            self.first_vw = bar.vw
            self.open = bar.o
            self.high = bar.h
            self.low = bar.l
        self.count += 1
        self.last_t = bar.t
        self.close = bar.c
        self.volume += bar.v
        vw = bar.vw
        if vw is not None:
            self.has_vw = True
            self.pv += vw * bar.v
            self.pv_volume += bar.v
        if bar.n is not None:
            self.has_n = True
            self.trades += bar.n

    def recompute(self, ordered: list[Bar]) -> None:
        """Rebuild the aggregates from all its bars, ``ordered`` by time (the sums ``append``
        makes)."""
        first, last = ordered[0], ordered[-1]
        self.count = len(ordered)
        self.open, self.first_vw = first.o, first.vw
        self.last_t, self.close = last.t, last.c
        self.high = max([bar.h for bar in ordered])
        self.low = min([bar.l for bar in ordered])
        (self.volume, self.pv, self.pv_volume, self.trades, self.has_vw,
         self.has_n) = ordered_sums(ordered)  # fmt: skip

    def state(self) -> tuple[object, ...]:
        return (
            self.open, self.high, self.low, self.close, self.volume, self.pv, self.pv_volume,
            self.has_vw, self.trades, self.has_n, self.count, self.first_vw,
        )  # fmt: skip

    def candle(self) -> Candle:
        count = self.count
        if count == 1:
            # A one-bar candle carries the bar's own VWAP (equal to the formula when v > 0, and
            # exact), so the 1-minute table records every bar exactly as it arrived.
            vwap = self.first_vw
        elif self.has_vw and self.pv_volume > 0:
            vwap = self.pv / self.pv_volume
        else:
            vwap = None
        return Candle(
            self.symbol, self.interval, self.start, self.open, self.high, self.low, self.close,
            self.volume, vwap, self.trades if self.has_n else None, count,
            self.final, self.revision, self.ttl,
        )  # fmt: skip


@dataclass
class BatchResult:
    """What one call to ``process`` did: candles changed (latest state of each), bar counts."""

    candles: list[Candle] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    # Candles rewritten only because the stored one had another ttl (the retention changed).
    ttl_rewritten: int = 0


@dataclass(frozen=True, slots=True)
class RestoreRequest:
    """Buckets the store may know about: rebuild them from the 1-minute bars in [start, end)."""

    symbol: str
    start_ms: int
    end_ms: int
    buckets: tuple[tuple[Interval, int], ...]


class Resampler:
    def __init__(
        self,
        intervals: IntervalSet,
        clock: Clock,
        *,
        grace_ms: int = 10_000,
        lateness_ms: int = 15 * MINUTE_MS,
    ) -> None:
        if intervals.items[0].interval_ms != MINUTE_MS:
            raise ValueError("the interval set must start with 1m")
        self.intervals = intervals.items
        self.clock = clock
        self.grace_ms = grace_ms
        self.lateness_ms = lateness_ms
        # Per interval: bucket start -> symbol -> bucket; and the starts holding non-final buckets.
        self._open: list[dict[int, dict[str, _Bucket]]] = [{} for _ in self.intervals]
        self._forming: list[set[int]] = [set() for _ in self.intervals]
        # The bars of every open bucket, once: minute -> symbol -> the latest bar.
        self._bars: dict[int, dict[str, Bar]] = {}
        # Per symbol: the store may hold bars before this time that are not in memory.
        self._known_until: dict[str, int] = {}
        self._watermark_ms = 0

    # -- restoring state from the store -------------------------------------------------------

    def unknown_symbols(self, bars: Iterable[Bar]) -> list[str]:
        """Symbols seen for the first time: the caller must report their last stored bar time."""
        known = self._known_until
        return list({bar.symbol for bar in bars if bar.symbol not in known})

    def note_stored_until(self, last_bar_t: dict[str, int | None]) -> None:
        """Record, per symbol, the start of the latest bar in the store (None: no bars)."""
        for symbol, t in last_bar_t.items():
            until = -1 if t is None else t + MINUTE_MS
            if until > self._known_until.get(symbol, -1):
                self._known_until[symbol] = until

    def restore_requests(self, bars: Iterable[Bar]) -> list[RestoreRequest]:
        """Buckets touched by ``bars`` that are not in memory but may have stored bars."""
        wanted: dict[str, set[tuple[int, int]]] = {}
        longest_ms = max(interval.interval_ms for interval in self.intervals)
        for bar in bars:
            until = self._known_until.get(bar.symbol, -1)
            if bar.t - longest_ms >= until:
                continue  # every bucket of this bar starts after the stored bars end
            for index, interval in enumerate(self.intervals):
                start = interval.bucket_start(bar.t)
                if start == NO_BUCKET or start >= until:
                    continue
                group = self._open[index].get(start)
                if group is None or bar.symbol not in group:
                    wanted.setdefault(bar.symbol, set()).add((index, start))
        requests = []
        for symbol, keys in wanted.items():
            buckets = tuple((self.intervals[i], start) for i, start in sorted(keys))
            lo = min(start for _, start in buckets)
            hi = max(iv.bucket_end(start) for iv, start in buckets)
            requests.append(RestoreRequest(symbol, lo, hi, buckets))
        return requests

    def restore(
        self,
        request: RestoreRequest,
        bars: Sequence[Bar],
        stored: dict[tuple[str, int], Candle],
    ) -> None:
        """Rebuild the requested buckets from stored 1-minute bars and stored candle revisions.

        ``stored`` maps (interval name, start) to the stored candle, where there is one.
        """
        now = self.clock.now_ms()
        symbol = request.symbol
        held = self._bars
        for bar in bars:  # what memory holds for a minute is at least as new as the store's
            held.setdefault(bar.t, {}).setdefault(symbol, bar)
        for interval, start in request.buckets:
            index = self.intervals.index(interval)
            group = self._open[index].setdefault(start, {})
            if request.symbol in group:
                continue
            candle = stored.get((interval.name, start))
            end = interval.bucket_end(start)
            # A stored candle keeps its state: if it is due, ``_finalize`` makes it final with a
            # new revision, exactly as if the process had not restarted. A bucket the store has
            # no candle for starts like a fresh one.
            bucket = _Bucket(
                request.symbol,
                interval,
                start,
                revision=candle.revision if candle else 0,
                final=candle.final if candle else end + self.grace_ms <= now,
            )
            ordered = self._bucket_bars(symbol, start, end)
            if ordered:
                bucket.recompute(ordered)
            bucket.stale_ttl = candle is not None and candle.ttl != bucket.ttl
            group[request.symbol] = bucket
            if not bucket.final:
                self._forming[index].add(start)

    def _bucket_bars(self, symbol: str, start: int, end: int) -> list[Bar]:
        """The bars held for ``symbol`` in [start, end), in time order."""
        held = self._bars
        out = []
        for t in range(start, end, MINUTE_MS):
            group = held.get(t)
            if group is not None:
                bar = group.get(symbol)
                if bar is not None:
                    out.append(bar)
        return out

    # -- processing -----------------------------------------------------------------------------

    def process(self, bars: Iterable[Bar]) -> BatchResult:
        """Apply bars in arrival order, then finalize what the clock has passed.

        Returns the latest state of every candle that changed, each once, in order of first change.
        Call ``restore`` for ``restore_requests(bars)`` first when the store may hold older state.
        """
        now = self.clock.now_ms()
        grace = self.grace_ms
        # interval_ms is 0 for an exchange-aligned interval: its buckets come from the Interval.
        plan = [
            (interval, interval.interval_ms if interval.utc_aligned else 0, groups, forming)
            for interval, groups, forming in zip(
                self.intervals, self._open, self._forming, strict=True
            )
        ]
        known = self._known_until
        changed: dict[_Bucket, None] = {}  # insertion-ordered set, by identity
        result = BatchResult()
        watermark = self._watermark_ms
        held = self._bars
        for bar in bars:
            symbol = bar.symbol
            t = bar.t
            minute = held.get(t)
            if minute is None:
                minute = held[t] = {}
            previous = minute.get(symbol)
            if previous is not None and previous == bar:
                result.duplicates += 1
                # Unchanged, unless the retention changed since its candles were stored.
                for interval, interval_ms, groups, _ in plan:
                    start = t - t % interval_ms if interval_ms else interval.bucket_start(t)
                    bucket = groups.get(start, {}).get(symbol)
                    if bucket is not None and bucket.stale_ttl:
                        bucket.stale_ttl = False
                        bucket.revision += 1
                        changed[bucket] = None
                        result.ttl_rewritten += 1
                continue
            minute[symbol] = bar
            result.accepted += 1
            if symbol not in known:
                known[symbol] = -1
            if t + MINUTE_MS > watermark:
                watermark = t + MINUTE_MS
            for interval, interval_ms, groups, forming in plan:
                if interval_ms:
                    start = t - t % interval_ms
                    end = start + interval_ms
                else:
                    start = interval.bucket_start(t)
                    if start == NO_BUCKET:
                        continue
                    end = interval.bucket_end(start)
                group = groups.get(start)
                if group is None:
                    group = groups[start] = {}
                bucket = group.get(symbol)
                if bucket is None:
                    final = end + grace <= now
                    bucket = group[symbol] = _Bucket(symbol, interval, start, final=final)
                    if not final:
                        forming.add(start)
                if previous is None and t > bucket.last_t:
                    bucket.append(bar)
                else:
                    before = bucket.state()
                    bucket.recompute(self._bucket_bars(symbol, start, end))
                    if bucket.state() == before and not bucket.stale_ttl:
                        continue
                bucket.stale_ttl = False
                bucket.revision += 1
                changed[bucket] = None
        self._watermark_ms = watermark
        self._finalize(now, changed)
        result.candles = [bucket.candle() for bucket in changed]
        return result

    def advance(self) -> list[Candle]:
        """Finalize the candles whose end plus grace the clock has passed; return them."""
        changed: dict[_Bucket, None] = {}
        self._finalize(self.clock.now_ms(), changed)
        return [bucket.candle() for bucket in changed]

    def _finalize(self, now: int, changed: dict[_Bucket, None]) -> None:
        for index, interval in enumerate(self.intervals):
            starts = self._forming[index]
            if not starts:
                continue
            if interval.utc_aligned:
                size = interval.interval_ms
                due = [start for start in starts if start + size + self.grace_ms <= now]
            else:
                end = interval.bucket_end
                due = [start for start in starts if end(start) + self.grace_ms <= now]
            for start in sorted(due):
                starts.discard(start)
                for bucket in self._open[index].get(start, {}).values():
                    if not bucket.final and bucket.count:
                        bucket.final = True
                        bucket.revision += 1
                        changed[bucket] = None

    def evict(self) -> int:
        """Drop final buckets the watermark has left ``lateness_ms`` behind; return how many.

        Only call this once every candle returned so far has been written to the store.
        """
        horizon = self._watermark_ms - self.lateness_ms
        known = self._known_until
        evicted = 0
        for index, interval in enumerate(self.intervals):
            end_of = interval.bucket_end
            groups = self._open[index]
            forming = self._forming[index]
            for start in [s for s in groups if end_of(s) <= horizon]:
                group = groups[start]
                end = end_of(start)
                if start in forming:
                    victims = [symbol for symbol, bucket in group.items() if bucket.final]
                    for symbol in victims:
                        del group[symbol]
                else:
                    victims = list(group)
                    del groups[start]
                for symbol in victims:
                    if known.get(symbol, -1) < end:
                        known[symbol] = end
                evicted += len(victims)
        # Keep the bars of the minutes an open bucket may still cover.
        oldest = min((min(groups) for groups in self._open if groups), default=None)
        held = self._bars
        for t in [t for t in held if oldest is None or t < oldest]:
            del held[t]
        return evicted

    def open_bucket_count(self) -> int:
        return sum(len(group) for groups in self._open for group in groups.values())
