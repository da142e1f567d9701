"""Run a rendered Flink SQL job (flink_sql.JobSpec as JSON) with PyFlink.

Runs under the Flink virtualenv's Python (``make flink``; it pins its own pandas and pyarrow, so
it is kept apart from the project's), or as the main file of the Managed Service for Apache Flink
application that ``speedlayer flink package`` builds. Imports only PyFlink and the standard
library:

    python flink_sql/job.py SPEC.json [--jars a.jar,b.jar] [--plan] [--properties FILE]

A relative spec path that does not exist from the working directory is taken relative to this
file's directory (the unpacked application on Managed Flink); without one, ``job.json`` next to
this file is used. ``--plan`` prints the optimised plan instead of running. Without it the job
runs: the statement set of the inserts, until it finishes (bounded input) or this process is
stopped (SIGTERM or SIGINT cancel the job). Progress goes to stderr as JSON lines
(``{"event": ...}``), which ``speedlayer flink run`` relays.

On Managed Flink (``/etc/flink/application_properties.json`` exists) the ``speedlayer`` group
of the application's runtime properties overrides the Kafka options of the spec's tables
(:func:`apply_properties`), and this script returns once the job is submitted: the service runs
it. ``--properties FILE`` applies a file of the same format anywhere (to try a deployment
locally).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Where Managed Flink puts the application's runtime properties: a JSON list of
# {"PropertyGroupId": ..., "PropertyMap": {...}}, the EnvironmentProperties of the application.
APPLICATION_PROPERTIES = Path("/etc/flink/application_properties.json")
# The group Managed Flink reads the main file and the jar from (python, jarfile).
RUN_OPTIONS_GROUP = "kinesis.analytics.flink.run.options"
# The job's own group: see apply_properties.
PROPERTY_GROUP = "speedlayer"
PROPERTY_KEYS = ("bootstrap.servers", "topic.prefix", "group.id")
# ``kafka.<name>`` in the group sets ``properties.<name>`` on every Kafka table.
KAFKA_PREFIX = "kafka."
DEFAULT_SPEC = "job.json"
# How long a stop waits for the job to be cancelled before this process exits anyway.
CANCEL_TIMEOUT_S = 20.0

_VALUE = r"'((?:[^']|'')*)'"


def event(name: str, **fields: Any) -> None:
    print(json.dumps({"event": name, **fields}), file=sys.stderr, flush=True)


def resolve_spec(path: Path | None, base: Path = HERE) -> Path:
    """The spec file: ``path`` as given if absolute or found from the working directory,
    else relative to ``base`` (this file's directory); ``base/job.json`` without a path."""
    if path is None:
        return base / DEFAULT_SPEC
    if path.is_absolute() or path.exists():
        return path
    return base / path


def property_groups(path: Path) -> dict[str, dict[str, str]]:
    """The runtime properties in ``path`` (Managed Flink's format: a JSON list of
    ``{"PropertyGroupId": id, "PropertyMap": {key: value}}``) by group id."""
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of property groups")
    groups: dict[str, dict[str, str]] = {}
    for group in data:
        if not isinstance(group, dict) or not isinstance(group.get("PropertyGroupId"), str):
            raise ValueError(f"{path}: a property group without a PropertyGroupId: {group!r}")
        values = group.get("PropertyMap") or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: PropertyMap of {group['PropertyGroupId']} is not an object")
        groups[group["PropertyGroupId"]] = {str(k): str(v) for k, v in values.items()}
    return groups


def _option(key: str) -> re.Pattern[str]:
    return re.compile(rf"'{re.escape(key)}'\s*=\s*{_VALUE}")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def table_option(statement: str, key: str) -> str | None:
    """The value of the table option ``key`` in a CREATE TABLE statement, or None."""
    match = _option(key).search(statement)
    return match.group(1).replace("''", "'") if match else None


def set_table_option(statement: str, key: str, value: str) -> str:
    """``statement`` with the table option ``key`` set to ``value``: replaced where it is, else
    added after the Kafka bootstrap servers (statements without them are returned as they are)."""
    option = f"'{key}' = {_literal(value)}"
    replaced, count = _option(key).subn(lambda _: option, statement)
    if count:
        return replaced
    anchor = _option("properties.bootstrap.servers").search(statement)
    if anchor is None:
        return statement
    return f"{statement[: anchor.end()]},\n  {option}{statement[anchor.end() :]}"


def apply_properties(spec: dict[str, Any], properties: Mapping[str, str]) -> dict[str, Any]:
    """The spec with the deployment's Kafka settings (the ``speedlayer`` property group):

    * ``bootstrap.servers``: the brokers of every Kafka table;
    * ``topic.prefix``: replaces the prefix the spec was rendered with (``spec["kafka"]``) in
      every topic name;
    * ``group.id``: the source's consumer group;
    * ``kafka.<name>``: the Kafka client property ``<name>`` on every Kafka table (e.g.
      ``kafka.security.protocol = SSL`` for the TLS listener of Amazon MSK).

    Unknown keys are an error (a misspelt key would otherwise be ignored in silence)."""
    unknown = sorted(
        key for key in properties if key not in PROPERTY_KEYS and not key.startswith(KAFKA_PREFIX)
    )
    if unknown:
        raise ValueError(
            f"unknown keys in the {PROPERTY_GROUP} property group: {', '.join(unknown)} "
            f"(known: {', '.join(PROPERTY_KEYS)}, {KAFKA_PREFIX}<client property>)"
        )
    rendered = dict(spec.get("kafka") or {})
    options = {
        "properties." + key.removeprefix(KAFKA_PREFIX): value
        for key, value in sorted(properties.items())
        if key.startswith(KAFKA_PREFIX)
    }
    if "bootstrap.servers" in properties:
        options["properties.bootstrap.servers"] = properties["bootstrap.servers"]
    statements = []
    for statement in spec["statements"]:
        if table_option(statement, "properties.bootstrap.servers") is not None:
            for key, value in options.items():
                statement = set_table_option(statement, key, value)
            group_id = properties.get("group.id")
            if group_id and table_option(statement, "properties.group.id") is not None:
                statement = set_table_option(statement, "properties.group.id", group_id)
            topic = table_option(statement, "topic")
            if "topic.prefix" in properties and topic is not None:
                old = rendered.get("topic.prefix", "")
                if not topic.startswith(old):
                    raise ValueError(f"topic {topic!r} does not start with the prefix {old!r}")
                new_topic = properties["topic.prefix"] + topic.removeprefix(old)
                statement = set_table_option(statement, "topic", new_topic)
        statements.append(statement)
    rendered.update({key: properties[key] for key in PROPERTY_KEYS if key in properties})
    return {**spec, "statements": statements, "kafka": rendered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, nargs="?", help=f"the job (default: {DEFAULT_SPEC})")
    parser.add_argument("--spec", dest="spec_option", type=Path, help="the same, as an option")
    parser.add_argument("--jars", default="", help="comma-separated connector jars")
    parser.add_argument("--plan", action="store_true", help="print the plan, do not run")
    parser.add_argument("--properties", type=Path, help="runtime properties to apply")
    args = parser.parse_args(argv)
    spec = json.loads(resolve_spec(args.spec_option or args.spec).read_text())
    managed = APPLICATION_PROPERTIES.exists()
    properties = args.properties or (APPLICATION_PROPERTIES if managed else None)
    if properties is not None:
        overrides = property_groups(properties).get(PROPERTY_GROUP, {})
        spec = apply_properties(spec, overrides)
        event("properties", file=str(properties), kafka=spec.get("kafka", {}))

    from pyflink.table import EnvironmentSettings, TableEnvironment  # type: ignore[import-not-found]

    started = time.monotonic()
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    for key, value in spec["config"].items():
        config.set(key, value)
    jars = [Path(jar).resolve().as_uri() for jar in args.jars.split(",") if jar]
    if jars:
        config.set("pipeline.jars", ";".join(jars))
    for statement in spec["statements"]:
        env.execute_sql(statement)
    event("planned", seconds=round(time.monotonic() - started, 1))

    statement_set = env.create_statement_set()
    for insert in spec["inserts"]:
        statement_set.add_insert_sql(insert)
    if args.plan:
        print(statement_set.explain())
        return 0
    result = statement_set.execute()
    client = result.get_job_client()
    job_id = str(client.get_job_id()) if client is not None else ""
    event("running", job_id=job_id, seconds=round(time.monotonic() - started, 1))
    if managed:
        # The service runs (and restarts, and snapshots) the job: the main file only submits it.
        return 0

    def cancel(signum: int, _frame: object) -> None:
        # Once: a second signal ends this process at once. Cancelling goes through the JVM,
        # which may itself be shutting down; the watchdog bounds the wait.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        event("stopping", signal=signum)
        watchdog = threading.Timer(CANCEL_TIMEOUT_S, os._exit, (3,))
        watchdog.daemon = True
        watchdog.start()
        if client is not None:
            client.cancel().result()
        sys.exit(0)

    signal.signal(signal.SIGTERM, cancel)
    signal.signal(signal.SIGINT, cancel)
    result.wait()
    event("finished", job_id=job_id, seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
