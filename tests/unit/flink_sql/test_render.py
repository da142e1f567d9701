"""The job rendered for each environment (flink_sql.render): what differs between them."""

from __future__ import annotations

from flink_sql import JobOptions, render, stream_arn
from flink_sql.job import table_option
from speedlayer.intervals import IntervalSet

INTERVALS = IntervalSet(["1m", "5m"])


def creates(statements: list[str]) -> dict[str, str]:
    return {s.split()[2]: s for s in statements if s.startswith("CREATE TABLE")}


def test_kinesis_tables_name_the_bus_streams_by_arn() -> None:
    options = JobOptions(
        environment="kinesis", aws_region="eu-west-1", aws_account_id="123456789012",
        stream_prefix="prod-",
    )  # fmt: skip
    spec = render(INTERVALS, options)
    tables = creates(spec.statements)
    assert set(tables) == {"kinesis_bars", "candles_1m", "candles_5m"}
    arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/prod-"
    assert f"'stream.arn' = '{arn}market-data-raw'" in tables["kinesis_bars"]
    assert f"'stream.arn' = '{arn}market-data-5m'" in tables["candles_5m"]
    assert stream_arn(options, "market-data-1m") == f"{arn}market-data-1m"
    for table in tables.values():
        # On AWS: the default credential chain, no endpoint, no emulator settings.
        assert table_option(table, "aws.region") == "eu-west-1"
        assert "aws.endpoint" not in table and "BASIC" not in table
    # Changes go out in the Debezium envelope, partitioned by symbol; checkpoints as for Kafka.
    assert "'format' = 'debezium-json'" in tables["candles_1m"]
    assert "PARTITIONED BY (symbol)" in tables["candles_1m"]
    assert "execution.checkpointing.interval" in spec.config
    assert spec.jvm_options == []
    assert spec.needs_connectors


def test_kinesis_against_an_emulator_gets_its_endpoint_and_http1() -> None:
    options = JobOptions(environment="kinesis", kinesis_endpoint="http://127.0.0.1:4568")
    spec = render(INTERVALS, options)
    tables = creates(spec.statements)
    for name, table in tables.items():
        assert table_option(table, "aws.endpoint") == "http://127.0.0.1:4568"
        assert table_option(table, "aws.credentials.provider") == "BASIC"
        http = table_option(table, "sink.http-client.protocol.version")
        assert http == ("HTTP1_1" if name.startswith("candles_") else None)
    assert spec.jvm_options == ["-Daws.cborEnabled=false"]


def test_the_kinesis_arrival_is_made_in_sql_the_other_sources_carry_it() -> None:
    """Every environment's `raw_bars` has an `arrival`; Kinesis computes it in a view."""
    kinesis = render(INTERVALS, JobOptions(environment="kinesis"))
    kafka = render(INTERVALS, JobOptions(environment="kafka"))
    view = next(s for s in kinesis.statements if s.startswith("CREATE TEMPORARY VIEW raw_bars"))
    assert "AS arrival" in view and "1000000" in view
    assert "arrival BIGINT METADATA FROM 'offset'" in creates(kafka.statements)["raw_bars"]
    # The rest of the job is the same SQL.
    shared = [s for s in kafka.statements if s.startswith("CREATE TEMPORARY VIEW")]
    assert all(s in kinesis.statements for s in shared)


def test_every_environment_registers_the_job_functions_first() -> None:
    """candle_agg and candle_version (flink_sql/udf) come before any table or view."""
    for environment in ("kafka", "kinesis", "files"):
        spec = render(INTERVALS, JobOptions(environment=environment))
        first, second = spec.statements[:2]
        assert first.startswith("CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS candle_agg")
        assert "'speedlayer.flink.CandleAgg' LANGUAGE JAVA" in first
        assert "'speedlayer.flink.VersionAgg' LANGUAGE JAVA" in second
        # No retracting MIN/MAX (a map of every value in state) on the updating path; the
        # closing window's MIN(t) is an append-only window aggregate.
        updating = [s for s in spec.statements
                    if s.startswith(("CREATE TEMPORARY VIEW updates_",
                                     "CREATE TEMPORARY VIEW candles_out_"))]  # fmt: skip
        assert len(updating) == 2 * len(INTERVALS)
        assert not any("MIN(" in s or "MAX(" in s for s in updating)
