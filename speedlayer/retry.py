"""Retrying what failed: one backoff policy and one retry loop for every write path.

:class:`Backoff` is exponential backoff with full jitter: after ``n`` consecutive failures the
next wait is uniform in ``[0, min(cap_s, initial_s * 2**n)]``. It ends after ``attempts``
attempts in all or once ``timeout_s`` has passed since its creation (either may be None: no
bound). :func:`retry` runs an operation until it succeeds, retrying the errors that are
``retriable`` (:mod:`speedlayer.errors`) while the backoff allows, and raises the last error once
it does not; every write in speedlayer is an idempotent upsert or a keyed publish, so trying the
same call again never duplicates anything.

An error is not retriable either when its chain of causes (``raise ... from cause``) holds a
:class:`~speedlayer.errors.ConfigurationError` or a cause that a backend declared permanent with
:func:`register_permanent` (:mod:`speedlayer.aws` declares the AWS SDK's: missing credentials or
region, an invalid endpoint, refused credentials or permissions): a backend that wraps such a
cause in its own, otherwise retriable, error still fails at once instead of being retried until
a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from speedlayer.errors import ConfigurationError

T = TypeVar("T")

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with full jitter, bounded by attempts and/or time."""

    def __init__(
        self,
        *,
        initial_s: float = 0.05,
        cap_s: float = 2.0,
        timeout_s: float | None = None,
        attempts: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= cap_s:
            raise ValueError(f"need 0 < initial_s <= cap_s: {initial_s!r}, {cap_s!r}")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.attempts = attempts
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.failures = 0  # consecutive failures counted by next_delay()
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The upper bound of the next wait: ``initial_s * 2**failures``, capped."""
        return min(self.cap_s, self.initial_s * 2.0 ** min(self.failures, 62))

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        remaining = self.remaining_s()
        return remaining is not None and remaining <= 0

    def next_delay(self) -> float | None:
        """Count one failure and give the wait before the next attempt, or None once the
        attempts or the time are used up (the failure is then not counted)."""
        if self.attempts is not None and self.failures + 1 >= self.attempts:
            return None
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            return None
        delay = self._rng.uniform(0.0, self.ceiling())
        self.failures += 1
        return delay if remaining is None else min(delay, remaining)

    async def sleep(self) -> bool:
        """Wait before the next attempt; False (without waiting) once the backoff is used up."""
        delay = self.next_delay()
        if delay is None:
            return False
        await asyncio.sleep(delay)
        return True

    def reset(self) -> None:
        """Start counting consecutive failures again (after a success)."""
        self.failures = 0


_PERMANENT: list[Callable[[BaseException], bool]] = []


def register_permanent(is_permanent: Callable[[BaseException], bool]) -> None:
    """Declare the causes ``is_permanent`` recognises as incurable by a retry (idempotent)."""
    if is_permanent not in _PERMANENT:
        _PERMANENT.append(is_permanent)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its explicit causes (``raise ... from cause``), outermost first."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` or one of its causes is a configuration error or a declared permanent
    cause (see the module docstring)."""
    return any(
        isinstance(link, ConfigurationError) or any(check(link) for check in _PERMANENT)
        for link in causes(exc)
    )


def is_retriable(exc: BaseException) -> bool:
    """Whether trying again may help: the ``retriable`` flag of speedlayer's errors, unless the
    error comes from a permanent cause (:func:`is_permanent`)."""
    return bool(getattr(exc, "retriable", False)) and not is_permanent(exc)


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff | None = None,
    retriable: Callable[[BaseException], bool] = is_retriable,
    on_failure: Callable[[BaseException, int], None] | None = None,
) -> T:
    """``await operation()`` until it succeeds. A retriable error is logged, reported to
    ``on_failure(error, failures)`` and retried after the backoff's wait; any other error, or
    the last one once the backoff is used up, is raised."""
    backoff = backoff or Backoff()
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not retriable(exc):
                raise
            delay = backoff.next_delay()
            if delay is None:
                raise
            if on_failure is not None:
                on_failure(exc, backoff.failures)
            log.warning(
                "%s failed (attempt %d): %s; retrying in %.2fs", what, backoff.failures, exc, delay
            )
            await asyncio.sleep(delay)
