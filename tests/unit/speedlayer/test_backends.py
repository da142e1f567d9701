"""The backend factory (speedlayer/backends.py) and the CLI's checks of the service commands.

No I/O here: which class each setting selects, with which endpoint, names and modes; the servers
behind them are exercised in test_aws_path.py, test_kinesis_bus.py and test_dynamodb_store.py.
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from launch.cli import _simulator_urls, main
from speedlayer.backends import dynamodb_endpoint, kinesis_endpoint, make_bus, make_store
from speedlayer.bus.kafka import KafkaBus
from speedlayer.bus.kinesis import KinesisBus
from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import ManualClock
from speedlayer.config import Settings
from speedlayer.store.dynamodb import DynamoDBStore
from speedlayer.store.memory import MemoryStore
from speedlayer.store.sqlite import SQLiteStore

CLOCK = ManualClock(1_704_206_220_000)


def test_default_backends_are_the_embedded_ones() -> None:
    settings = Settings()
    assert isinstance(make_store(settings, CLOCK), SQLiteStore)
    assert isinstance(make_bus(settings), MemoryBus)
    assert isinstance(make_store(Settings(store="memory"), CLOCK), MemoryStore)


def test_dynamodb_store_from_settings() -> None:
    settings = Settings(
        store="dynamodb",
        dynamodb_endpoint_url="http://127.0.0.1:4567",
        aws_region="eu-west-1",
        dynamodb_table_prefix="dev_",
        dynamodb_write_mode="conditional",
        aws_create_resources=False,
        intervals="1m,5m,1d",
    )
    store = make_store(settings, CLOCK)
    assert isinstance(store, DynamoDBStore)
    assert store.endpoint_url == "http://127.0.0.1:4567" and store.region == "eu-west-1"
    assert store.write_mode == "conditional" and store.create_tables is False
    assert store.tables == {
        "1m": "dev_speed_layer_ohlcv_1min",
        "5m": "dev_speed_layer_ohlcv_5min",
        "1d": "dev_speed_layer_ohlcv_1d",
    }
    assert store.scan_purge  # an emulator endpoint: expired items are purged by scan


def test_kinesis_bus_from_settings() -> None:
    settings = Settings(
        bus="kinesis",
        aws_endpoint_url="http://127.0.0.1:4566",  # one endpoint for both services
        kinesis_stream_prefix="dev-",
        kinesis_shards=4,
        kinesis_checkpoint_table="dev_checkpoints",
        kinesis_poll_interval_s=1.0,
    )
    bus = make_bus(settings, initial_position="TRIM_HORIZON")
    assert isinstance(bus, KinesisBus)
    assert bus.endpoint_url == bus.dynamodb_endpoint_url == "http://127.0.0.1:4566"
    assert bus.stream_name("market-data-raw") == "dev-market-data-raw"
    assert (bus.shard_count, bus.checkpoint_table, bus.poll_interval_s) == (
        4,
        "dev_checkpoints",
        1.0,
    )
    assert bus.initial_position == "TRIM_HORIZON" and bus.intervals[-1] == "4h"
    assert isinstance(make_bus(Settings(bus="kafka")), KafkaBus)


def test_endpoints_fall_back_to_the_shared_one_and_then_to_aws() -> None:
    assert dynamodb_endpoint(Settings()) is None and kinesis_endpoint(Settings()) is None
    both = Settings(aws_endpoint_url="http://h:1", kinesis_endpoint_url="http://h:2")
    assert (dynamodb_endpoint(both), kinesis_endpoint(both)) == ("http://h:1", "http://h:2")


@pytest.mark.parametrize(
    "bad",
    [{"store": "postgres"}, {"bus": "rabbitmq"}, {"dynamodb_write_mode": "blind"},
     {"kinesis_shards": 0}],
)  # fmt: skip
def test_bad_backend_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)  # type: ignore[arg-type]


def test_simulator_addresses() -> None:
    assert _simulator_urls("127.0.0.1:8001") == ("ws://127.0.0.1:8001", "http://127.0.0.1:8001")
    assert _simulator_urls("wss://sim.example/") == ("wss://sim.example", "https://sim.example")
    assert _simulator_urls("http://h:1") == ("ws://h:1", "http://h:1")
    for bad in ("ftp://h:1", "http://"):
        with pytest.raises(click.BadParameter):
            _simulator_urls(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["process"], "needs a bus other processes write"),
        (["ingest"], "needs a bus other processes can read"),
        (["process", "--bus", "kinesis", "--store", "cassandra"], "Invalid value for '--store'"),
        (["ingest", "--bus", "kinesis", "--simulator", "ftp://x"], "expected host:port"),
    ],
)
def test_service_commands_check_their_backends(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args, env={"SPEEDLAYER_BUS": "memory"})
    assert result.exit_code == 2 and message in result.output, result.output
