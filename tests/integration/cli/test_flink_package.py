"""`speedlayer flink package`: the Flink SQL job as a zip for Amazon Managed Service for Apache
Flink, built by the CLI (subprocess) and opened here. Nothing starts Flink: the zip's contents
are checked against what Managed Flink reads (docs/flink.md#managed-service-for-apache-flink).
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

from launch.flink import LOCAL_CONFIG, UDF_JAR
from tests.conftest import ROOT, require, run_cli

FLINK_LIB = ROOT / ".flink" / "lib"
RUN_OPTIONS = "kinesis.analytics.flink.run.options"
FACTORIES = "META-INF/services/org.apache.flink.table.factories.Factory"


def package(out: Path, *args: str, **env: str) -> tuple[Any, str]:
    """Run the command; return the property groups it printed and its stderr."""
    proc = run_cli("flink", "package", "--out", str(out), *args, env=env)
    return json.loads(proc.stdout), proc.stderr


def groups(properties: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {group["PropertyGroupId"]: group["PropertyMap"] for group in properties}


def load_main_file(directory: Path) -> ModuleType:
    """The zip's job.py, imported from where it was unpacked (its functions need no PyFlink)."""
    spec = importlib.util.spec_from_file_location("packaged_job", directory / "job.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_holds_main_file_job_jar_and_properties(tmp_path: Path) -> None:
    jars = sorted(FLINK_LIB.glob("*kafka*.jar"))
    require(bool(jars), f"no connector jars in {FLINK_LIB}: run `make flink`")
    require((FLINK_LIB / UDF_JAR).is_file(), f"no {UDF_JAR} in {FLINK_LIB}: run `make flink`")
    out = tmp_path / "build" / "speedlayer-flink.zip"
    printed, stderr = package(
        out,
        SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS="b-1.msk.example:9092",
        SPEEDLAYER_KAFKA_TOPIC_PREFIX="dev-",
        SPEEDLAYER_FLINK_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        SPEEDLAYER_INTERVALS="1m,5m,1h",
    )
    assert "warning" not in stderr
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert names == {
            "job.py", "job.json", "application-properties.json", "README.txt",
            "lib/speedlayer-connectors.jar",
        }  # fmt: skip
        main_file = archive.read("job.py").decode()
        spec = json.loads(archive.read("job.json"))
        example = json.loads(archive.read("application-properties.json"))
        readme = archive.read("README.txt").decode()
        archive.extractall(tmp_path / "app")

    # The main file is the repository's driver.
    assert main_file == (ROOT / "flink_sql" / "job.py").read_text()

    # The job, rendered for a deployment: no mini-cluster on loopback, nothing the service owns.
    config = spec["config"]
    assert not set(LOCAL_CONFIG) & set(config)
    assert "127.0.0.1" not in json.dumps(spec)
    assert not [key for key in config if key.startswith("execution.")]
    assert "parallelism.default" not in config
    assert str(tmp_path / "checkpoints") not in json.dumps(spec)
    assert config["table.local-time-zone"] == "UTC"
    assert spec["environment"] == "kafka"
    assert [insert.split()[2] for insert in spec["inserts"]] == [
        "candles_1m", "candles_5m", "candles_1h",
    ]  # fmt: skip
    statements = "\n".join(spec["statements"])
    assert "'topic' = 'dev-market-data-raw'" in statements
    assert "'topic' = 'dev-market-data-1h'" in statements
    assert statements.count("'properties.bootstrap.servers' = 'b-1.msk.example:9092'") == 4
    assert spec["kafka"] == {
        "bootstrap.servers": "b-1.msk.example:9092",
        "topic.prefix": "dev-",
        "group.id": "speedlayer-flink",
    }

    # The property groups: printed, and the same in the zip; their paths point into the zip.
    assert printed == example
    by_id = groups(example)
    assert by_id[RUN_OPTIONS]["python"] == "job.py"
    jarfile = by_id[RUN_OPTIONS]["jarfile"]
    assert jarfile in names and jarfile.startswith("lib/")
    assert by_id["speedlayer"] == spec["kafka"]
    with zipfile.ZipFile(tmp_path / "app" / jarfile) as jar:
        assert "KafkaDynamicTableFactory" in jar.read(FACTORIES).decode()
        # The job's functions (flink_sql/functions.sql) are in the same jar.
        assert {"speedlayer/flink/CandleAgg.class", "speedlayer/flink/VersionAgg.class"} <= set(
            jar.namelist()
        )
    assert "CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS candle_agg" in statements
    assert "FLINK-2_2" in readme and jarfile in readme

    # Unpacked, the main file finds the spec next to itself, and the example properties
    # describe the job as it was built.
    job = load_main_file(tmp_path / "app")
    assert job.resolve_spec(None) == (tmp_path / "app" / "job.json").resolve()
    overrides = job.property_groups(tmp_path / "app" / "application-properties.json")
    assert job.apply_properties(spec, overrides["speedlayer"]) == spec


def test_without_connector_jars_the_command_fails_clearly(tmp_path: Path) -> None:
    empty = tmp_path / "lib"
    empty.mkdir()
    out = tmp_path / "speedlayer-flink.zip"
    proc = run_cli(
        "flink", "package", "--out", str(out),
        env={"SPEEDLAYER_FLINK_LIB_DIR": str(empty)}, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"no kafka connector jar in {empty}" in proc.stderr
    assert "make flink" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [empty]


def write_jar(path: Path, entries: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as jar:
        for name, text in entries.items():
            jar.writestr(name, text)
    return path


def test_several_jars_are_merged_into_the_one_jar_managed_flink_loads(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    write_jar(lib / "a-kafka-connector.jar", {
        "META-INF/MANIFEST.MF": "Manifest-Version: 1.0\n",
        "META-INF/A.SF": "signature",
        FACTORIES: "org.example.AFactory\n",
        "org/example/AFactory.class": "a",
        "org/example/Shared.class": "from a",
    })  # fmt: skip
    write_jar(lib / "b-kafka-connector.jar", {
        "META-INF/MANIFEST.MF": "Manifest-Version: 1.0\n",
        FACTORIES: "org.example.BFactory",
        "org/example/BFactory.class": "b",
        "org/example/Shared.class": "from b",
    })  # fmt: skip
    write_jar(lib / UDF_JAR, {"speedlayer/flink/CandleAgg.class": "udf"})
    out = tmp_path / "speedlayer-flink.zip"
    printed, stderr = package(
        out, SPEEDLAYER_FLINK_LIB_DIR=str(lib), SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9092"
    )
    assert groups(printed)[RUN_OPTIONS]["jarfile"] == "lib/speedlayer-connectors.jar"
    assert f"merged a-kafka-connector.jar, b-kafka-connector.jar, {UDF_JAR}" in stderr
    assert "1 duplicate entries" in stderr
    # A loopback broker is no broker on AWS: said so.
    assert "127.0.0.1:9092 (loopback)" in stderr
    with zipfile.ZipFile(out) as archive:
        assert [name for name in archive.namelist() if name.startswith("lib/")] == [
            "lib/speedlayer-connectors.jar"
        ]
        archive.extract("lib/speedlayer-connectors.jar", tmp_path)
    with zipfile.ZipFile(tmp_path / "lib" / "speedlayer-connectors.jar") as jar:
        assert jar.read(FACTORIES).decode().split() == [
            "org.example.AFactory",
            "org.example.BFactory",
        ]
        assert jar.read("org/example/Shared.class") == b"from a"
        assert {
            "org/example/AFactory.class", "org/example/BFactory.class",
            "speedlayer/flink/CandleAgg.class",
        } <= set(jar.namelist())  # fmt: skip
        assert "META-INF/A.SF" not in jar.namelist()


def test_the_files_environment_is_not_packaged(tmp_path: Path) -> None:
    proc = run_cli(
        "flink", "package", "--out", str(tmp_path / "x.zip"), "--env", "files", check=False
    )
    assert proc.returncode == 2 and "--env" in proc.stderr


def test_the_kinesis_package_names_its_streams_by_arn(tmp_path: Path) -> None:
    require(any(FLINK_LIB.glob("*kinesis*.jar")), "no Kinesis connector jar: see `make flink`")
    out = tmp_path / "kinesis.zip"
    printed, stderr = package(
        out, "--env", "kinesis", SPEEDLAYER_AWS_REGION="eu-west-1",
        SPEEDLAYER_AWS_ACCOUNT_ID="123456789012", SPEEDLAYER_KINESIS_STREAM_PREFIX="prod-",
        SPEEDLAYER_KINESIS_ENDPOINT_URL="http://127.0.0.1:4568",
    )  # fmt: skip
    assert "warning" not in stderr
    # Only the run options: the Kafka override group has nothing to override here.
    assert list(groups(printed)) == [RUN_OPTIONS]
    with zipfile.ZipFile(out) as archive:
        spec = json.loads(archive.read("job.json"))
        jar = groups(printed)[RUN_OPTIONS]["jarfile"]
        assert jar == "lib/speedlayer-connectors.jar" and jar in archive.namelist()
        archive.extract(jar, tmp_path)
    # The Kinesis connector and the job's functions, merged.
    with zipfile.ZipFile(tmp_path / jar) as merged:
        assert "Kinesis" in merged.read(FACTORIES).decode()
        assert "speedlayer/flink/VersionAgg.class" in merged.namelist()
    assert spec["environment"] == "kinesis" and spec["jvm_options"] == []
    ddl = "\n".join(spec["statements"])
    assert (
        "'stream.arn' = 'arn:aws:kinesis:eu-west-1:123456789012:stream/prod-market-data-raw'" in ddl
    )
    # The emulator's endpoint of the building machine never reaches the deployment.
    assert "aws.endpoint" not in ddl and "BASIC" not in ddl
    assert not any(key.startswith("execution.checkpointing") for key in spec["config"])

    # Built for the placeholder account, it says so.
    _, stderr = package(tmp_path / "placeholder.zip", "--env", "kinesis")
    assert "account 000000000000" in stderr
