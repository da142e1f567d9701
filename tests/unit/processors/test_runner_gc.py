"""PipelineRunner collects garbage between bursts (processors/runner.py's docstring): one full
collection after each pause of ``idle_collect_s`` that follows a batch, none while idle after it,
and none without the option."""

from __future__ import annotations

import asyncio
import gc

from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from processors.runner import PipelineRunner
from speedlayer.bus.base import RAW_TOPIC
from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import ManualClock
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import Bar
from speedlayer.store.memory import MemoryStore
from tests.waiting import until

INTERVALS = IntervalSet(list(DEFAULT_INTERVALS))
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
IDLE_S = 0.1


def full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


async def runner_on(bus: MemoryBus, idle_collect_s: float | None) -> PipelineRunner:
    clock = ManualClock(T0 + 60_000)
    store = MemoryStore(INTERVALS, clock)
    await store.start()
    pipeline = CandlePipeline(Resampler(INTERVALS, clock), store)
    runner = PipelineRunner(pipeline, bus, clock, tick_s=0.05, idle_collect_s=idle_collect_s)
    await runner.start()
    return runner


async def burst(bus: MemoryBus, runner: PipelineRunner, minute: int) -> None:
    before = runner.bars_in
    bars = [Bar(f"S{i}", T0 + minute * 60_000, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(50)]
    await bus.publish(RAW_TOPIC, bars)
    await until(lambda: runner.bars_in == before + len(bars))


async def test_a_full_collection_follows_each_pause_after_a_batch() -> None:
    bus = MemoryBus()
    await bus.start()
    runner = await runner_on(bus, IDLE_S)
    try:
        await asyncio.sleep(IDLE_S * 4)
        assert runner.idle_collections == 0  # no batch yet: nothing to collect after
        before = full_collections()
        await burst(bus, runner, 0)
        await until(lambda: runner.idle_collections == 1)
        assert full_collections() > before
        await asyncio.sleep(IDLE_S * 5)
        assert runner.idle_collections == 1  # once per pause, not on every check
        await burst(bus, runner, 1)
        await until(lambda: runner.idle_collections == 2)
    finally:
        await runner.stop()
        await bus.stop()


async def test_without_the_option_the_runner_leaves_the_collector_alone() -> None:
    bus = MemoryBus()
    await bus.start()
    runner = await runner_on(bus, None)
    try:
        await burst(bus, runner, 0)
        await asyncio.sleep(IDLE_S * 5)
        assert runner.idle_collections == 0
    finally:
        await runner.stop()
        await bus.stop()
