"""The ``speedlayer`` command: settings from flags over ``SPEEDLAYER_*`` variables, then one of
the services (``launch.services``) or a one-shot task (replay, candles, purge, init-aws)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec
from pydantic import ValidationError

from speedlayer import __version__
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.errors import SpeedlayerError
from speedlayer.models import CANDLE_FIELDS
from speedlayer.progress import Progress, progress_mode
from speedlayer.runtime import tune_gc
from speedlayer.symbols import parse_symbol
from speedlayer.timeparse import parse_time_ms

F = TypeVar("F", bound=Callable[..., Any])


def _settings(**overrides: Any) -> Settings:
    """Settings from flags (given ones only) over SPEEDLAYER_* variables over defaults."""
    given = {key: value for key, value in overrides.items() if value not in (None, (), [])}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise click.UsageError(f"invalid settings: {problems}") from None


# Per-request and per-connection chatter, shown only at debug level.
_CHATTY_LOGGERS = ("httpx", "speedlayer.simulator.ws", "ingest.polygon.ws", "uvicorn.access")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level.lower() != "debug":
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def quiet_option(fn: F) -> F:
    return click.option(
        "--quiet", "-q", is_flag=True, help="no progress and only warnings and errors on stderr"
    )(fn)


def db_option(fn: F) -> F:
    return click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        help="SQLite database (default: $SPEEDLAYER_DB or ./data/speedlayer.db)",
    )(fn)


def store_option(fn: F) -> F:
    return click.option(
        "--store",
        type=click.Choice(["sqlite", "dynamodb", "memory"]),
        help="candle store (default: $SPEEDLAYER_STORE or sqlite)",
    )(fn)


def bus_option(fn: F) -> F:
    return click.option(
        "--bus",
        type=click.Choice(["memory", "kinesis", "kafka"]),
        help="bus between the services (default: $SPEEDLAYER_BUS or memory)",
    )(fn)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except SpeedlayerError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="speedlayer")
def main() -> None:
    """speedlayer: real-time OHLCV candles from Polygon 1-minute bars."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@db_option
@store_option
@click.option("--batch-size", type=int, help="bars per batch (default 5000)")
@click.option("--retention", multiple=True, help="INTERVAL=DURATION override, e.g. '*=10y'")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@quiet_option
def replay(
    files: tuple[str, ...],
    db: Path | None,
    store: str | None,
    batch_size: int | None,
    retention: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Replay bars from FILES (CSV, Polygon AM JSON lines, REST aggregate responses) in order.

    Progress (bars read of those the file sizes suggest, accepted, rejected, bars/s, ETA) goes
    to stderr: a bar on a terminal, else a log line every SPEEDLAYER_STATS_INTERVAL_S."""
    settings = _settings(db=db, store=store, batch_size=batch_size, retention=list(retention))
    _setup_logging("warning" if quiet else settings.log_level)
    tune_gc()

    async def go() -> Any:
        from launch.replay import estimate_bars, replay_files
        from launch.wiring import build_pipeline
        from speedlayer.backends import open_store

        clock = SystemClock()
        progress = Progress(
            "replay",
            total=estimate_bars(files),
            unit="bars",
            mode=progress_mode(quiet),
            every_s=settings.stats_interval_s,
        )

        def on_batch(summary: Any, accepted: int) -> None:
            read = summary.bars_read
            progress.update(
                completed=read,
                total=max(progress.total or 0, read),
                accepted=accepted,
                rejected=sum(summary.rejected.values()),
            )

        async with open_store(settings, clock) as store:
            pipeline = build_pipeline(settings, store, clock)
            await pipeline.recover()
            with progress:
                summary = await replay_files(
                    files, pipeline, settings.batch_size, on_batch=on_batch
                )
                progress.update(total=summary.bars_read, accepted=summary.accepted)
            return summary

    summary = _run(go())
    if as_json:
        click.echo(msgspec.json.encode(summary.as_dict()).decode())
    else:
        for line in summary.lines():
            click.echo(line)


@main.command()
@click.argument("symbol")
@click.option("--interval", "-i", default="1m", show_default=True, help="e.g. 15m, 1h")
@click.option("--start", help="inclusive; epoch ms or ISO 8601")
@click.option("--end", help="exclusive; epoch ms or ISO 8601")
@click.option("--limit", type=click.IntRange(min=1), help="at most this many candles")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="draw them as a candlestick chart with volume into this file (.png, .svg, .pdf) "
    "instead of printing them; the forming candle is marked (the plot extra: matplotlib)",
)
@db_option
@store_option
def candles(
    symbol: str,
    interval: str,
    start: str | None,
    end: str | None,
    limit: int | None,
    fmt: str,
    plot_path: Path | None,
    db: Path | None,
    store: str | None,
) -> None:
    """Print the stored candles of SYMBOL, oldest first (reads only: creates no table), or with
    --plot draw them."""
    settings = _settings(db=db, store=store, aws_create_resources=False)
    try:
        symbol = parse_symbol(symbol, "SYMBOL")  # the stored key: X:BTCUSD -> BTC-USD, aapl -> AAPL
        iv = settings.interval_set.get(interval)
        start_ms = parse_time_ms(start, "--start") if start else None
        end_ms = parse_time_ms(end, "--end") if end else None
    except SpeedlayerError as exc:
        raise click.BadParameter(str(exc)) from None
    if settings.store == "sqlite" and not settings.db.exists():
        raise click.ClickException(f"no database at {settings.db}; run `speedlayer replay` first")

    async def go() -> Any:
        from speedlayer.backends import open_store

        async with open_store(settings, SystemClock()) as store:
            return await store.query(symbol, iv, start_ms, end_ms, limit, "asc")

    rows = _run(go())
    if plot_path is not None:
        from launch.candle_plot import plot_candles

        if not rows:
            raise click.ClickException(f"no stored candles of {symbol} at {iv.name} to plot")
        _run_sync(lambda: plot_candles(rows, plot_path))
        click.echo(f"wrote {plot_path} ({len(rows)} candles of {symbol} {iv.name})", err=True)
        return
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CANDLE_FIELDS)
    for candle in rows:
        writer.writerow(
            ""
            if value is None
            else ("true" if value is True else "false" if value is False else value)
            for value in msgspec.structs.astuple(candle)
        )


@main.command()
@db_option
@store_option
@bus_option
@click.option("--host", help="bind address (default 127.0.0.1)")
@click.option("--port", type=int, help="port (default 8000)")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="API processes sharing the port and the store (docs/deploy.md#several-api-workers)",
)
def api(
    db: Path | None,
    store: str | None,
    bus: str | None,
    host: str | None,
    port: int | None,
    workers: int,
) -> None:
    """Serve the REST API (and, with --bus kinesis|kafka, live candles from the bus)."""
    settings = _settings(db=db, store=store, bus=bus, host=host, port=port)
    _setup_logging(settings.log_level)
    from launch.services import run_api

    if workers > 1:  # each worker reads its settings from the environment: the flags go there
        flags = {"SPEEDLAYER_DB": db, "SPEEDLAYER_STORE": store, "SPEEDLAYER_BUS": bus}
        os.environ.update({name: str(value) for name, value in flags.items() if value})
    else:
        tune_gc()  # (each worker of several tunes its own: launch.services.api_app)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has shut down cleanly
        run_api(settings, workers)


@main.command()
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="CSV file to write")
@click.option("--symbols", type=click.IntRange(1, 20_000), default=20, show_default=True)
@click.option(
    "--days", type=float, default=2.0, show_default=True, help="history ending at this hour's start"
)
@click.option("--seed", type=int, default=7, show_default=True)
def synth(out: str, symbols: int, days: float, seed: int) -> None:
    """Write a synthetic 1-minute bar data set (random walks) ending at the current hour.

    The same seed within the same hour writes the same bars, so replaying it again is a no-op.
    """
    from ingest.synthetic import RandomWalk, symbol_names, write_csv

    minutes = max(1, int(days * 1440))
    now_ms = SystemClock().now_ms()
    start_ms = now_ms - now_ms % 3_600_000 - minutes * 60_000
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    count = write_csv(RandomWalk(symbol_names(symbols), seed).bars(start_ms, minutes), out)
    click.echo(f"wrote {count} bars for {symbols} symbols over {minutes} minutes to {out}")


def sim_options(fn: F) -> F:
    fn = click.option(
        "--symbols", type=int, help="simulated symbols (default 100; US market ~12000)"
    )(fn)
    fn = click.option(
        "--speed", type=float, help="simulated minutes per second (default 0 = real time)"
    )(fn)
    return click.option(
        "--replay",
        "replay_files",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False),
        help="replay FILE(s) instead of synthetic data (repeatable)",
    )(fn)


def history_option(fn: F) -> F:
    return click.option(
        "--history",
        type=click.IntRange(min=0),
        metavar="MINUTES",
        help="simulated minutes before start, served by REST "
        "(SPEEDLAYER_SIM_HISTORY_MIN, default 120)",
    )(fn)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8001, show_default=True)
@sim_options
@history_option
@click.option("--market", type=click.Choice(["stocks", "crypto", "forex"]), default="stocks")
@click.option("--api-key", help="accept only this key (default: any key)")
@click.option("--disconnect-every", type=float, help="fault: drop connections every N seconds")
@click.option("--disconnect-code", type=int, default=1011, show_default=True)
@click.option("--duplicate-rate", type=float, default=0.0, help="fault: fraction of bars resent")
@click.option("--correction-rate", type=float, default=0.0, help="fault: fraction corrected later")
@click.option("--out-of-order-rate", type=float, default=0.0, help="fault: fraction delayed")
@click.option("--malformed-rate", type=float, default=0.0, help="fault: frames followed by garbage")
@click.option("--auth-fail", is_flag=True, help="fault: reject every auth")
@click.option("--max-connections", type=int, help="fault: cap simultaneous connections")
@click.option("--stall-after", type=float, help="fault: stop answering after N seconds")
def simulate(
    host: str,
    port: int,
    symbols: int | None,
    speed: float | None,
    replay_files: tuple[str, ...],
    history: int | None,
    market: str,
    api_key: str | None,
    disconnect_every: float | None,
    disconnect_code: int,
    duplicate_rate: float,
    correction_rate: float,
    out_of_order_rate: float,
    malformed_rate: float,
    auth_fail: bool,
    max_connections: int | None,
    stall_after: float | None,
) -> None:
    """Serve the Polygon protocol (WebSocket + REST aggregates) on simulated or replayed data."""
    settings = _settings(
        sim_symbols=symbols,
        sim_speed=speed,
        sim_replay=list(replay_files),
        sim_history_min=history,
    )
    _setup_logging(settings.log_level)
    from ingest.simulator import FaultConfig, PolygonSimulator, SimulatorConfig

    config = SimulatorConfig(
        host=host,
        port=port,
        symbols=settings.sim_symbols,
        speed=settings.sim_speed,
        replay=list(settings.sim_replay),
        history_minutes=settings.sim_history_min,
        api_key=api_key,
        market=market,
        faults=FaultConfig(
            disconnect_every_s=disconnect_every,
            disconnect_code=disconnect_code,
            duplicate_rate=duplicate_rate,
            correction_rate=correction_rate,
            out_of_order_rate=out_of_order_rate,
            malformed_rate=malformed_rate,
            auth_fail=auth_fail,
            max_connections=max_connections,
            stall_after_s=stall_after,
        ),
    )

    async def go() -> None:
        async with PolygonSimulator(config) as simulator:
            click.echo(
                f"Polygon simulator: WebSocket {simulator.ws_url}/{market}, "
                f"REST {simulator.rest_url}/v2/aggs/..."
            )
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


def market_option(fn: F) -> F:
    return click.option(
        "--market",
        type=click.Choice(["stocks", "crypto", "forex", "options", "indices"]),
        help="the Polygon market (cluster) fed from: SPEEDLAYER_POLYGON_MARKET, default stocks; "
        "the simulator serves stocks, crypto and forex (one market per process, "
        "docs/design.md#symbols)",
    )(fn)


def source_option(fn: F) -> F:
    return click.option(
        "--source",
        type=click.Choice(["auto", "simulator", "polygon"]),
        help="feed (default auto: polygon when POLYGON_API_KEY is set, else the simulator)",
    )(fn)


@main.command()
@db_option
@store_option
@bus_option
@click.option("--host", help="API bind address (default 127.0.0.1)")
@click.option("--port", type=int, help="API port (default 8000)")
@source_option
@market_option
@sim_options
@history_option
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="API processes beside the pipeline's (0: the API runs in the pipeline's process; "
    "docs/design.md#api-processes)",
)
def up(
    db: Path | None,
    store: str | None,
    bus: str | None,
    host: str | None,
    port: int | None,
    source: str | None,
    market: str | None,
    symbols: int | None,
    speed: float | None,
    replay_files: tuple[str, ...],
    history: int | None,
    workers: int,
) -> None:
    """Run feed, resampler, store and the API: in one process, or with --workers N the API in
    N processes of its own that read the pipeline's candles over a local socket.

    --history also sets the start-up backfill (SPEEDLAYER_BACKFILL_LOOKBACK_MIN), so the
    whole simulated history reaches the store, as `make run HISTORY=` does."""
    settings = _settings(
        db=db,
        store=store,
        bus=bus,
        host=host,
        port=port,
        source=source,
        polygon_market=market,
        sim_symbols=symbols,
        sim_speed=speed,
        sim_replay=list(replay_files),
        sim_history_min=history,
        backfill_lookback_min=history,
    )
    _setup_logging(settings.log_level)
    tune_gc()
    from launch.services import run_split_stack, run_stack

    with contextlib.suppress(KeyboardInterrupt):
        _run(run_split_stack(settings, workers) if workers else run_stack(settings))


@main.command("lambda-run")
@click.argument("function")
@click.option("--stream", "streams", multiple=True, required=True, help="Kinesis stream (repeat)")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option(
    "--starting-position", type=click.Choice(["TRIM_HORIZON", "LATEST"]), default="TRIM_HORIZON"
)
@click.option("--max-retries", type=click.IntRange(min=0), help="default: retry until done")
@click.option("--bisect-on-error", is_flag=True, help="halve the batch on each function error")
@click.option(
    "--consumer",
    help="the mapping's identity, naming its checkpoints (lease lambda:CONSUMER/STREAM); "
    "default: the handler's module:function",
)
@click.option(
    "--kinesis-endpoint-url",
    help="the runner's Kinesis, e.g. http://127.0.0.1:4568 (kinesalite); default "
    "$SPEEDLAYER_KINESIS_ENDPOINT_URL, else $SPEEDLAYER_AWS_ENDPOINT_URL, else AWS",
)
@click.option(
    "--dynamodb-endpoint-url",
    help="the runner's checkpoint table, e.g. http://127.0.0.1:4567; default "
    "$SPEEDLAYER_DYNAMODB_ENDPOINT_URL, else $SPEEDLAYER_AWS_ENDPOINT_URL, else AWS",
)
@click.option("--until-idle", is_flag=True, help="exit once every shard is read to its end")
def lambda_run(
    function: str,
    streams: tuple[str, ...],
    batch_size: int,
    starting_position: str,
    max_retries: int | None,
    bisect_on_error: bool,
    consumer: str | None,
    kinesis_endpoint_url: str | None,
    dynamodb_endpoint_url: str | None,
    until_idle: bool,
) -> None:
    """Feed a Lambda handler (kinesis_to_dynamodb, kinesis_to_kafka, or module:function) from
    Kinesis streams like an event source mapping. The runner and the handler read the same
    SPEEDLAYER_* settings as the services (endpoints, region, stream and table prefixes, the
    checkpoint table, SPEEDLAYER_AWS_CREATE_RESOURCES)."""
    settings = _settings()
    _setup_logging(settings.log_level)
    from processors.lambda_runner import serve

    with contextlib.suppress(KeyboardInterrupt):
        _run(
            serve(
                function,
                streams,
                settings=settings,
                consumer=consumer,
                kinesis_endpoint_url=kinesis_endpoint_url,
                dynamodb_endpoint_url=dynamodb_endpoint_url,
                until_idle=until_idle,
                batch_size=batch_size,
                starting_position=starting_position,
                max_retries=max_retries,
                bisect_on_error=bisect_on_error,
            )
        )


@main.command()
@db_option
@store_option
def purge(db: Path | None, store: str | None) -> None:
    """Delete expired candles now (the API also purges periodically); creates no table."""
    settings = _settings(db=db, store=store, aws_create_resources=False)

    async def go() -> int:
        from speedlayer.backends import open_store

        async with open_store(settings, SystemClock()) as store:
            return await store.purge_expired()

    click.echo(f"purged {_run(go())} expired candles")


def _simulator_urls(address: str) -> tuple[str, str]:
    """(ws_url, rest_url) of a Polygon-protocol server given as host:port or a URL."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "http", address
    secure = scheme in ("https", "wss")
    if scheme not in ("http", "https", "ws", "wss") or not rest.strip("/"):
        raise click.BadParameter(f"{address!r}: expected host:port or a ws(s):// / http(s):// URL")
    host = rest.strip("/")
    return f"{'wss' if secure else 'ws'}://{host}", f"{'https' if secure else 'http'}://{host}"


@main.command()
@bus_option
@source_option
@click.option(
    "--simulator",
    "simulator_url",
    help="ingest from a running `speedlayer simulate` (host:port or URL) instead",
)
@market_option
@sim_options
def ingest(
    bus: str | None,
    source: str | None,
    simulator_url: str | None,
    market: str | None,
    symbols: int | None,
    speed: float | None,
    replay_files: tuple[str, ...],
) -> None:
    """Run the feed alone: Polygon (or a simulator) -> 1-minute bars on the raw topic. One
    market per process: run one `ingest --market M` per market onto the same bus."""
    given: dict[str, Any] = dict(
        bus=bus,
        source=source,
        polygon_market=market,
        sim_symbols=symbols,
        sim_speed=speed,
        sim_replay=list(replay_files),
    )
    if simulator_url:
        ws_url, rest_url = _simulator_urls(simulator_url)
        given.update(
            source="polygon",
            polygon_ws_url=ws_url,
            polygon_rest_url=rest_url,
            polygon_api_key="simulator",  # the simulator accepts any key
        )
    settings = _settings(**given)
    if settings.bus == "memory":
        raise click.UsageError("`ingest` alone needs a bus other processes can read: --bus kinesis")
    _setup_logging(settings.log_level)
    from launch.services import run_ingest

    with contextlib.suppress(KeyboardInterrupt):
        _run(run_ingest(settings))


@main.command()
@db_option
@store_option
@bus_option
@click.option("--consumer", help="durable consumer name (default speedlayer-processor)")
def process(db: Path | None, store: str | None, bus: str | None, consumer: str | None) -> None:
    """Run the resampler alone: raw bars from the bus -> candles in the store and on the bus."""
    settings = _settings(db=db, store=store, bus=bus, process_consumer=consumer)
    if settings.bus == "memory":
        raise click.UsageError("`process` alone needs a bus other processes write: --bus kinesis")
    _setup_logging(settings.log_level)
    tune_gc()
    from launch.services import run_process

    with contextlib.suppress(KeyboardInterrupt):
        _run(run_process(settings))


@main.command()
@db_option
@store_option
@bus_option
@click.option("--consumer", help="durable consumer name (default speedlayer-sink)")
def sink(db: Path | None, store: str | None, bus: str | None, consumer: str | None) -> None:
    """Store the candles another process publishes (the Flink job): candle topics -> store."""
    settings = _settings(db=db, store=store, bus=bus, sink_consumer=consumer)
    if settings.bus == "memory":
        raise click.UsageError("`sink` reads what other processes publish: --bus kafka or kinesis")
    _setup_logging(settings.log_level)
    from launch.services import run_sink

    with contextlib.suppress(KeyboardInterrupt):
        _run(run_sink(settings))


@main.command("init-aws")
@quiet_option
def init_aws(quiet: bool) -> None:
    """Create the DynamoDB tables (TTL on), the checkpoint table and the Kinesis streams if
    missing, and wait until they are ACTIVE (idempotent). Progress on stderr."""
    settings = _settings()
    _setup_logging("warning" if quiet else settings.log_level)
    from speedlayer.backends import init_aws as create

    progress = Progress(
        "init-aws",
        unit="resources",
        mode=progress_mode(quiet),
        every_s=settings.stats_interval_s,
        rate=False,
    )

    def step(what: str, ready: int, total: int) -> None:
        progress.update(completed=ready, total=total, status=what)

    with progress:
        resources = _run(create(settings, SystemClock(), step))
    for line in resources.lines():
        click.echo(line)


@main.command()
@click.option("--symbols", type=click.IntRange(1, 100_000), required=True, help="symbols fed")
@click.option(
    "--market",
    type=click.Choice(["stocks", "stocks-extended", "crypto", "forex"]),
    default="stocks",
    show_default=True,
    help="the minutes with bars: the regular session, pre/after market too, 24/7, 24/5",
)
@click.option(
    "--kinesis",
    "kinesis_mode",
    type=click.Choice(["provisioned", "on-demand"]),
    default="provisioned",
    show_default=True,
)
@click.option(
    "--fill",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="share of the minutes in which a symbol has a bar",
)
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="price list (default launch/prices.toml)",
)
@click.option("--json", "as_json", is_flag=True, help="print the estimate as JSON")
def cost(
    symbols: int, market: str, kinesis_mode: str, fill: float, prices: Path | None, as_json: bool
) -> None:
    """Estimate the monthly AWS cost of the deployed shape (docs/cost.md) from this project's
    measured request counts and a dated price list."""
    from launch.cost import PRICES, estimate, load_prices, table

    result = estimate(
        symbols,
        market,
        kinesis_mode=kinesis_mode,  # type: ignore[arg-type]
        fill=fill,
        prices=load_prices(prices or PRICES),
    )
    if as_json:
        click.echo(msgspec.json.encode(result.as_dict()).decode())
        return
    click.echo(f"prices: {result.prices_as_of} ({prices or PRICES}); Kinesis {kinesis_mode}")
    for line in table([result]):
        click.echo(line)


# -- the Flink SQL job (flink_sql/, docs/flink.md) ---------------------------------------------


def flink_job_options(fn: F) -> F:
    for option in reversed(
        [
            click.option(
                "--env", "environment", type=click.Choice(["kafka", "kinesis", "files"]),
                default="kafka", show_default=True, help="where bars come from and candles go",
            ),
            click.option("--input", "input_path", type=click.Path(dir_okay=False),
                         help="files: JSON lines of bar records"),
            click.option("--output", "output_path", type=click.Path(dir_okay=False),
                         help="files: candle updates as JSON lines"),
            click.option("--bounded", is_flag=True, default=None,
                         help="kafka: stop at the offsets present at start"),
            click.option("--parallelism", type=click.IntRange(min=1),
                         help="default $SPEEDLAYER_FLINK_PARALLELISM or 1"),
            click.option("--fresh", is_flag=True,
                         help="kafka, kinesis: start over, not from the newest checkpoint"),
        ]
    ):  # fmt: skip
        fn = option(fn)
    return fn


def _flink_spec(work_dir: Path, cluster: bool = False, **options: Any) -> tuple[Settings, Any]:
    from launch.flink import job_options, local_spec

    resume = not options.pop("fresh", False)
    settings = _settings(
        flink_parallelism=options.pop("parallelism"),
        flink_checkpoint_dir=options.pop("checkpoint_dir", None),
    )
    _setup_logging(settings.log_level)
    output = options.pop("output_path")
    if options["environment"] == "files" and not (options["input_path"] and output):
        raise click.UsageError("--env files needs --input and --output")
    try:
        return settings, local_spec(
            settings, job_options(settings, **options), work_dir, resume=resume, cluster=cluster
        )
    except SpeedlayerError as exc:
        raise click.UsageError(str(exc)) from None


def _work_dir(stack: contextlib.ExitStack, work_dir: Path | None) -> Path:
    """``work_dir`` (absolute: the job runs in it, and the spec names files in it), or a
    temporary directory removed when ``stack`` closes."""
    if work_dir is not None:
        return work_dir.resolve()
    import tempfile

    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="speedlayer-flink-")))


@main.group()
def flink() -> None:
    """The Flink SQL job that resamples at scale: print its SQL and plan, or run it."""


@flink.command("plan")
@flink_job_options
@click.option("--sql-only", is_flag=True, help="print the SQL without asking Flink for the plan")
@click.option(
    "--cluster",
    is_flag=True,
    help="for a Flink cluster's SQL client (sql-client.sh -f): without the local mini-cluster's "
    "loopback settings; the connector and function jars are on the cluster's classpath "
    "(/opt/flink/lib of infra/flink/Dockerfile)",
)
def flink_plan(sql_only: bool, cluster: bool, **options: Any) -> None:
    """Print the job's SQL (settings, tables, views, inserts) and Flink's optimised plan."""
    from launch.flink import explain

    with contextlib.ExitStack() as stack:
        work_dir = _work_dir(stack, None)
        settings, spec = _flink_spec(work_dir, cluster=cluster, **options)
        click.echo(spec.sql())
        if not sql_only:
            click.echo(_run_sync(lambda: explain(settings, spec, work_dir)))


@flink.command("run")
@flink_job_options
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="temporary files of the job (default: a new temporary directory)",
)
@quiet_option
def flink_run(work_dir: Path | None, quiet: bool, **options: Any) -> None:
    """Run the job on a local mini-cluster: until the input ends (--env files, --bounded) or
    until stopped (Ctrl-C cancels it). Progress events go to stderr as JSON lines (with --env
    files also the first output's); on a terminal as a status line instead."""
    from launch.flink import changelog_to_records, echo_event, run_job, watch_first_output

    output = options["output_path"]
    mode = progress_mode(quiet)
    progress = Progress("flink", mode=mode, rate=False, counts=False)

    def on_event(event: dict[str, object]) -> None:
        if mode == "log":
            echo_event(event)
        elif mode == "bar":  # the job's state; the first output's time stays shown
            after = f"after {event['seconds']} s" if "seconds" in event else ""
            if event["event"] == "first_output":
                progress.update(first_output=after)
                return
            fields: dict[str, Any] = {k: event[k] for k in ("job_id", "records") if k in event}
            progress.update(status=f"{event['event']} {after}".strip(), **fields)

    with contextlib.ExitStack() as stack:
        work = _work_dir(stack, work_dir)
        settings, spec = _flink_spec(work, **options)
        stack.enter_context(progress)
        progress.update(status="starting")
        if options["environment"] == "files":
            stack.enter_context(watch_first_output(work / "changelog", on_event))
        with contextlib.suppress(KeyboardInterrupt):
            _run_sync(lambda: run_job(settings, spec, work, on_event))
            if options["environment"] == "files":
                records = changelog_to_records(work / "changelog", Path(output))
                on_event({"event": "written", "records": records, "output": output})


@flink.command("package")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("build/speedlayer-flink.zip"),
    show_default=True,
    help="the application zip to write",
)
@click.option(
    "--env", "environment", type=click.Choice(["kafka", "kinesis"]), default="kafka",
    show_default=True, help="where bars come from and candles go (Kafka or Amazon MSK; Kinesis)",
)  # fmt: skip
def flink_package(out: Path, environment: str) -> None:
    """Build the job as a zip for Amazon Managed Service for Apache Flink (runtime FLINK-2_2):
    the main file, the rendered job, the connector jar and an example of the application's
    property groups, which are printed (JSON) on stdout."""
    import json

    from launch.flink_package import build_package

    settings = _settings()
    _setup_logging(settings.log_level)
    package = _run_sync(lambda: build_package(settings, out, environment))
    for warning in package.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out} ({out.stat().st_size} bytes; jar lib/{package.jar})", err=True)
    click.echo(json.dumps(package.properties, indent=2))


def _run_sync(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except SpeedlayerError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
