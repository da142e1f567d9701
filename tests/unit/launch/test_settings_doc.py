"""docs/settings.md is generated from the settings model and the CLI: it is up to date, it
covers every setting once, and every flag and command it names exists."""

from __future__ import annotations

import click

from launch.cli import main
from launch.settings_doc import DOC, FLAG_SETTINGS, LAMBDA, SECTIONS, commands, flags, render
from speedlayer.config import Settings


def test_the_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), "run `python -m launch.settings_doc`"


def test_every_setting_is_in_exactly_one_section_and_described() -> None:
    listed = [name for _, _, names, _ in SECTIONS for name in names]
    assert sorted(listed) == sorted(Settings.model_fields)
    assert len(listed) == len(set(listed))
    undescribed = [n for n, f in Settings.model_fields.items() if not (f.description or "")]
    assert undescribed == []


def test_every_command_and_flag_named_exists() -> None:
    known = dict(commands(main))
    for _, readers, _, _ in SECTIONS:
        assert set(readers) - {LAMBDA} <= set(known), readers
    for command, renames in FLAG_SETTINGS.items():
        names = {p.name for p in known[command].params if isinstance(p, click.Option)}
        assert set(renames) <= names, (command, set(renames) - names)
        assert {s for s in renames.values() if s} <= set(Settings.model_fields)
    found = flags()
    assert ("--db", "api") in found["db"] and ("--consumer", "sink") in found["sink_consumer"]
    assert "host" not in {s for s, pairs in found.items() for _, c in pairs if c == "simulate"}
