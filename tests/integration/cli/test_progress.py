"""Progress of `speedlayer replay` on stderr (speedlayer/progress.py): log lines when stderr is
not a terminal, a bar on a pseudo-terminal, nothing with --quiet; stdout (the --json summary)
the same in every case."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SPEEDLAYER, run_cli

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) [\w.]+: .+$")
TIMING = ("seconds", "bars_per_second")


@pytest.fixture(scope="module")
def bars(realbars: Path) -> Path:
    return realbars / "eqker_2019" / "bars_1m.csv"


def replay_args(bars: Path, db: Path, *more: str) -> list[str]:
    # small batches and a short log period: many progress updates in a run of under a second
    return ["replay", str(bars), "--db", str(db), "--retention", "*=100y", "--json",
            "--batch-size", "1000", *more]  # fmt: skip


def without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in TIMING}


def test_piped_stderr_gets_log_lines_and_stdout_stays_json(bars: Path, tmp_path: Path) -> None:
    env = {"SPEEDLAYER_STATS_INTERVAL_S": "0.01"}
    piped = run_cli(*replay_args(bars, tmp_path / "a.db"), env=env)
    quiet = run_cli(*replay_args(bars, tmp_path / "b.db", "--quiet"), env=env)
    summary = json.loads(piped.stdout)
    assert summary["bars_read"] > 40_000 and summary["rejected"] == 0
    assert without_timing(summary) == without_timing(json.loads(quiet.stdout))
    assert piped.stdout.count("\n") == 1  # one JSON line, nothing else
    lines = piped.stderr.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), piped.stderr
    assert "\x1b" not in piped.stderr and "\r" not in piped.stderr  # no terminal control
    progress = [line for line in lines if " speedlayer.progress: replay: " in line]
    assert len(progress) >= 2, piped.stderr
    assert re.search(r"replay: [\d,]+ of [\d,]+ bars \(\d+%\), accepted [\d,]+, rejected 0, "
                     r"[\d,]+ bars/s", progress[0]), progress[0]  # fmt: skip
    total = f"{summary['bars_read']:,}"
    assert f"replay: {total} of {total} bars (100%), accepted {total}, rejected 0" in progress[-1]
    assert "done in " in progress[-1]
    assert quiet.stderr == ""


def test_a_terminal_shows_a_bar(bars: Path, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [SPEEDLAYER, *replay_args(bars, tmp_path / "c.db")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=os.environ | {"COLUMNS": "160", "TERM": "xterm-256color"},
    )
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode()
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = seen.decode("utf-8", "replace")
    assert "replay" in text and "━" in text, text[-2000:]  # the bar's glyphs
    assert "100%" in text and "bars/s" in text and "ETA" in text
    assert "speedlayer.progress" not in text  # a bar, not log lines
    summary = json.loads(stdout)
    assert f"{summary['bars_read']}/{summary['bars_read']}" in text
