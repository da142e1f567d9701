"""The jars `speedlayer flink run` and `flink package` load (launch.flink.connector_jars)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.flink import UDF_JAR, connector_jars
from speedlayer.config import Settings
from speedlayer.errors import ConfigError


def test_every_environment_loads_the_functions_jar_after_its_connector(tmp_path: Path) -> None:
    for name in ("flink-sql-connector-kafka-5.0.0-2.2.jar", "kinesis-streams.jar", UDF_JAR):
        (tmp_path / name).write_bytes(b"")
    settings = Settings(flink_lib_dir=str(tmp_path))
    assert connector_jars(settings, "kafka") == [
        tmp_path / "flink-sql-connector-kafka-5.0.0-2.2.jar",
        tmp_path / UDF_JAR,
    ]
    assert connector_jars(settings, "kinesis") == [
        tmp_path / "kinesis-streams.jar",
        tmp_path / UDF_JAR,
    ]
    # The files environment needs no connector, but the functions.
    assert connector_jars(settings, "files") == [tmp_path / UDF_JAR]


def test_without_the_functions_jar_every_environment_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "flink-sql-connector-kafka-5.0.0-2.2.jar").write_bytes(b"")
    settings = Settings(flink_lib_dir=str(tmp_path))
    for environment in ("kafka", "files"):
        with pytest.raises(ConfigError, match=f"no {UDF_JAR} .* see `make flink`"):
            connector_jars(settings, environment)
