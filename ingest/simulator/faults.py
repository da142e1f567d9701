"""Burst planning for the simulator: one minute's events cut into frames, with the data faults
(duplicates, late corrections, out-of-order delivery) injected.

The invariant that keeps ``PolygonSimulator.served()`` exact: the last event sent for a key is its
truth. Duplicates are exact copies of an event already sent (or sent earlier in the same burst);
a correction is always sent in a later burst than every copy of the version it replaces.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ingest.simulator.data import Event, EventEncoder, corrected
from speedlayer.models import MINUTE_MS, Bar

FRAME_EVENTS = 200  # events per frame at most (Polygon batches "up to a few hundred")
MIN_FRAMES = 4  # so that "a later frame of the same minute" exists even for a few symbols


@dataclass(slots=True, eq=False)  # identity: items are removed from frames by identity
class Item:
    """One event to send. ``bar`` is the version it makes the truth (None: an exact duplicate)."""

    symbol: str
    event: Event
    bar: Bar | None


@dataclass
class PlanCounts:
    duplicates: int = 0
    corrections: int = 0
    out_of_order: int = 0


@dataclass
class BurstPlanner:
    rng: random.Random
    encoder: EventEncoder
    duplicate_rate: float = 0.0
    correction_rate: float = 0.0
    out_of_order_rate: float = 0.0
    counts: PlanCounts = field(default_factory=PlanCounts)
    _carry: list[Item] = field(default_factory=list)  # into the next burst
    _corrections: dict[int, list[tuple[str, int]]] = field(default_factory=dict)

    def pending(self) -> bool:
        """Whether events are still owed to later bursts (delayed, duplicated, corrections)."""
        return bool(self._carry or self._corrections)

    def plan(
        self, minute_ms: int, bars: list[Bar], latest: Callable[[str, int], Bar | None]
    ) -> list[list[Item]]:
        """The frames of the burst sent after minute ``minute_ms`` ends: its ``bars`` in order,
        plus what earlier bursts owe it. ``latest(symbol, t)`` is the version last sent."""
        rng, encode = self.rng, self.encoder.event
        items = [Item(bar.symbol, encode(bar), bar) for bar in bars]
        extra = self._carry
        self._carry = []
        for symbol, t in self._corrections.pop(minute_ms, ()):
            previous = latest(symbol, t)
            if previous is None:
                continue  # pruned meanwhile
            new = corrected(previous, rng)
            extra.append(Item(symbol, encode(new, previous), new))
            self.counts.corrections += 1
        total = len(items) + len(extra)
        if total == 0:
            return []
        n_frames = max(math.ceil(total / FRAME_EVENTS), min(total, MIN_FRAMES))
        frames: list[list[Item]] = [[] for _ in range(n_frames)]
        count = len(items)
        for i, item in enumerate(items):
            frames[i * n_frames // count].append(item)
        for item in extra:
            frame = frames[rng.randrange(n_frames)]
            frame.insert(rng.randint(0, len(frame)), item)

        faults = self.duplicate_rate or self.correction_rate or self.out_of_order_rate
        if not faults:
            return frames
        for i, item in enumerate(items):
            index = i * n_frames // count
            carried = False
            if self.out_of_order_rate and rng.random() < self.out_of_order_rate:
                frames[index].remove(item)
                carried = self._later(frames, index, item)
                self.counts.out_of_order += 1
            elif self.duplicate_rate and rng.random() < self.duplicate_rate:
                carried = self._later(frames, index, Item(item.symbol, item.event, None))
                self.counts.duplicates += 1
            if self.correction_rate and rng.random() < self.correction_rate:
                assert item.bar is not None
                delay = rng.randint(2 if carried else 1, 15)
                due = minute_ms + delay * MINUTE_MS
                self._corrections.setdefault(due, []).append((item.symbol, item.bar.t))
        return frames

    def _later(self, frames: list[list[Item]], index: int, item: Item) -> bool:
        """Put ``item`` into a later frame of this burst or into the next burst (True)."""
        if index + 1 >= len(frames) or self.rng.random() < 0.5:
            self._carry.append(item)
            return True
        frame = frames[self.rng.randrange(index + 1, len(frames))]
        frame.insert(self.rng.randint(0, len(frame)), item)
        return False
