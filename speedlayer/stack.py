"""The services, composed: ``speedlayer up`` (everything in one process) and the separate
``speedlayer ingest`` and ``speedlayer process`` services (``speedlayer api`` is ``api.app``).

* **ingest**: the feed (the Polygon simulator in process, Polygon itself when a key is configured,
  or any Polygon-protocol server at ``polygon_ws_url``) -> validated 1-minute bars on the raw
  topic ``market-data-raw``.
* **process**: the raw topic (durable consumer ``process_consumer``; on Kinesis a first start reads
  the stream from its oldest record) -> resampler -> store -> candle updates on
  ``market-data-{interval}``. Its position is committed after each batch is stored, so a restart
  (even after ``kill -9``) resumes where it left off; a batch that keeps failing stops the service
  with an error instead of being skipped.
* **up**: both of them and the API in one process, over the configured backends (the in-process
  bus and SQLite by default; ``--bus kinesis --store dynamodb`` for the AWS path).

The bus and the store come from ``speedlayer.backends``. Separate services use the wall clock;
``up`` with the simulator uses the simulator's clock. Like the CLI, this module is part of the
composition root and, with it, the only core module that imports the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from speedlayer.backends import open_bus, open_store
from speedlayer.bus.base import Bus
from speedlayer.clock import Clock, SystemClock
from speedlayer.config import Settings
from speedlayer.errors import SpeedlayerError
from speedlayer.store.base import Store

if TYPE_CHECKING:
    from ingest.polygon import PolygonFeed
    from processors.runner import PipelineRunner

log = logging.getLogger(__name__)


@dataclass
class FeedTarget:
    """Where the feed connects, and the clock of the market it carries."""

    clock: Clock
    api_key: str
    ws_url: str
    rest_url: str
    market: str
    symbols: list[str]
    backfill_symbols: list[str] = field(default_factory=list)


async def start_source(stack: contextlib.AsyncExitStack, settings: Settings) -> FeedTarget:
    """Start the in-process simulator when the settings select it; else describe Polygon."""
    if settings.live_source == "simulator":
        from ingest.simulator import PolygonSimulator, SimulatorConfig

        simulator = await stack.enter_async_context(
            PolygonSimulator(
                SimulatorConfig(
                    host="127.0.0.1",
                    port=settings.sim_port,
                    symbols=settings.sim_symbols,
                    speed=settings.sim_speed,
                    replay=list(settings.sim_replay),
                    history_minutes=settings.sim_history_min,
                )
            )
        )
        log.info("feed: Polygon simulator at %s (%d symbols)", simulator.ws_url,
                 len(simulator.symbols))  # fmt: skip
        return FeedTarget(
            clock=simulator.clock,
            api_key="simulator",
            ws_url=simulator.ws_url,
            rest_url=simulator.rest_url,
            market="stocks",
            symbols=["*"],
            backfill_symbols=list(simulator.symbols),
        )
    log.info("feed: Polygon at %s/%s", settings.polygon_ws_url, settings.polygon_market)
    return FeedTarget(
        clock=SystemClock(),
        api_key=settings.polygon_api_key.get_secret_value() if settings.polygon_api_key else "",
        ws_url=settings.polygon_ws_url,
        rest_url=settings.polygon_rest_url,
        market=settings.polygon_market,
        symbols=list(settings.polygon_symbols),
    )


async def start_feed(
    stack: contextlib.AsyncExitStack, settings: Settings, target: FeedTarget, bus: Bus
) -> PolygonFeed:
    from ingest.polygon import PolygonConfig, PolygonFeed

    feed = PolygonFeed(
        PolygonConfig(
            api_key=target.api_key,
            ws_url=target.ws_url,
            rest_url=target.rest_url,
            market=target.market,
            symbols=target.symbols,
            backfill_lookback_min=settings.backfill_lookback_min,
            backfill_symbols=target.backfill_symbols,
        ),
        bus,
        target.clock,
    )
    await feed.start()
    stack.push_async_callback(feed.stop)
    return feed


async def start_pipeline(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    store: Store,
    bus: Bus,
    clock: Clock,
    *,
    exit_on_error: bool = False,
) -> PipelineRunner:
    from processors.pipeline import CandlePipeline
    from processors.resampler import Resampler
    from processors.runner import PipelineRunner

    resampler = Resampler(
        settings.interval_set, clock, grace_ms=settings.grace_ms, lateness_ms=settings.lateness_ms
    )
    runner = PipelineRunner(
        CandlePipeline(resampler, store),
        bus,
        clock,
        stats_every_s=settings.stats_interval_s,
        consumer=settings.process_consumer,
        exit_on_error=exit_on_error,
    )
    await runner.start()
    stack.push_async_callback(runner.stop)
    return runner


async def wait_for_stop(failed: asyncio.Event | None = None) -> bool:
    """Wait for SIGINT/SIGTERM (True) or for ``failed`` to be set (False)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(stop.wait())]
    if failed is not None:
        waiters.append(asyncio.create_task(failed.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
    return stop.is_set()


async def run_stack(settings: Settings) -> None:
    """``speedlayer up``: feed, pipeline, store and API in one process."""
    import uvicorn

    from api.app import create_app

    stack = contextlib.AsyncExitStack()
    try:
        target = await start_source(stack, settings)
        clock = target.clock
        bus = await stack.enter_async_context(open_bus(settings))
        store = await stack.enter_async_context(open_store(settings, clock))
        if not target.backfill_symbols:  # after a restart: history of the symbols already stored
            target.backfill_symbols = await store.symbols()
        runner = await start_pipeline(stack, settings, store, bus, clock)
        await start_feed(stack, settings, target, bus)
        log.info("backends: bus %s, store %s", settings.bus, settings.store)

        app = create_app(settings, store=store, clock=clock, bus=bus, runner=runner)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level.lower(),
                access_log=settings.log_level.lower() == "debug",
            )
        )
        log.info("API on http://%s:%d", settings.host, settings.port)
        await server.serve()
    finally:
        await close_in_order(stack)


async def close_in_order(stack: contextlib.AsyncExitStack) -> None:
    """Close ``stack`` to its end (feed, pipeline, store, bus: the reverse of their start) even if
    this task is cancelled meanwhile; then let the cancellation through. uvicorn re-raises the
    SIGINT it handled once the server has shut down, which cancels the main task: without this,
    the bus could close while the feed is still publishing."""
    closing = asyncio.ensure_future(stack.aclose())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing
        raise


async def run_ingest(settings: Settings) -> None:
    """``speedlayer ingest``: the feed onto the raw topic, until SIGINT/SIGTERM."""
    async with contextlib.AsyncExitStack() as stack:
        target = await start_source(stack, settings)
        bus = await stack.enter_async_context(open_bus(settings))
        feed = await start_feed(stack, settings, target, bus)
        log.info("ingest: %s -> bus %s", target.ws_url, settings.bus)
        reporter = asyncio.create_task(_report_feed(feed, settings.stats_interval_s))
        failed = asyncio.Event()
        watcher = asyncio.create_task(_watch_feed(feed, failed))
        try:
            stopped = await wait_for_stop(failed)
        finally:
            for task in (reporter, watcher):
                task.cancel()
            await asyncio.gather(reporter, watcher, return_exceptions=True)
        stats = feed.stats
        log.info("ingest: %d bars published, %d from backfill", stats.bars_published,
                 stats.backfill_bars)  # fmt: skip
        if not stopped and feed.failed is not None:
            raise SpeedlayerError(f"ingest stopped: {feed.failed}")


async def _watch_feed(feed: PolygonFeed, failed: asyncio.Event) -> None:
    """Set ``failed`` once the feed has failed for good (the API key was refused)."""
    while True:
        await asyncio.sleep(1.0)
        if feed.failed is not None:
            failed.set()
            return


async def _report_feed(feed: PolygonFeed, every_s: float) -> None:
    published = 0
    while True:
        await asyncio.sleep(every_s)
        stats = feed.stats
        total = stats.bars_published + stats.backfill_bars
        log.info(
            "ingest: %d bars published (%.0f/s), %d rejected, %d reconnects",
            total, (total - published) / every_s, sum(stats.rejected.values()), stats.reconnects,
        )  # fmt: skip
        published = total


async def run_process(settings: Settings) -> None:
    """``speedlayer process``: raw bars -> candles in the store and on the bus, until
    SIGINT/SIGTERM; exits with an error when a batch cannot be stored."""
    async with contextlib.AsyncExitStack() as stack:
        clock = SystemClock()
        # A consumer without a stored position reads what the stream still holds (on Kinesis:
        # from TRIM_HORIZON), so bars published before the first start are not skipped.
        bus = await stack.enter_async_context(open_bus(settings, initial_position="TRIM_HORIZON"))
        store = await stack.enter_async_context(open_store(settings, clock))
        runner = await start_pipeline(stack, settings, store, bus, clock, exit_on_error=True)
        log.info("process: consumer %r, bus %s -> store %s", settings.process_consumer,
                 settings.bus, settings.store)  # fmt: skip
        stopped = await wait_for_stop(runner.failed)
        log.info("process: %d bars in, %d candles out", runner.bars_in, runner.candles_out)
        if not stopped:
            raise SpeedlayerError(f"processing stopped: {runner.failure}")
