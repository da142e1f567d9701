"""Ownership of a service's long-lived tasks (docs/design.md#failure-policy).

A :class:`Supervisor` starts its tasks and notices when one ends: every task runs until
``stop()``, so one that ends before, with an error or without, fails the owner. Failing closes
the owner's subscription (nothing more is consumed or committed), cancels the other tasks and
sets ``failed`` with the reason in ``failure``; the service then exits with an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from speedlayer.bus.base import Subscription
from speedlayer.errors import ServiceFailed, SubscriptionClosed

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self.failed = asyncio.Event()  # set when the owner stopped on a failure
        self.failure: BaseException | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._subscription: Subscription | None = None

    def _start_tasks(self, tasks: dict[str, Coroutine[Any, Any, Any]]) -> None:
        for name, coro in tasks.items():
            task = asyncio.create_task(coro, name=name)
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if self._stopping or self.failed.is_set():
            return
        error = None if task.cancelled() else task.exception()
        if error is None:
            error = ServiceFailed(f"{task.get_name()} ended unexpectedly")
        elif not isinstance(error, ServiceFailed):
            log.error("%s failed", task.get_name(), exc_info=error)
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self.failure = error
        self.failed.set()
        if self._subscription is not None:  # stop consuming; nothing more is committed
            self._subscription.close(f"stopped on a failure: {error}")
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _consume_batches(
        self,
        subscription: Subscription,
        handle: Callable[[list[Any]], Awaitable[None]],
        max_batch: int,
        what: str,
    ) -> None:
        """Hand ``subscription``'s batches to ``handle``, what is queued joined up to
        ``max_batch`` items, and commit each once handled. ``handle`` raises when a batch cannot
        be done: it is not committed, and the task's end fails the owner. The subscription
        closing other than by ``stop()`` fails it too (``what`` names the topic)."""
        queue = subscription.queue
        async for _, batch in subscription:
            items: list[Any] = list(batch)
            while len(items) < max_batch and not queue.empty():
                try:
                    _, more = await subscription.get()
                except SubscriptionClosed:
                    break
                items.extend(more)
            await handle(items)
            try:
                await subscription.commit()
            except Exception:  # the next commit covers this batch too
                log.exception("storing the consumer position failed; retrying at the next batch")
        if subscription.failed:
            raise ServiceFailed(f"{what} consumer failed: {subscription.closed_reason}")
        if not self._stopping:
            raise ServiceFailed(f"{what} subscription closed: {subscription.closed_reason}")

    async def stop(self) -> None:
        self._stopping = True
        if self._subscription is not None:
            self._subscription.close("stopped")
        for task in self._tasks:
            task.cancel()
        # A task's own failure is already in ``failure``; stopping does not raise it again.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
