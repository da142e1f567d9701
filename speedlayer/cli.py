"""The ``speedlayer`` command.

This is the composition root: it builds settings, stores and services, so it is the one module of
the core package that imports the services (lazily, inside each command).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
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
from speedlayer.timeparse import parse_time_ms

F = TypeVar("F", bound=Callable[..., Any])


def _settings(**overrides: Any) -> Settings:
    """Settings from flags (given ones only) over SPEEDLAYER_* variables over defaults."""
    given = {key: value for key, value in overrides.items() if value not in (None, ())}
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


def db_option(fn: F) -> F:
    return click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        help="SQLite database (default: $SPEEDLAYER_DB or ./data/speedlayer.db)",
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
@click.option("--batch-size", type=int, help="bars per batch (default 5000)")
@click.option("--retention", multiple=True, help="INTERVAL=DURATION override, e.g. '*=10y'")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def replay(
    files: tuple[str, ...],
    db: Path | None,
    batch_size: int | None,
    retention: tuple[str, ...],
    as_json: bool,
) -> None:
    """Replay bars from FILES (CSV, Polygon AM JSON lines, REST aggregate responses) in order."""
    settings = _settings(db=db, batch_size=batch_size, retention=list(retention))
    _setup_logging(settings.log_level)

    async def go() -> Any:
        from ingest.replay import replay_files
        from processors.pipeline import CandlePipeline
        from processors.resampler import Resampler
        from speedlayer.store.sqlite import SQLiteStore

        clock = SystemClock()
        async with SQLiteStore(settings.db, settings.interval_set, clock) as store:
            resampler = Resampler(
                settings.interval_set,
                clock,
                grace_ms=settings.grace_ms,
                lateness_ms=settings.lateness_ms,
            )
            pipeline = CandlePipeline(resampler, store)
            await pipeline.recover()
            return await replay_files(files, pipeline, settings.batch_size)

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
@db_option
def candles(
    symbol: str,
    interval: str,
    start: str | None,
    end: str | None,
    limit: int | None,
    fmt: str,
    db: Path | None,
) -> None:
    """Print the stored candles of SYMBOL, oldest first."""
    settings = _settings(db=db)
    try:
        iv = settings.interval_set.get(interval)
        start_ms = parse_time_ms(start, "--start") if start else None
        end_ms = parse_time_ms(end, "--end") if end else None
    except SpeedlayerError as exc:
        raise click.BadParameter(str(exc)) from None
    if not settings.db.exists():
        raise click.ClickException(f"no database at {settings.db}; run `speedlayer replay` first")

    async def go() -> Any:
        from speedlayer.store.sqlite import SQLiteStore

        async with SQLiteStore(settings.db, settings.interval_set, SystemClock()) as store:
            return await store.query(symbol, iv, start_ms, end_ms, limit, "asc")

    rows = _run(go())
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
@click.option("--host", help="bind address (default 127.0.0.1)")
@click.option("--port", type=int, help="port (default 8000)")
def api(db: Path | None, host: str | None, port: int | None) -> None:
    """Serve the REST API."""
    settings = _settings(db=db, host=host, port=port)
    _setup_logging(settings.log_level)
    import uvicorn

    from api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8001, show_default=True)
@sim_options
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
    settings = _settings(sim_symbols=symbols, sim_speed=speed, sim_replay=list(replay_files))
    _setup_logging(settings.log_level)
    from ingest.simulator import FaultConfig, PolygonSimulator, SimulatorConfig

    config = SimulatorConfig(
        host=host,
        port=port,
        symbols=settings.sim_symbols,
        speed=settings.sim_speed,
        replay=list(settings.sim_replay),
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


@main.command()
@db_option
@click.option("--host", help="API bind address (default 127.0.0.1)")
@click.option("--port", type=int, help="API port (default 8000)")
@click.option(
    "--source",
    type=click.Choice(["auto", "simulator", "polygon"]),
    help="feed (default auto: polygon when POLYGON_API_KEY is set, else the simulator)",
)
@sim_options
def up(
    db: Path | None,
    host: str | None,
    port: int | None,
    source: str | None,
    symbols: int | None,
    speed: float | None,
    replay_files: tuple[str, ...],
) -> None:
    """Run everything in one process: feed, resampler, store and the API."""
    settings = _settings(
        db=db,
        host=host,
        port=port,
        source=source,
        sim_symbols=symbols,
        sim_speed=speed,
        sim_replay=list(replay_files),
    )
    _setup_logging(settings.log_level)
    from speedlayer.stack import run_stack

    with contextlib.suppress(KeyboardInterrupt):
        _run(run_stack(settings))


@main.command()
@db_option
def purge(db: Path | None) -> None:
    """Delete expired candles now (the API also purges periodically)."""
    settings = _settings(db=db)

    async def go() -> int:
        from speedlayer.store.sqlite import SQLiteStore

        async with SQLiteStore(settings.db, settings.interval_set, SystemClock()) as store:
            return await store.purge_expired()

    click.echo(f"purged {_run(go())} expired candles")


if __name__ == "__main__":
    main()
