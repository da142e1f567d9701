"""flink_sql/job.py without PyFlink: the spec path, Managed Flink's runtime properties and how
they override the Kafka options of a rendered job (docs/flink.md#managed-service-for-apache-flink).
"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from flink_sql import JOB_SCRIPT, JobOptions, render
from flink_sql.job import (
    PROPERTY_GROUP,
    apply_properties,
    property_groups,
    resolve_spec,
    set_table_option,
    table_option,
)
from speedlayer.intervals import IntervalSet

KAFKA_TABLES = ["raw_bars", "candles_1m", "candles_5m"]


def spec_json(environment: str = "kafka", prefix: str = "dev-") -> dict[str, Any]:
    """A job as ``speedlayer flink package`` writes it: the rendered spec and the Kafka values
    it was rendered with."""
    options = JobOptions(
        environment=environment,  # type: ignore[arg-type]
        bootstrap_servers="k1:9092",
        topic_prefix=prefix,
        group_id="speedlayer-flink",
        input_path="bars.jsonl" if environment == "files" else "",
        output_dir="out" if environment == "files" else "",
    )
    spec = asdict(render(IntervalSet(["1m", "5m"]), options))
    spec["kafka"] = {
        "bootstrap.servers": "k1:9092",
        "topic.prefix": prefix,
        "group.id": "speedlayer-flink",
    }
    return spec


def tables(spec: dict[str, Any]) -> dict[str, str]:
    """The CREATE TABLE statements by table name."""
    return {
        statement.split()[2]: statement
        for statement in spec["statements"]
        if statement.startswith("CREATE TABLE")
    }


def test_the_rendered_job_has_the_options_the_override_rewrites() -> None:
    """The fixture matches the SQL files: every Kafka table names its brokers and topic, and
    only the source has a consumer group."""
    found = tables(spec_json())
    assert sorted(found) == sorted(KAFKA_TABLES)
    for name, statement in found.items():
        assert table_option(statement, "properties.bootstrap.servers") == "k1:9092"
        topic = "market-data-raw" if name == "raw_bars" else f"market-data-{name[8:]}"
        assert table_option(statement, "topic") == "dev-" + topic
        group = "speedlayer-flink" if name == "raw_bars" else None
        assert table_option(statement, "properties.group.id") == group


def test_properties_override_brokers_prefix_and_group() -> None:
    spec = spec_json()
    out = apply_properties(
        spec,
        {"bootstrap.servers": "b-1.msk:9094,b-2.msk:9094", "topic.prefix": "prod-",
         "group.id": "candles"},
    )  # fmt: skip
    found = tables(out)
    for statement in found.values():
        assert table_option(statement, "properties.bootstrap.servers") == (
            "b-1.msk:9094,b-2.msk:9094"
        )
        topic = table_option(statement, "topic")
        assert topic is not None and topic.startswith("prod-market-data-")
        assert "dev-" not in statement
    assert table_option(found["raw_bars"], "topic") == "prod-market-data-raw"
    assert table_option(found["candles_5m"], "topic") == "prod-market-data-5m"
    assert table_option(found["raw_bars"], "properties.group.id") == "candles"
    assert table_option(found["candles_1m"], "properties.group.id") is None
    assert out["kafka"] == {
        "bootstrap.servers": "b-1.msk:9094,b-2.msk:9094",
        "topic.prefix": "prod-",
        "group.id": "candles",
    }
    # Everything but the Kafka options is left as it was; the input is not modified.
    assert out["config"] == spec["config"] and out["inserts"] == spec["inserts"]
    assert len(out["statements"]) == len(spec["statements"])
    changed = [a for a, b in zip(spec["statements"], out["statements"], strict=True) if a != b]
    assert len(changed) == len(KAFKA_TABLES)
    assert tables(spec_json()) == tables(spec)


def test_a_prefix_applies_to_a_job_rendered_without_one() -> None:
    out = apply_properties(spec_json(prefix=""), {"topic.prefix": "eu."})
    assert table_option(tables(out)["candles_1m"], "topic") == "eu.market-data-1m"
    assert table_option(tables(out)["raw_bars"], "properties.bootstrap.servers") == "k1:9092"


def test_no_properties_change_nothing() -> None:
    spec = spec_json()
    assert apply_properties(spec, {}) == spec


def test_kafka_client_properties_go_to_every_kafka_table() -> None:
    out = apply_properties(
        spec_json(), {"kafka.security.protocol": "SSL", "kafka.auto.offset.reset": "latest"}
    )
    for statement in tables(out).values():
        assert table_option(statement, "properties.security.protocol") == "SSL"
        assert table_option(statement, "properties.auto.offset.reset") == "latest"
        # Replaced where the job sets it already, not repeated.
        assert statement.count("'properties.auto.offset.reset'") == 1
    # The statement stays one valid option list: each option on its line, comma-separated.
    source = tables(out)["raw_bars"]
    servers = "'properties.bootstrap.servers' = 'k1:9092',\n"
    assert servers + "  'properties.security.protocol' = 'SSL',\n" in source


def test_values_are_sql_string_literals() -> None:
    """A quote in a value cannot end the literal (and so cannot inject table options)."""
    out = apply_properties(spec_json(), {"group.id": "it's', 'connector' = 'print"})
    source = tables(out)["raw_bars"]
    assert table_option(source, "properties.group.id") == "it's', 'connector' = 'print"
    assert table_option(source, "connector") == "kafka"


def test_unknown_keys_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"bootstrap\.server\b"):
        apply_properties(spec_json(), {"bootstrap.server": "b-1:9092"})


def test_a_topic_outside_the_rendered_prefix_is_an_error() -> None:
    spec = spec_json()
    spec["kafka"]["topic.prefix"] = "other-"
    with pytest.raises(ValueError, match="does not start with the prefix"):
        apply_properties(spec, {"topic.prefix": "prod-"})


def test_the_files_environment_has_no_kafka_options_to_override() -> None:
    spec = spec_json(environment="files")
    assert (
        apply_properties(spec, {"bootstrap.servers": "b-1:9092", "kafka.x": "y"})["statements"]
        == spec["statements"]
    )


def test_set_table_option_leaves_statements_without_kafka_alone() -> None:
    view = "CREATE TEMPORARY VIEW v AS SELECT 'topic' AS x"
    assert set_table_option(view, "properties.security.protocol", "SSL") == view


def test_property_groups_reads_managed_flinks_file(tmp_path: Path) -> None:
    """The format of /etc/flink/application_properties.json: a list of groups."""
    path = tmp_path / "application_properties.json"
    path.write_text(
        json.dumps(
            [
                {"PropertyGroupId": "kinesis.analytics.flink.run.options",
                 "PropertyMap": {"python": "job.py", "jarfile": "lib/c.jar"}},
                {"PropertyGroupId": PROPERTY_GROUP,
                 "PropertyMap": {"bootstrap.servers": "b-1:9094", "group.id": "g"}},
            ]
        )
    )  # fmt: skip
    groups = property_groups(path)
    assert groups[PROPERTY_GROUP] == {"bootstrap.servers": "b-1:9094", "group.id": "g"}
    assert groups["kinesis.analytics.flink.run.options"]["python"] == "job.py"


@pytest.mark.parametrize(
    "content",
    [
        {"PropertyGroupId": "speedlayer", "PropertyMap": {}},
        [{"PropertyMap": {"a": "b"}}],
        [{"PropertyGroupId": "speedlayer", "PropertyMap": ["a"]}],
    ],
)
def test_property_groups_rejects_other_shapes(tmp_path: Path, content: object) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=str(path)):
        property_groups(path)


def test_the_spec_is_found_next_to_the_main_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Managed Flink the working directory is not the unpacked application: a relative
    spec path, or none, is taken from the main file's directory."""
    app = tmp_path / "app"
    elsewhere = tmp_path / "cwd"
    app.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_spec(None, app) == app / "job.json"
    assert resolve_spec(Path("conf/job.json"), app) == app / "conf" / "job.json"
    (elsewhere / "local.json").write_text("{}")
    assert resolve_spec(Path("local.json"), app) == Path("local.json")
    assert resolve_spec(tmp_path / "abs.json", app) == tmp_path / "abs.json"


def test_the_main_file_imports_only_the_standard_library_at_module_level() -> None:
    """PyFlink is imported inside main(): the module loads in the project's virtualenv (these
    tests) and in Managed Flink's Python alike."""
    tree = ast.parse(JOB_SCRIPT.read_text())
    modules: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    assert modules - {"__future__"} <= set(sys.stdlib_module_names)
    assert "pyflink" in JOB_SCRIPT.read_text()
