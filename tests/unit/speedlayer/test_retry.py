"""speedlayer.retry: the one backoff policy and retry loop of every write path."""

from __future__ import annotations

import random

import pytest

from speedlayer.errors import BusError, ConfigError, StoreError
from speedlayer.retry import Backoff, is_retriable, retry


def test_backoff_ceilings_double_up_to_the_cap_and_reset() -> None:
    backoff = Backoff(initial_s=0.1, cap_s=1.0, rng=random.Random(1))
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        delay = backoff.next_delay()
        assert delay is not None and 0 <= delay <= ceilings[-1]
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.failures == 0 and backoff.ceiling() == 0.1


def test_backoff_ends_after_its_attempts_or_its_time() -> None:
    by_count = Backoff(attempts=3)
    assert [by_count.next_delay() is not None for _ in range(4)] == [True, True, False, False]
    assert by_count.failures == 2
    by_time = Backoff(timeout_s=0.0)
    assert by_time.expired() and by_time.next_delay() is None
    with pytest.raises(ValueError):
        Backoff(initial_s=2.0, cap_s=1.0)


def test_errors_say_whether_a_retry_may_help() -> None:
    assert is_retriable(StoreError("disk full")) and is_retriable(BusError("broker away"))
    assert not is_retriable(ConfigError("bad setting")) and not is_retriable(ValueError("x"))


async def test_retry_retries_retriable_errors_until_success() -> None:
    calls, seen = [], []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise StoreError("database or disk is full")
        return "done"

    result = await retry(
        flaky,
        what="write",
        backoff=Backoff(initial_s=0.001, cap_s=0.002),
        on_failure=lambda exc, n: seen.append((str(exc), n)),
    )
    assert result == "done" and len(calls) == 4
    assert seen == [("database or disk is full", n) for n in (1, 2, 3)]


async def test_retry_raises_at_once_what_is_not_retriable_and_the_last_error_at_the_end() -> None:
    calls = []

    async def refused() -> None:
        calls.append(1)
        raise ConfigError("bad")

    with pytest.raises(ConfigError):
        await retry(refused, what="write")
    assert len(calls) == 1

    async def down() -> None:
        calls.append(1)
        raise BusError(f"attempt {len(calls)}")

    calls.clear()
    with pytest.raises(BusError, match="attempt 3"):
        await retry(down, what="publish", backoff=Backoff(initial_s=0.001, attempts=3))
    assert len(calls) == 3
