"""The FastAPI application: settings validated once, resources built in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api import (
    dashboard,
    docs,
    errors,
    metrics,
    polygon_compat,
    polygon_ws,
    security,
    sse,
    udf,
    ws,
)
from api.deps import Resources
from api.head import HeadAsGetMiddleware
from api.live.hub import CandleHub
from api.page_cache import PageCache
from api.routes import router
from speedlayer import __version__
from speedlayer.bus.base import Bus
from speedlayer.clock import Clock, SystemClock
from speedlayer.config import Settings
from speedlayer.health import HealthCheck, PipelineView
from speedlayer.runtime import trim_memory
from speedlayer.store.base import Store

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    store: Store | None = None,
    clock: Clock | None = None,
    bus: Bus | None = None,
    pipeline: PipelineView | None = None,
    health: Sequence[HealthCheck] = (),
) -> FastAPI:
    """Build the app. Without ``store``, the lifespan opens (and closes) the configured store
    (``settings.store``: SQLite by default, or DynamoDB).

    ``bus`` carries candle updates for the live feeds (``speedlayer up`` passes its own bus).
    Without one, the lifespan opens the configured bus when it is a distributed one
    (``settings.bus`` kinesis or kafka: ``speedlayer api`` beside a separate ``speedlayer
    process``); the in-process bus of a lone API carries nothing, so then nothing is live.
    ``pipeline`` is the in-process pipeline whose throughput and lag /metrics report.
    ``/readyz`` is ready only while none of the hub, ``pipeline`` and each part in ``health``
    (e.g. the feed) reports a problem, besides the store and bus answering.
    """
    settings = settings or Settings()
    relayed: Bus | None = None
    if bus is None and settings.bus == "relay":
        # an API process of `speedlayer up --workers N`: candles and the market clock come from
        # the pipeline's process (speedlayer/bus/relay.py); the bus is started by the lifespan
        from speedlayer.backends import make_bus

        relayed = make_bus(settings)
        clock = clock or getattr(relayed, "clock", None)
    clock = clock or SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn has configured its log handlers by now: no handler may print an API key
        security.install_log_redaction(k.get_secret_value() for k in settings.api_keys)
        async with contextlib.AsyncExitStack() as stack:
            active = store
            if active is None:
                from speedlayer.backends import open_store

                active = await stack.enter_async_context(open_store(settings, clock))
            live = bus
            if relayed is not None:
                live = await stack.enter_async_context(relayed)
            elif live is None and settings.bus != "memory":
                from speedlayer.backends import open_bus

                live = await stack.enter_async_context(open_bus(settings))
            hub = CandleHub(settings, active, live)  # live only with a bus; snapshots always
            await hub.start()
            stack.push_async_callback(hub.stop)
            app.state.resources = Resources(
                settings=settings,
                store=active,
                clock=clock,
                hub=hub,
                bus=live,
                pipeline=pipeline,
                health=tuple(health),
                pages=PageCache(int(settings.page_cache_mb * 2**20)),
            )
            chores = [
                asyncio.create_task(
                    _periodically("purging expired candles", settings.purge_interval_s,
                                  _purger(active)),
                    name="purge",
                )
            ]  # fmt: skip
            if settings.memory_trim_s > 0:
                chores.append(asyncio.create_task(
                    _periodically("trimming the heap", settings.memory_trim_s,
                                  lambda: asyncio.to_thread(trim_memory), first=False),
                    name="memory-trim",
                ))  # fmt: skip
            try:
                yield
            finally:
                for chore in chores:
                    chore.cancel()
                for chore in chores:
                    with contextlib.suppress(asyncio.CancelledError):
                        await chore

    app = FastAPI(
        title="speedlayer",
        version=__version__,
        description=(
            "Real-time OHLCV candles resampled from Polygon 1-minute aggregates. Candles are "
            "keyed by (symbol, interval, bucket start in epoch ms UTC); see /intervals for the "
            "intervals and their retention."
        ),
        lifespan=lifespan,
        # operationId = the route's name (get_candles, not get_candles_candles__symbol__get):
        # what generated clients call their functions (README#client-sdks)
        generate_unique_id_function=_operation_id,
        docs_url=None,  # served by docs.install_docs_page with local assets (works offline)
        redoc_url=None,  # ReDoc would load its bundle from a CDN
    )
    errors.install(app)
    app.include_router(router)
    app.include_router(ws.router)
    app.include_router(sse.router)
    app.include_router(dashboard.router)  # the live dashboard at /
    app.include_router(polygon_compat.router)  # Polygon's /v2/aggs/... on our candles
    app.include_router(udf.router)  # a TradingView UDF datafeed at /udf
    app.include_router(polygon_ws.router)  # Polygon's WebSocket protocol at /polygon/{market}
    # Middleware order, outermost first: metrics (sees every response), CORS, API-key check,
    # WebSocket origin check, HEAD as GET.
    app.add_middleware(HeadAsGetMiddleware)
    security.install(
        app,
        settings,
        public_paths=dashboard.PUBLIC_PATHS | polygon_ws.PATHS,  # that key is in its auth
        rejections={polygon_compat.PATH_PREFIX: polygon_compat.auth_rejection},
    )
    metrics.install(app)
    docs.install_openapi(app, settings)
    docs.install_docs_page(app)
    return app


def _operation_id(route: APIRoute) -> str:
    return route.name


def _purger(store: Store) -> Callable[[], Awaitable[None]]:
    """The purge chore. Candles that have expired since the last purge are routine; but what
    the first purge finds was written past its retention or aged while nothing ran, which is
    what a replay of old history without ``SPEEDLAYER_RETENTION`` leaves: say so loudly."""
    first = True

    async def purge() -> None:
        nonlocal first
        purged = await store.purge_expired()
        if first and purged:
            log.warning(
                "purged %d candles past their retention at start-up: history older than the "
                "retention of its interval is never served (see GET /intervals); to keep it, set "
                "SPEEDLAYER_RETENTION (e.g. '*=10y') on the services that write it and replay "
                "it again", purged,
            )  # fmt: skip
        elif purged:
            log.info("purged %d expired candles", purged)
        first = False

    return purge


async def _periodically(
    what: str, every_s: float, work: Callable[[], Awaitable[object]], *, first: bool = True
) -> None:
    """Run ``work`` every ``every_s`` seconds (at once too with ``first``). A failure is logged
    and retried the next round: housekeeping must never take the API down."""
    if not first:
        await asyncio.sleep(every_s)
    while True:
        try:
            await work()
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(every_s)
