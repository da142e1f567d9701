"""The settings reference, ``docs/settings.md``, generated from the one settings model
(``speedlayer.config.Settings``) and the CLI's own options, so that it cannot drift from either.

    python -m launch.settings_doc           # rewrite docs/settings.md
    python -m launch.settings_doc --check   # exit 1 if docs/settings.md is not what it would write

Every setting is read by every command through ``Settings`` (flags > ``SPEEDLAYER_*`` variables >
defaults) and by the Lambda handlers from their environment; ``SECTIONS`` says which commands act
on it, and the tests check that every setting is in exactly one section and every flag named
here exists.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from launch import generated
from speedlayer.config import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
LAMBDA = "Lambda handlers"

# (title, commands that act on the settings, settings, note)
SECTIONS: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    (
        "Candles",
        ("up", "replay", "process", "sink", "api", "candles", "purge", LAMBDA),
        (
            "intervals",
            "retention",
            "grace_ms",
            "lateness_ms",
            "candle_alignment",
            "exchange_timezone",
            "exchange_calendar",
            "session_anchor",
        ),
        "Every part that makes, stores or serves candles must use the same values.",
    ),
    (
        "Store",
        ("up", "replay", "process", "sink", "api", "candles", "purge", LAMBDA),
        ("store", "db", "dynamodb_table_prefix", "dynamodb_write_mode"),
        "",
    ),
    (
        "Bus",
        ("ingest", "process", "sink", "api", "up"),
        (
            "bus",
            "kafka_bootstrap_servers",
            "kafka_topic_prefix",
            "kinesis_stream_prefix",
            "kinesis_shards",
            "kinesis_checkpoint_table",
            "kinesis_poll_interval_s",
            "process_consumer",
            "sink_consumer",
            "relay_socket",
        ),
        "`up` runs on the in-process bus unless told otherwise; the Kafka settings also reach "
        "the Kafka Lambda handler and the Flink job. `up --workers N` serves its in-process bus "
        "to its API processes on `relay_socket` (they run with bus `relay`).",
    ),
    (
        "AWS",
        ("init-aws", "process", "sink", "api", "ingest", "candles", "purge", "lambda-run", LAMBDA),
        (
            "aws_region",
            "aws_endpoint_url",
            "dynamodb_endpoint_url",
            "kinesis_endpoint_url",
            "aws_create_resources",
            "aws_account_id",
            "lambda_retry_timeout_s",
        ),
        "Credentials come from the AWS SDK's usual chain (`AWS_ACCESS_KEY_ID`/"
        "`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, a role); against an endpoint override (the "
        "emulators) any credentials do, and dummy ones are used when none are set. The "
        "per-service endpoints win over `SPEEDLAYER_AWS_ENDPOINT_URL`; with none set the clients "
        "go to AWS itself.",
    ),
    (
        "Services",
        ("up", "process", "sink", "ingest", "api", "replay"),
        (
            "log_level",
            "stats_interval_s",
            "metrics_namespace",
            "health_file",
            "write_retry_deadline_s",
            "batch_size",
        ),
        "",
    ),
    (
        "API",
        ("api", "up"),
        (
            "host",
            "port",
            "max_page",
            "page_cache_mb",
            "purge_interval_s",
            "memory_trim_s",
            "api_keys",
            "cors_origins",
            "live_max_connections",
            "live_max_subscriptions",
            "live_max_message_bytes",
            "live_queue_messages",
            "live_max_wildcards",
            "live_max_snapshot",
            "sse_replay_events",
            "sse_heartbeat_s",
            "sse_send_timeout_s",
        ),
        "",
    ),
    (
        "Feed",
        ("up", "ingest", "simulate"),
        (
            "source",
            "polygon_api_key",
            "polygon_ws_url",
            "polygon_rest_url",
            "polygon_market",
            "polygon_symbols",
            "backfill_lookback_min",
            "sim_symbols",
            "sim_speed",
            "sim_history_min",
            "sim_replay",
            "sim_port",
        ),
        "",
    ),
    (
        "Flink SQL job",
        ("flink plan", "flink run", "flink package"),
        (
            "flink_python",
            "flink_lib_dir",
            "flink_state_ttl",
            "flink_parallelism",
            "flink_heap",
            "flink_idle_timeout",
            "flink_checkpoint_interval",
            "flink_checkpoint_dir",
        ),
        "",
    ),
]

# CLI options whose name is not the setting they set, per command; None: not a setting.
FLAG_SETTINGS: dict[str, dict[str, str | None]] = {
    "up": {
        "symbols": "sim_symbols",
        "speed": "sim_speed",
        "replay_files": "sim_replay",
        "history": "sim_history_min",
    },
    "ingest": {"symbols": "sim_symbols", "speed": "sim_speed", "replay_files": "sim_replay"},
    "simulate": {
        "symbols": "sim_symbols",
        "speed": "sim_speed",
        "replay_files": "sim_replay",
        "history": "sim_history_min",
        "host": None,  # the simulator's own address, not the API's
        "port": None,
    },
    "process": {"consumer": "process_consumer"},
    "sink": {"consumer": "sink_consumer"},
    "flink plan": {"parallelism": "flink_parallelism"},
    "flink run": {"parallelism": "flink_parallelism"},
}


def commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield prefix + name, command


def flags() -> dict[str, list[tuple[str, str]]]:
    """setting -> [(flag, command)] from the CLI's options."""
    from launch.cli import main

    fields = Settings.model_fields
    found: dict[str, list[tuple[str, str]]] = {}
    for command_name, command in commands(main):
        renames = FLAG_SETTINGS.get(command_name, {})
        for param in command.params:
            if not isinstance(param, click.Option) or param.name is None:
                continue
            setting = renames.get(param.name, param.name if param.name in fields else None)
            if setting is not None:
                flag = max(param.opts, key=len)
                found.setdefault(setting, []).append((flag, command_name))
    return found


def env_names(name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return [str(choice) for choice in choices]
    return [f"SPEEDLAYER_{name.upper()}"]


def default_text(field: FieldInfo) -> str:
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if value is None or value == "" or value in ([], {}):
        return "unset"
    if isinstance(value, SecretStr):
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{','.join(str(item) for item in value)}`"
    return f"`{value}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    fields = Settings.model_fields
    by_flag = flags()
    out = [
        "# Settings reference",
        "",
        "<!-- Generated by `python -m launch.settings_doc` from `speedlayer.config.Settings` and "
        "the CLI's options; edit those, not this file. -->",
        "",
        "Every service, command and Lambda handler reads one settings model, "
        "`speedlayer.config.Settings`: a command-line flag wins over its environment variable, "
        "which wins over the default. List values are comma-separated "
        "(`SPEEDLAYER_INTERVALS=1m,5m,1h`); booleans are `true`/`false`; durations in "
        "`SPEEDLAYER_RETENTION` are like `7d`, `90d`, `10y`. An invalid value stops the command "
        "at start with a message naming the setting.",
        "",
    ]
    for title, readers, names, note in SECTIONS:
        acted = ", ".join(r if r == LAMBDA else f"`{r}`" for r in readers)
        out += [f"## {title}", "", f"Acted on by {acted}.", ""]
        if note:
            out += [note, ""]
        out += ["| variable | flag | default | meaning |", "|---|---|---|---|"]
        for name in names:
            field = fields[name]
            variables = ", ".join(f"`{env}`" for env in env_names(name, field))
            flag_cells: dict[str, list[str]] = {}
            for flag, command in by_flag.get(name, []):
                flag_cells.setdefault(flag, []).append(command)
            flag_text = "; ".join(
                f"`{flag}` ({', '.join(cmds)})" for flag, cmds in flag_cells.items()
            )
            out.append(
                f"| {variables} | {cell(flag_text)} | {cell(default_text(field))} | "
                f"{cell(field.description or '')} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    return generated.main(DOC, render, "launch.settings_doc", argv)


if __name__ == "__main__":
    sys.exit(main())
