"""The one place that builds speedlayer's parts from settings and connects them.

Every way of running speedlayer (the CLI's services, the benchmarks, the tests) builds its
pipeline, feed and API through these functions, so there is one wiring to read and to change:

* :func:`build_pipeline` / :func:`start_runner`: resampler -> pipeline -> runner on a bus;
* :func:`start_source` / :func:`start_feed`: the Polygon simulator in process (or Polygon, or
  any Polygon-protocol server) and the feed that puts its bars on the raw topic;
* :func:`embedded_stack`: all of it over the configured store and bus, plus the API app, as
  ``speedlayer up`` runs it; :func:`serve`: the app on uvicorn.

See docs/design.md#data-path for where a bar goes from the WebSocket to a subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from ingest.polygon import PolygonConfig, PolygonFeed
from ingest.simulator import PolygonSimulator, SimulatorConfig
from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from processors.runner import PipelineRunner
from speedlayer.backends import open_bus, open_store
from speedlayer.bus.base import Bus, InitialPosition
from speedlayer.clock import Clock, SystemClock
from speedlayer.config import Settings
from speedlayer.health import HealthCheck
from speedlayer.store.base import Store

log = logging.getLogger(__name__)


# -- the pipeline --------------------------------------------------------------------------------


def build_resampler(settings: Settings, clock: Clock) -> Resampler:
    return Resampler(
        settings.interval_set, clock, grace_ms=settings.grace_ms, lateness_ms=settings.lateness_ms
    )


def build_pipeline(settings: Settings, store: Store, clock: Clock) -> CandlePipeline:
    """Resampler -> store (and, once a runner owns it, -> the candle topics)."""
    return CandlePipeline(
        build_resampler(settings, clock), store, retry_deadline_s=settings.write_retry_deadline_s
    )


async def start_runner(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    store: Store,
    bus: Bus,
    clock: Clock,
    *,
    tick_s: float = 1.0,
) -> PipelineRunner:
    """The pipeline fed from the raw topic by a runner, started; stopped when ``stack`` closes."""
    runner = PipelineRunner(
        build_pipeline(settings, store, clock),
        bus,
        clock,
        stats_every_s=settings.stats_interval_s,
        consumer=settings.process_consumer,
        tick_s=tick_s,
    )
    await runner.start()
    stack.push_async_callback(runner.stop)
    return runner


# -- the feed ------------------------------------------------------------------------------------


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
    simulator: PolygonSimulator | None = None


async def start_source(stack: contextlib.AsyncExitStack, settings: Settings) -> FeedTarget:
    """Start the in-process simulator when the settings select it; else describe Polygon."""
    if settings.live_source == "simulator":
        simulator = await stack.enter_async_context(
            PolygonSimulator(
                SimulatorConfig(
                    host="127.0.0.1",
                    port=settings.sim_port,
                    symbols=settings.sim_symbols,
                    speed=settings.sim_speed,
                    replay=list(settings.sim_replay),
                    history_minutes=settings.sim_history_min,
                    market=settings.polygon_market,
                )
            )
        )
        log.info("feed: Polygon simulator at %s/%s (%d symbols)", simulator.ws_url,
                 settings.polygon_market, len(simulator.symbols))  # fmt: skip
        return FeedTarget(
            clock=simulator.clock,
            api_key="simulator",
            ws_url=simulator.ws_url,
            rest_url=simulator.rest_url,
            market=settings.polygon_market,
            symbols=["*"],
            backfill_symbols=list(simulator.symbols),
            simulator=simulator,
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


def feed_config(settings: Settings, target: FeedTarget) -> PolygonConfig:
    return PolygonConfig(
        api_key=target.api_key,
        ws_url=target.ws_url,
        rest_url=target.rest_url,
        market=target.market,
        symbols=target.symbols,
        backfill_lookback_min=settings.backfill_lookback_min,
        backfill_symbols=target.backfill_symbols,
    )


async def start_feed(
    stack: contextlib.AsyncExitStack, settings: Settings, target: FeedTarget, bus: Bus
) -> PolygonFeed:
    """The feed from ``target`` onto the raw topic, started; stopped when ``stack`` closes."""
    feed = PolygonFeed(feed_config(settings, target), bus, target.clock)
    await feed.start()
    stack.push_async_callback(feed.stop)
    return feed


# -- the embedded stack and the API server --------------------------------------------------------


@dataclass
class EmbeddedStack:
    """What ``speedlayer up`` runs: feed -> bus -> pipeline -> store, and the API over them."""

    settings: Settings
    target: FeedTarget
    clock: Clock
    bus: Bus
    store: Store
    runner: PipelineRunner
    feed: PolygonFeed
    app: FastAPI

    @property
    def simulator(self) -> PolygonSimulator | None:
        return self.target.simulator

    def failure(self) -> BaseException | None:
        """Why the stack must stop: the runner or the feed failed for good (else None)."""
        return self.runner.failure or self.feed.failed

    async def wait_failed(self) -> None:
        """Return once :meth:`failure` is set."""
        while True:
            await asyncio.sleep(0.2)
            if self.failure() is not None:
                return


@contextlib.asynccontextmanager
async def embedded_stack(
    settings: Settings,
    *,
    initial_position: InitialPosition = "LATEST",
    tick_s: float = 1.0,
) -> AsyncIterator[EmbeddedStack]:
    """Source, bus, store, runner, feed and the API app (not served: see :func:`serve`), over
    the configured backends; all stopped in reverse order on exit, even if cancelled."""
    stack = contextlib.AsyncExitStack()
    try:
        target = await start_source(stack, settings)
        clock = target.clock
        bus = await stack.enter_async_context(open_bus(settings, initial_position=initial_position))
        store = await stack.enter_async_context(open_store(settings, clock))
        if not target.backfill_symbols:  # after a restart: history of the symbols already stored
            target.backfill_symbols = await store.symbols()
        runner = await start_runner(stack, settings, store, bus, clock, tick_s=tick_s)
        feed = await start_feed(stack, settings, target, bus)
        log.info("backends: bus %s, store %s", settings.bus, settings.store)
        app = create_app(
            settings, store=store, clock=clock, bus=bus, pipeline=runner, health=[feed]
        )
        yield EmbeddedStack(settings, target, clock, bus, store, runner, feed, app)
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


def uvicorn_server(app: FastAPI, settings: Settings, **config: Any) -> uvicorn.Server:
    """A uvicorn server for ``app`` at the settings' host and port and log level."""
    level = settings.log_level.lower()
    options: dict[str, Any] = dict(
        host=settings.host, port=settings.port, log_level=level, access_log=level == "debug"
    )
    options.update(config)
    return uvicorn.Server(uvicorn.Config(app, **options))


@contextlib.asynccontextmanager
async def serve(app: FastAPI, **config: Any) -> AsyncIterator[int]:
    """Serve ``app`` on uvicorn on a free loopback port in this event loop, for benchmarks and
    tests; yields the port once the server accepts connections, and shuts it down on exit."""
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says it is TCP (with socket.socket()'s proto 0, every response waited ~40 ms for
    # the peer's delayed ACK).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        await task
        listener.close()


def serve_workers(factory: str, settings: Settings, workers: int, **config: Any) -> None:
    """Serve the app that ``factory`` (``"module:function"``) builds in each of ``workers``
    uvicorn worker processes sharing one listening socket at the settings' host and port, under
    uvicorn's supervisor (it restarts a worker that dies), until it is told to stop. Each worker
    builds its own app: settings from the environment, its own store connections and live hub.

    The listening socket is uvicorn's own, rebuilt so it says it is TCP: uvicorn binds it with
    proto 0, which accepted connections inherit, and asyncio then leaves Nagle's algorithm on,
    so every keep-alive response after the first waits ~40 ms for the client's delayed ACK
    (uvicorn issue 3149: ``uvicorn --workers N`` serves 0.2 of one worker's requests/s here).
    """
    from uvicorn.supervisors import Multiprocess

    level = settings.log_level.lower()
    options: dict[str, Any] = dict(
        host=settings.host, port=settings.port, log_level=level, access_log=level == "debug"
    )
    options.update(config)
    cfg = uvicorn.Config(factory, factory=True, workers=workers, **options)
    bound = cfg.bind_socket()
    listener = socket.socket(fileno=bound.detach())  # family, type and proto read from the fd
    Multiprocess(cfg, sockets=[listener]).run()


def health_of(parts: Sequence[HealthCheck]) -> list[str]:
    """The problems the parts report (empty when all are well)."""
    return [problem for part in parts if (problem := part.problem()) is not None]
