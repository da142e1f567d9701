"""The Flink job's benchmark (bench/flink.py, `make bench`) at a tiny size on the session's
broker, so it does not rot: every run's candles equal the embedded resampler's (the figures
themselves are not judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.flink import KAFKA_ENV
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(600)


def test_the_flink_benchmark_runs_at_smoke_size(
    tmp_path: Path, flink_ready: None, kafka_bootstrap: str
) -> None:
    out, doc = tmp_path / "results.json", tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "smoke", "--only", "flink",
         "--out", str(out), "--doc", str(doc)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
        env=os.environ | {"PYTHONPATH": str(ROOT), KAFKA_ENV: kafka_bootstrap},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())["runs"]["flink"]["figures"]
    runs = figures["same_bars"]["flink"]
    assert [(r["environment"], r["parallelism"]) for r in runs] == [("files", 1), ("kafka", 2)]
    for run in runs:
        assert run["check"]["result"] == "equal", run["check"]
        assert run["bars_per_s"] > 0 and run["candle_updates"] > 0
    scale = figures["scale"]
    assert scale["complete"] and scale["check"]["result"] == "equal", scale
    text = doc.read_text()
    assert "## 6. The Flink SQL job" in text and "| kafka, parallelism 2 |" in text
