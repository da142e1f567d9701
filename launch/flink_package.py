"""The Flink SQL job as an application for Amazon Managed Service for Apache Flink
(``speedlayer flink package``, docs/flink.md#managed-service-for-apache-flink).

The zip holds, at its root:

* ``job.py``: the driver (flink_sql/job.py), the application's main Python file;
* ``job.json``: the job rendered for a deployment: no local mini-cluster settings, and nothing
  the service owns (checkpoints, their storage and restore, parallelism);
* ``lib/<jar>``: the connector jar and the jar of the job's functions (Managed Flink takes one
  ``jarfile``: they are merged into ``lib/speedlayer-connectors.jar``);
* ``application-properties.json``: the application's property groups, an example to start from;
* ``README.txt``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flink_sql import JOB_SCRIPT, JobSpec, render
from flink_sql.job import DEFAULT_SPEC, PROPERTY_GROUP, RUN_OPTIONS_GROUP
from launch.flink import LOCAL_CONFIG, UDF_JAR, connector_jars, job_options
from speedlayer import __version__
from speedlayer.config import Settings
from speedlayer.errors import ConfigError

MAIN_FILE = "job.py"
PROPERTIES_FILE = "application-properties.json"
MERGED_JAR = "speedlayer-connectors.jar"
RUNTIME = "FLINK-2_2"
DEPLOYABLE = ("kafka", "kinesis")
PLACEHOLDER_ACCOUNT = "000000000000"
# Settings the service owns (its CheckpointConfiguration and ParallelismConfiguration); setting
# them from the job's code is an error on Managed Flink 2.2.
SERVICE_OWNED = ("parallelism.default", "execution.checkpointing.", "execution.state-recovery.")
# Entries of a jar that describe the jar itself: stale (signatures) in a merged one.
_SIGNATURES = (".SF", ".RSA", ".DSA", ".EC")
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class Package:
    """What ``build_package`` wrote."""

    path: Path
    jar: str
    properties: list[dict[str, Any]]
    spec: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def deployment_spec(settings: Settings, environment: str = "kafka") -> dict[str, Any]:
    """The job for a deployment, as the JSON object ``job.py`` reads: the rendered spec without
    local or service-owned settings. A Kafka job carries the Kafka values it was rendered with
    (``kafka``), which the runtime properties can override; a Kinesis job names its streams by
    ARN from the settings (region, account, stream prefix), and never an emulator's endpoint."""
    if environment not in DEPLOYABLE:
        raise ConfigError(f"Managed Flink runs the kafka or kinesis job, not {environment!r}")
    options = job_options(
        settings, environment=environment, checkpoint_dir="", resume_from="", kinesis_endpoint=""
    )
    if environment == "kinesis":
        options = dataclasses.replace(options, kinesis_endpoint="")
    spec: JobSpec = render(settings.interval_set, options)
    config = {
        key: value
        for key, value in spec.config.items()
        if key not in LOCAL_CONFIG and not key.startswith(SERVICE_OWNED)
    }
    out: dict[str, Any] = {**asdict(spec), "config": config, "jvm_options": []}
    if environment == "kafka":
        out["kafka"] = {
            "bootstrap.servers": options.bootstrap_servers,
            "topic.prefix": options.topic_prefix,
            "group.id": options.group_id,
        }
    else:
        out["kinesis"] = {
            "aws.region": options.aws_region,
            "aws.account.id": options.aws_account_id,
            "stream.prefix": options.stream_prefix,
        }
    return out


def application_properties(jar: str, kafka: dict[str, str] | None) -> list[dict[str, Any]]:
    """The application's property groups (``EnvironmentProperties.PropertyGroups``): where the
    main file and the jar are, and, for a Kafka job, its Kafka settings. Managed Flink takes no
    empty values, so an empty topic prefix is left out."""
    groups: list[dict[str, Any]] = [
        {
            "PropertyGroupId": RUN_OPTIONS_GROUP,
            "PropertyMap": {"python": MAIN_FILE, "jarfile": f"lib/{jar}"},
        }
    ]
    if kafka is not None:
        groups.append(
            {
                "PropertyGroupId": PROPERTY_GROUP,
                "PropertyMap": {key: value for key, value in kafka.items() if value},
            }
        )
    return groups


def merge_jars(jars: Iterable[Path], target: Path) -> list[str]:
    """Merge ``jars`` into one: the first copy of each entry wins, service registrations
    (``META-INF/services/*``, how Flink finds connector factories) are concatenated, and
    signature files are dropped. Returns the entries that occurred more than once."""
    seen: set[str] = set()
    duplicates: list[str] = []
    services: dict[str, list[bytes]] = {}
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for jar in jars:
            with zipfile.ZipFile(jar) as source:
                for info in source.infolist():
                    name = info.filename
                    upper = name.upper()
                    if upper.startswith("META-INF/") and upper.endswith(_SIGNATURES):
                        continue
                    if name.startswith("META-INF/services/") and not info.is_dir():
                        services.setdefault(name, []).append(source.read(info))
                        continue
                    if name in seen:
                        if not info.is_dir() and upper != "META-INF/MANIFEST.MF":
                            duplicates.append(name)
                        continue
                    seen.add(name)
                    out.writestr(info, b"" if info.is_dir() else source.read(info))
        for name, parts in services.items():
            lines = b"\n".join(part.rstrip(b"\n") for part in parts if part.strip())
            out.writestr(name, lines + b"\n")
    return duplicates


def readme(spec: dict[str, Any], properties: list[dict[str, Any]], jar_note: str) -> str:
    intervals = ", ".join(insert.split()[2].removeprefix("candles_") for insert in spec["inserts"])
    return f"""speedlayer {__version__}: the Flink SQL candle job for Amazon Managed Service for
Apache Flink (runtime {RUNTIME}, a Python application). Built by `speedlayer flink package`;
docs/flink.md in the repository describes the deployment.

  {MAIN_FILE:<29} the main file: runs {DEFAULT_SPEC} with PyFlink
  {DEFAULT_SPEC:<29} the job: settings, tables, views, inserts ({intervals})
  lib/                          {jar_note}
  {PROPERTIES_FILE:<29} the application's property groups, an example

Upload this zip to S3 and create the application with runtime {RUNTIME}, the zip as its code
(CodeContentType ZIPFILE) and these property groups (EnvironmentProperties.PropertyGroups):

{json.dumps(properties, indent=2)}

{RUN_OPTIONS_GROUP} tells the service which file is the main file (python) and
which jar to load (jarfile); both paths are relative to the root of this zip.
{_settings_note(spec)}
Checkpoints, their interval and storage, and the parallelism are the service's
(CheckpointConfiguration, ParallelismConfiguration): the job does not set them.
"""


def _settings_note(spec: dict[str, Any]) -> str:
    """How the deployment sets the job's connections (the readme's middle part)."""
    if "kinesis" in spec:
        kinesis = spec["kinesis"]
        region, account = kinesis["aws.region"], kinesis["aws.account.id"]
        return f"""The job names its streams by ARN, fixed when the zip was built (region
{region}, account {account}, stream prefix "{kinesis["stream.prefix"]}"; set
SPEEDLAYER_AWS_REGION, SPEEDLAYER_AWS_ACCOUNT_ID, SPEEDLAYER_KINESIS_STREAM_PREFIX to change
them): it reads market-data-raw and writes market-data-<interval>, which
`speedlayer init-aws` creates. The application's role needs kinesis:DescribeStreamSummary,
ListShards, GetShardIterator and GetRecords on the raw stream and kinesis:PutRecords on the
candle streams; the Lambda sinks read those (docs/aws.md).
"""
    return f"""The {PROPERTY_GROUP} group overrides the job's Kafka settings when it starts:

  bootstrap.servers   the brokers (Amazon MSK: the cluster's bootstrap brokers)
  topic.prefix        replaces the topic prefix the job was built with
  group.id            the consumer group of the raw topic's source
  kafka.<name>        any Kafka client property, e.g. kafka.security.protocol = SSL for
                      the TLS listener of MSK (port 9094)
"""


def _entry(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed time (the same inputs give the same zip) and mode 0644."""
    info = zipfile.ZipInfo(name, _EPOCH)
    info.external_attr = 0o644 << 16
    return info


def build_package(settings: Settings, out: Path, environment: str = "kafka") -> Package:
    """Write the application zip to ``out`` (replacing it); ConfigError without connector jars."""
    spec = deployment_spec(settings, environment)
    jars = connector_jars(settings, environment)
    warnings = []
    servers = spec.get("kafka", {}).get("bootstrap.servers", "")
    if "127.0.0.1" in servers or "localhost" in servers:
        warnings.append(
            f"the job's bootstrap servers are {servers} (loopback): "
            f"set bootstrap.servers in the {PROPERTY_GROUP} property group, or build with "
            "SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS"
        )
    if spec.get("kinesis", {}).get("aws.account.id") == PLACEHOLDER_ACCOUNT:
        warnings.append(
            f"the stream ARNs name account {PLACEHOLDER_ACCOUNT}: build with "
            "SPEEDLAYER_AWS_ACCOUNT_ID (and SPEEDLAYER_AWS_REGION, "
            "SPEEDLAYER_KINESIS_STREAM_PREFIX)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="speedlayer-package-") as tmp:
        if len(jars) == 1:
            jar_path, jar = jars[0], jars[0].name
            jar_note = f"{jar}: the connector jar"
        else:
            jar_path, jar = Path(tmp) / MERGED_JAR, MERGED_JAR
            duplicates = merge_jars(jars, jar_path)
            names = ", ".join(path.name for path in jars)
            jar_note = f"{jar}: {len(jars)} jars merged into one ({names})"
            # The connector and the job's functions are always merged; more is worth a word.
            connectors = [path for path in jars if path.name != UDF_JAR]
            if duplicates or len(connectors) > 1:
                warnings.append(
                    f"Managed Flink loads one jar: merged {names} into lib/{MERGED_JAR}"
                    + (f"; {len(duplicates)} duplicate entries kept from the first jar"
                       if duplicates else "")
                )  # fmt: skip
        properties = application_properties(jar, spec.get("kafka"))
        texts = {
            MAIN_FILE: JOB_SCRIPT.read_text(),
            DEFAULT_SPEC: json.dumps(spec, indent=1) + "\n",
            PROPERTIES_FILE: json.dumps(properties, indent=2) + "\n",
            "README.txt": readme(spec, properties, jar_note),
        }
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, text in texts.items():
                archive.writestr(_entry(name), text, zipfile.ZIP_DEFLATED)
            # A jar is compressed already: stored as it is.
            with archive.open(_entry(f"lib/{jar}"), "w") as target, jar_path.open("rb") as source:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
    partial.replace(out)
    return Package(out, jar, properties, spec, warnings)
