"""`speedlayer flink` refuses what it cannot run correctly, with a clear usage error (no Flink
needed: the checks come before the job starts)."""

from __future__ import annotations

import os
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


def test_a_streaming_job_resumes_from_the_newest_checkpoint_unless_fresh(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    for n in (3, 4):  # two complete checkpoints of one job, and an incomplete newer one
        (checkpoints / "job1" / f"chk-{n}").mkdir(parents=True)
        (checkpoints / "job1" / f"chk-{n}" / "_metadata").write_bytes(b"x")
    (checkpoints / "job1" / "chk-5").mkdir()
    newest = checkpoints / "job1" / "chk-4"
    newest_time = newest.stat().st_mtime + 10
    os.utime(newest / "_metadata", (newest_time, newest_time))
    os.utime(newest, (newest_time, newest_time))
    env = {"SPEEDLAYER_FLINK_CHECKPOINT_DIR": str(checkpoints)}
    for environment in ("kafka", "kinesis"):
        resumed = run_cli("flink", "plan", "--sql-only", "--env", environment, env=env).stdout
        assert f"SET 'execution.state-recovery.path' = '{newest.as_uri()}';" in resumed
        fresh = run_cli(
            "flink", "plan", "--sql-only", "--env", environment, "--fresh", env=env
        ).stdout
        assert "execution.state-recovery.path" not in fresh
        assert f"'execution.checkpointing.dir' = '{checkpoints.as_uri()}'" in fresh
