"""The first-run fixes in the CLI: the epoch-seconds rule for --start/--end and --history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import launch.cli as cli


@pytest.mark.parametrize("flag", ["--start", "--end"])
def test_candles_rejects_epoch_seconds(tmp_path: Path, flag: str) -> None:
    result = CliRunner().invoke(
        cli.main, ["candles", "AAPL", "-i", "15m", "--db", str(tmp_path / "x.db"), flag,
                   "1796281200"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "looks like epoch seconds; pass milliseconds" in result.output
    assert flag in result.output


def test_candles_accepts_milliseconds_and_iso(tmp_path: Path) -> None:
    """Past the time check the command only misses its database."""
    for value in ("1796281200000", "2026-12-01T12:00:00Z"):
        result = CliRunner().invoke(
            cli.main, ["candles", "AAPL", "--db", str(tmp_path / "x.db"), "--start", value]
        )
        assert result.exit_code == 1, result.output
        assert "no database" in result.output


def test_up_and_simulate_document_history() -> None:
    for command in ("up", "simulate"):
        result = CliRunner().invoke(cli.main, [command, "--help"])
        assert result.exit_code == 0
        assert "--history MINUTES" in result.output
        assert "SPEEDLAYER_SIM_HISTORY_MIN" in result.output


def test_up_history_sets_history_and_backfill(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def run_stack(settings: Any) -> None:
        seen["settings"] = settings

    import launch.services

    monkeypatch.setattr(launch.services, "run_stack", run_stack)
    monkeypatch.delenv("SPEEDLAYER_BACKFILL_LOOKBACK_MIN", raising=False)
    monkeypatch.delenv("SPEEDLAYER_SIM_HISTORY_MIN", raising=False)
    monkeypatch.setattr(cli, "tune_gc", lambda: None)
    monkeypatch.setattr(cli, "_setup_logging", lambda level: None)
    result = CliRunner().invoke(cli.main, ["up", "--history", "42"])
    assert result.exit_code == 0, result.output
    assert seen["settings"].sim_history_min == 42
    assert seen["settings"].backfill_lookback_min == 42


def test_simulate_history_reaches_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.simulator as simulator

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    class Fake:
        def __init__(self, config: Any) -> None:
            seen["config"] = config
            raise Stop

    monkeypatch.setattr(simulator, "PolygonSimulator", Fake)
    monkeypatch.setattr(cli, "_setup_logging", lambda level: None)
    result = CliRunner().invoke(cli.main, ["simulate", "--history", "15"])
    assert isinstance(result.exception, Stop)
    assert seen["config"].history_minutes == 15


def test_an_absent_repeatable_flag_leaves_the_environment_in_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`replay` without --retention keeps SPEEDLAYER_RETENTION (an empty flag list is no flag)."""
    monkeypatch.setenv("SPEEDLAYER_RETENTION", "*=10y")
    assert cli._settings(retention=[]).retention == {"*": "10y"}
    assert cli._settings(retention=["1m=3d"]).retention == {"1m": "3d"}
