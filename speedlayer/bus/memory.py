"""The in-process bus: the embedded default and the fast test double.

Batches go straight onto the queues of the subscriptions open at the time of ``publish``. There
are no positions: every subscription, with a consumer name or without (``consumer=None``), sees
every batch published while it exists, as a broadcast subscription does on the other buses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from speedlayer.bus.base import Bus, Subscription


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._subscriptions: dict[str, list[Subscription]] = {}
        self.published = 0
        self.dropped_subscriptions = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for subs in list(self._subscriptions.values()):
            for sub in list(subs):
                sub.close("bus stopped")
        self._subscriptions.clear()

    def _open(self, subscription: Subscription, consumer: str | None) -> None:
        # no history to resume from: every subscription is a broadcast one, the name is ignored
        for topic in subscription.topics:
            self._subscriptions.setdefault(topic, []).append(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        for topic in subscription.topics:
            subs = self._subscriptions.get(topic)
            if subs and subscription in subs:
                subs.remove(subscription)

    async def publish(self, topic: str, batch: Sequence[Any]) -> None:
        if not batch:
            return
        self.published += 1
        item = (topic, list(batch))
        for sub in list(self._subscriptions.get(topic, ())):
            if not await sub.offer(item):
                self.dropped_subscriptions += 1
