"""infra/flink/submit-job.sh, the compose stack's one-shot submission of the Flink job, with
stand-ins for `wget` (the JobManager's REST answer) and Flink's SQL client (what it was given):
it submits once, never a second copy, and resumes from the newest retained checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.unit.deploy.containers import ROOT

SCRIPT = ROOT / "infra/flink/submit-job.sh"
JOB_SQL = "SET 'pipeline.name' = 'speedlayer-candles';\n"


def overview(*jobs: tuple[str, str]) -> str:
    """A /jobs/overview answer in Flink 2.2's field order."""
    return json.dumps(
        {
            "jobs": [
                {
                    "jid": f"{n:032x}",
                    "name": name,
                    "start-time": 1,
                    "end-time": -1,
                    "duration": 2,
                    "state": state,
                    "last-modification": 3,
                    "tasks": {"running": 24, "total": 24},
                    "pending-operators": 0,
                }
                for n, (name, state) in enumerate(jobs)
            ]
        },
        separators=(",", ":"),
    )


def run(
    tmp_path: Path, answer: str, *, wget_fails: bool = False, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    home, stubs = tmp_path / "flink", tmp_path / "stubs"
    (home / "bin").mkdir(parents=True, exist_ok=True)
    stubs.mkdir(exist_ok=True)
    given = tmp_path / "given.sql"
    given.unlink(missing_ok=True)
    client = home / "bin/sql-client.sh"
    client.write_text(f'#!/usr/bin/env bash\necho "$@" > {tmp_path}/args\ncat "$2" > {given}\n')
    wget = stubs / "wget"
    (tmp_path / "answer.json").write_text(answer)
    wget.write_text(
        "#!/usr/bin/env bash\nexit 4\n"
        if wget_fails
        else f"#!/usr/bin/env bash\ncat {tmp_path}/answer.json\n"
    )
    for stub in (client, wget):
        stub.chmod(0o755)
    job = tmp_path / "job.sql"
    job.write_text(JOB_SQL)
    environment = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "FLINK_HOME": str(home),
        "JOB_SQL": str(job),
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "FLINK_REST_URL": "http://jobmanager:8081",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=environment, check=False
    )
    return proc, given


def test_submits_the_job_with_the_sql_client(tmp_path: Path) -> None:
    proc, given = run(tmp_path, overview(("other", "RUNNING"), ("speedlayer-candles", "CANCELED")))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "args").read_text().split() == ["-f", str(tmp_path / "job.sql")]
    assert given.read_text() == JOB_SQL


@pytest.mark.parametrize("state", ["RUNNING", "RESTARTING", "INITIALIZING", "CREATED"])
def test_does_not_submit_a_second_copy(tmp_path: Path, state: str) -> None:
    proc, given = run(tmp_path, overview(("speedlayer-candles", state)))
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stdout
    assert not given.exists()


def test_resumes_from_the_newest_retained_checkpoint(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    for name, mtime in (("a/chk-3", 100), ("b/chk-9", 300), ("a/chk-4", 200)):
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / "_metadata").write_bytes(b"x")
        os.utime(checkpoints / name / "_metadata", (mtime, mtime))
    (checkpoints / "b/chk-10").mkdir()  # in progress: no _metadata
    proc, given = run(tmp_path, overview())
    assert proc.returncode == 0, proc.stderr
    newest = checkpoints / "b/chk-9"
    assert given.read_text() == (
        f"SET 'execution.state-recovery.path' = 'file://{newest}';\n\n{JOB_SQL}"
    )
    fresh, given_fresh = run(tmp_path, overview(), FLINK_JOB_FRESH="true")
    assert fresh.returncode == 0 and given_fresh.read_text() == JOB_SQL


def test_an_unreachable_jobmanager_fails_the_one_shot(tmp_path: Path) -> None:
    proc, given = run(tmp_path, "", wget_fails=True)
    assert proc.returncode != 0 and not given.exists()
