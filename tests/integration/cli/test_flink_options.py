"""`speedlayer flink` refuses what it cannot run correctly, with a clear usage error (no Flink
needed: the checks come before the job starts)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli


def test_files_environment_refuses_more_than_one_reader(tmp_path: Path) -> None:
    source = tmp_path / "bars.jsonl"
    source.write_text("")
    proc = run_cli(
        "flink", "plan", "--sql-only", "--env", "files", "--input", str(source),
        "--output", str(tmp_path / "out.jsonl"), "--parallelism", "2", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "parallelism 1" in proc.stderr and "--env kafka" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_files_environment_needs_input_and_output() -> None:
    proc = run_cli("flink", "plan", "--sql-only", "--env", "files", check=False)
    assert proc.returncode == 2 and "--input and --output" in proc.stderr, proc.stderr
