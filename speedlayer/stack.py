"""`speedlayer up`: the whole embedded stack in one process.

Feed (the Polygon simulator, or Polygon itself when a key is configured) -> raw bus -> pipeline
(resampler -> SQLite store -> candle bus) -> API. Like the CLI, this module is part of the
composition root and is the only other core module that imports the services.
"""

from __future__ import annotations

import contextlib
import logging

from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import Clock, SystemClock
from speedlayer.config import Settings

log = logging.getLogger(__name__)


async def run_stack(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app
    from ingest.polygon import PolygonConfig, PolygonFeed
    from processors.pipeline import CandlePipeline
    from processors.resampler import Resampler
    from processors.runner import PipelineRunner
    from speedlayer.store.sqlite import SQLiteStore

    async with contextlib.AsyncExitStack() as stack:
        clock: Clock = SystemClock()
        api_key = settings.polygon_api_key.get_secret_value() if settings.polygon_api_key else ""
        ws_url, rest_url = settings.polygon_ws_url, settings.polygon_rest_url
        market, symbols = settings.polygon_market, list(settings.polygon_symbols)
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
                    )
                )
            )
            clock = simulator.clock
            api_key, ws_url, rest_url = "simulator", simulator.ws_url, simulator.rest_url
            market, symbols = "stocks", ["*"]
            backfill_symbols = list(simulator.symbols)
            log.info("feed: Polygon simulator at %s (%d symbols)", ws_url, settings.sim_symbols)
        else:
            backfill_symbols = []
            log.info("feed: Polygon at %s/%s", ws_url, market)

        bus = await stack.enter_async_context(MemoryBus())
        store = await stack.enter_async_context(
            SQLiteStore(settings.db, settings.interval_set, clock)
        )
        resampler = Resampler(
            settings.interval_set,
            clock,
            grace_ms=settings.grace_ms,
            lateness_ms=settings.lateness_ms,
        )
        if not backfill_symbols:  # after a restart: history of the symbols already stored
            backfill_symbols = await store.symbols()
        runner = PipelineRunner(
            CandlePipeline(resampler, store), bus, clock, stats_every_s=settings.stats_interval_s
        )
        await runner.start()
        stack.push_async_callback(runner.stop)

        feed = PolygonFeed(
            PolygonConfig(
                api_key=api_key,
                ws_url=ws_url,
                rest_url=rest_url,
                market=market,
                symbols=symbols,
                backfill_lookback_min=settings.backfill_lookback_min,
                backfill_symbols=backfill_symbols,
            ),
            bus,
            clock,
        )
        await feed.start()
        stack.push_async_callback(feed.stop)

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
