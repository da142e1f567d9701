"""The failure policy (docs/design.md#failure-policy) on the live embedded path: simulator ->
WebSocket feed -> bus -> runner -> pipeline -> SQLite, as in ``test_live_ingest.py``.

A store that fails for a while (a disk that fills and frees again) must cost nothing: the batch
is retried, never skipped, the runner says so meanwhile, and afterwards every stored candle equals
its recomputation from the stored 1m bars, which equal what the simulator sent. A store that keeps
failing past the deadline stops the runner with an error, uncommitted; a restart on the same file
converges to the same candles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ingest.simulator import PolygonSimulator
from speedlayer.errors import ServiceFailed, StoreError
from speedlayer.models import Candle
from tests.integration.feed.test_live_ingest import (
    LEAD_MINUTES,
    LivePath,
    assert_store_equals_served,
    read_store,
    restart_to_end,
    run_to_end,
    sim_config,
    start_live,
    wait_until,
    write_replay,
)

pytestmark = pytest.mark.timeout(60)


class DiskFull:
    """Makes a store's ``upsert`` fail like SQLite on a full disk, for the next ``calls`` calls
    (or until ``forever`` is cleared)."""

    def __init__(self, upsert: Callable[[Sequence[Candle]], Awaitable[int]]) -> None:
        self.upsert = upsert
        self.left = 0
        self.forever = False
        self.failed = 0

    async def __call__(self, candles: Sequence[Candle]) -> int:
        if self.forever or self.left > 0:
            self.left -= 1
            self.failed += 1
            raise StoreError("SQLite write failed: database or disk is full")
        return await self.upsert(candles)


def disk_full(live: LivePath) -> DiskFull:
    fault = DiskFull(live.store.upsert)
    live.store.upsert = fault  # type: ignore[method-assign]
    live.pipeline.retry_initial_s = 0.01
    live.pipeline.retry_cap_s = 0.05
    return fault


async def test_a_store_failing_for_a_while_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """More failures in a row than a bounded retry count: the batch waits, nothing is skipped."""
    replay = write_replay(tmp_path / "bars.csv")
    async with PolygonSimulator(sim_config(replay)) as sim:
        live = LivePath(sim, tmp_path / "candles.db")
        try:
            await start_live(live)
            fault = disk_full(live)
            await wait_until(lambda: live.runner.bars_in > 0, 10, "the first bars")
            fault.left = 40
            problems: list[str] = []

            def noticed() -> bool:
                problem = live.runner.problem()
                if problem is not None:
                    problems.append(problem)
                return bool(problems) and fault.left <= 0

            await wait_until(noticed, 20, "the failures to be retried")
            finish = await run_to_end(live)
        finally:
            await live.stop()
        assert_store_equals_served(live.db, sim.served(), finish)
    assert fault.failed == 40
    assert live.pipeline.stats.write_retries == 40
    assert "disk is full" in problems[0], problems[0]
    assert live.runner.problem() is None and not live.runner.failed.is_set()
    retried = [r for r in caplog.records if "store write failed" in r.getMessage()]
    assert len(retried) == 40
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_store_failing_past_the_deadline_stops_the_runner_and_a_restart_converges(
    tmp_path: Path,
) -> None:
    replay = write_replay(tmp_path / "bars.csv")
    db = tmp_path / "candles.db"
    async with PolygonSimulator(sim_config(replay)) as sim:
        first = LivePath(sim, db)
        try:
            await start_live(first)
            fault = disk_full(first)
            first.pipeline.retry_deadline_s = 0.5
            await wait_until(
                lambda: sim.stats.minutes_sent >= LEAD_MINUTES + 4, 10, "four minutes of data"
            )
            fault.forever = True
            await wait_until(first.runner.failed.is_set, 10, "the runner to give up")
            processed = first.runner.bars_in
            await asyncio.sleep(0.3)
            assert first.runner.bars_in == processed, "the runner went on after it failed"
        finally:
            await first.stop()
        failure: Any = first.runner.failure
        assert isinstance(failure, ServiceFailed), failure
        assert "disk is full" in str(failure.__cause__)
        assert first.runner.problem() == f"pipeline stopped: {failure}"
        assert sum(map(len, read_store(db).values())) > 0

        second = await restart_to_end(sim, db)
    assert second.feed.stats.backfill_bars > 0
