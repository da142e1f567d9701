"""The services, composed: ``speedlayer up`` (everything in one process), and the separate
``speedlayer ingest``, ``speedlayer process`` and ``speedlayer api`` services.

* **ingest**: the feed (the Polygon simulator in process, Polygon itself when a key is configured,
  or any Polygon-protocol server at ``polygon_ws_url``) -> validated 1-minute bars on the raw
  topic ``market-data-raw``.
* **process**: the raw topic (durable consumer ``process_consumer``; a first start reads the
  stream from its oldest record) -> resampler -> store -> candle updates on
  ``market-data-{interval}``. Its position is committed after each batch is stored, so a restart
  (even after ``kill -9``) resumes where it left off.
* **api**: REST over the store and, with a distributed bus, the live feeds.
* **up**: ingest, process and the API in one process, over the configured backends (the
  in-process bus and SQLite by default; ``--bus kinesis --store dynamodb`` for the AWS path).

Every service watches the long-lived parts it owns (docs/design.md#failure-policy): when the
pipeline or the feed fails for good, the service stops and exits with an error
(:class:`~speedlayer.errors.ServiceFailed`) instead of running on idle, so a supervisor restarts
it; meanwhile ``/readyz`` reports the problem. Separate services use the wall clock; ``up`` with
the simulator uses the simulator's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from ingest.polygon import FeedStats, PolygonFeed
from launch import emf
from launch.healthcheck import health_file
from launch.wiring import (
    EmbeddedStack,
    embedded_stack,
    serve_workers,
    start_feed,
    start_runner,
    start_source,
    uvicorn_server,
)
from processors.sink import CandleSink
from speedlayer.backends import open_bus, open_store
from speedlayer.bus.relay import RelayServer
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.errors import ConfigError, ServiceFailed
from speedlayer.progress import Progress, progress_mode
from speedlayer.runtime import tune_gc

log = logging.getLogger(__name__)

API_STOP_TIMEOUT_S = 30.0  # how long `up --workers` waits for its API processes to stop


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
    """``speedlayer up``: feed, pipeline, store and API in one process; stops with an error when
    the pipeline or the feed fails for good."""
    async with embedded_stack(settings) as embedded:
        server = uvicorn_server(embedded.app, settings)
        log.info("API on http://%s:%d", settings.host, settings.port)
        watcher = asyncio.create_task(_stop_on_failure(embedded, server))
        backfill = asyncio.create_task(report_backfill(embedded.feed.stats, settings))
        try:
            await server.serve()
        finally:
            watcher.cancel()
            backfill.cancel()
        failure = embedded.failure()
        if failure is not None:
            raise ServiceFailed(f"speedlayer up stopped: {failure}")


async def run_split_stack(settings: Settings, workers: int) -> None:
    """``speedlayer up --workers N``: feed, pipeline and store in this process, the API in N
    processes (``speedlayer api --workers N``) that read the candle topics and the market clock
    from this process's bus over the relay (speedlayer/bus/relay.py) or, with a distributed bus,
    from that bus itself (docs/design.md#api-processes). Stops with an error when the pipeline or
    the feed fails for good, or when the API processes exit; SIGINT/SIGTERM stop both."""
    if settings.store == "memory":
        raise ConfigError("--workers needs a store the processes share (sqlite or dynamodb)")
    api_bus = "relay" if settings.bus == "memory" else settings.bus
    env = dict(os.environ)
    env.update(
        SPEEDLAYER_DB=str(settings.db),
        SPEEDLAYER_STORE=settings.store,
        SPEEDLAYER_BUS=api_bus,
        SPEEDLAYER_RELAY_SOCKET=str(settings.relay_path),
        SPEEDLAYER_HOST=settings.host,
        SPEEDLAYER_PORT=str(settings.port),
    )
    async with contextlib.AsyncExitStack() as stack:
        embedded = await stack.enter_async_context(embedded_stack(settings))
        if api_bus == "relay":
            await stack.enter_async_context(
                RelayServer(embedded.bus, settings.relay_path, embedded.clock)
            )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "launch.cli", "api", "--workers", str(workers), env=env
        )
        log.info("API on http://%s:%d (workers: %d, pid %d)", settings.host, settings.port,
                 workers, child.pid)  # fmt: skip
        backfill = asyncio.create_task(report_backfill(embedded.feed.stats, settings))
        failed = asyncio.Event()
        exited = asyncio.create_task(child.wait())
        exited.add_done_callback(lambda _: failed.set())
        watcher = asyncio.create_task(embedded.wait_failed())
        watcher.add_done_callback(lambda _: failed.set())
        try:
            stopped = await wait_for_stop(failed)
        finally:
            for task in (backfill, watcher):
                task.cancel()
            if child.returncode is None:
                child.terminate()
                try:
                    await asyncio.wait_for(asyncio.shield(exited), API_STOP_TIMEOUT_S)
                except TimeoutError:
                    child.kill()
                    await exited
        if stopped:
            return
        failed_part = embedded.failure()
        failure = (
            f"the API processes exited with code {child.returncode}"
            if failed_part is None
            else str(failed_part)
        )
        log.error("stopping: %s", failure)
        raise ServiceFailed(f"speedlayer up stopped: {failure}")


async def _stop_on_failure(embedded: EmbeddedStack, server: uvicorn.Server) -> None:
    """Shut the API server down once a part of the stack has failed for good."""
    await embedded.wait_failed()
    log.error("stopping: %s", embedded.failure())
    server.should_exit = True


async def run_ingest(settings: Settings) -> None:
    """``speedlayer ingest``: the feed onto the raw topic, until SIGINT/SIGTERM."""
    async with contextlib.AsyncExitStack() as stack:
        target = await start_source(stack, settings)
        bus = await stack.enter_async_context(open_bus(settings))
        feed = await start_feed(stack, settings, target, bus)
        await stack.enter_async_context(health_file(settings.health_file, [feed]))
        log.info("ingest: %s -> bus %s", target.ws_url, settings.bus)
        reporter = asyncio.create_task(
            _report_feed(feed, settings.stats_interval_s, settings.metrics_namespace)
        )
        failed = asyncio.Event()
        watcher = asyncio.create_task(_watch_feed(feed, failed))
        backfill = asyncio.create_task(report_backfill(feed.stats, settings))
        try:
            stopped = await wait_for_stop(failed)
        finally:
            for task in (reporter, watcher, backfill):
                task.cancel()
            await asyncio.gather(reporter, watcher, return_exceptions=True)
        stats = feed.stats
        log.info("ingest: %d bars published, %d from backfill", stats.bars_published,
                 stats.backfill_bars)  # fmt: skip
        if not stopped and feed.failed is not None:
            raise ServiceFailed(f"ingest stopped: {feed.failed}")


async def report_backfill(stats: FeedStats, settings: Settings, every_s: float = 0.25) -> None:
    """The start-up backfill's progress on stderr: symbols done of those asked for, minute bars
    fetched, waits a rate limit (429) caused; a bar on a terminal, else a log line every
    ``stats_interval_s`` and one at the end; none at a log level above info."""
    while stats.backfill_symbols_requested == 0:  # noqa: ASYNC110 (the feed's counter, polled)
        await asyncio.sleep(every_s)
    quiet = settings.log_level not in ("debug", "info")
    with Progress(
        "backfill",
        unit="symbols",
        mode=progress_mode(quiet),
        every_s=settings.stats_interval_s,
        summary=True,
    ) as progress:
        while True:
            done, asked = stats.backfill_symbols_done, stats.backfill_symbols_requested
            progress.update(
                completed=done,
                total=asked,
                minute_bars=stats.backfill_bars,
                rate_limit_waits=stats.backfill_rate_limited,
            )
            if done >= asked:
                return
            await asyncio.sleep(every_s)


async def _watch_feed(feed: PolygonFeed, failed: asyncio.Event) -> None:
    """Set ``failed`` once the feed has failed for good (the API key was refused, or publishing
    kept failing past its deadline)."""
    while True:
        await asyncio.sleep(1.0)
        if feed.failed is not None:
            failed.set()
            return


async def _report_feed(feed: PolygonFeed, every_s: float, metrics_namespace: str = "") -> None:
    """Log throughput every ``every_s``; with a ``metrics_namespace``, also write the feed lag
    and the interval's counts as an embedded-metric-format line on stdout (launch/emf.py)."""
    published = rejected = reconnects = 0
    while True:
        await asyncio.sleep(every_s)
        stats = feed.stats
        total = stats.bars_published + stats.backfill_bars
        rejected_total = sum(stats.rejected.values())
        log.info(
            "ingest: %d bars published (%.0f/s), %d rejected, %d reconnects",
            total, (total - published) / every_s, rejected_total, stats.reconnects,
        )  # fmt: skip
        if metrics_namespace:
            now_ms = time.time_ns() // 1_000_000
            lag_ms = stats.lag_ms(now_ms)
            line = emf.emf_line(
                metrics_namespace,
                emf.INGEST,
                now_ms,
                {emf.FEED_LAG: None if lag_ms is None else lag_ms / 1000},
                {
                    emf.BARS_PUBLISHED: total - published,
                    emf.BARS_REJECTED: rejected_total - rejected,
                    emf.RECONNECTS: stats.reconnects - reconnects,
                },
            )
            print(line, flush=True)
        published, rejected, reconnects = total, rejected_total, stats.reconnects


async def run_process(settings: Settings) -> None:
    """``speedlayer process``: raw bars -> candles in the store and on the bus, until
    SIGINT/SIGTERM; exits with an error when the runner fails (a batch that cannot be stored
    past the retry deadline, a consumer that died), without committing that batch."""
    async with contextlib.AsyncExitStack() as stack:
        clock = SystemClock()
        # A consumer without a stored position reads what the stream still holds (on Kinesis:
        # from TRIM_HORIZON), so bars published before the first start are not skipped.
        bus = await stack.enter_async_context(open_bus(settings, initial_position="TRIM_HORIZON"))
        store = await stack.enter_async_context(open_store(settings, clock))
        runner = await start_runner(stack, settings, store, bus, clock)
        await stack.enter_async_context(health_file(settings.health_file, [runner]))
        log.info("process: consumer %r, bus %s -> store %s", settings.process_consumer,
                 settings.bus, settings.store)  # fmt: skip
        stopped = await wait_for_stop(runner.failed)
        log.info("process: %d bars in, %d candles out", runner.bars_in, runner.candles_out)
        if not stopped:
            raise ServiceFailed(f"processing stopped: {runner.failure}")


async def run_sink(settings: Settings) -> None:
    """``speedlayer sink``: candle updates from the bus's candle topics (the Flink job's output)
    into the store, until SIGINT/SIGTERM; exits with an error when a batch cannot be stored past
    the retry deadline or the consumer dies, without committing that batch."""
    async with contextlib.AsyncExitStack() as stack:
        clock = SystemClock()
        bus = await stack.enter_async_context(open_bus(settings, initial_position="TRIM_HORIZON"))
        store = await stack.enter_async_context(open_store(settings, clock))
        sink = CandleSink(
            store, bus, [interval.name for interval in settings.interval_set],
            consumer=settings.sink_consumer, retry_deadline_s=settings.write_retry_deadline_s,
        )  # fmt: skip
        await sink.start()
        stack.push_async_callback(sink.stop)
        await stack.enter_async_context(health_file(settings.health_file, [sink]))
        log.info("sink: consumer %r, bus %s -> store %s", settings.sink_consumer, settings.bus,
                 settings.store)  # fmt: skip
        stopped = await wait_for_stop(sink.failed)
        log.info("sink: %d candles in, %d written", sink.candles_in, sink.candles_written)
        if not stopped:
            raise ServiceFailed(f"the sink stopped: {sink.failure}")


def run_api(settings: Settings, workers: int = 1) -> None:
    """``speedlayer api``: REST over the configured store; live feeds from a distributed bus.
    With ``workers`` > 1, that many processes (docs/deploy.md#several-api-workers), each
    building its app from the environment (:func:`api_app`)."""
    if workers > 1:
        serve_workers("launch.services:api_app", settings, workers, access_log=True)
        return
    uvicorn_server(create_app(settings), settings, access_log=True).run()


def api_app() -> FastAPI:
    """The app of one worker of ``speedlayer api --workers N``: settings from ``SPEEDLAYER_*``
    (where the command put its flags)."""
    tune_gc()
    return create_app(Settings())
