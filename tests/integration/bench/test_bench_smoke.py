"""Every benchmark at a tiny size, so none of them rots (the figures themselves are not judged).
The Flink job's benchmark needs the Flink virtualenv and a broker: its smoke run is with the Flink
tests (tests/integration/flink/test_flink_bench.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.plots import LATENCY_PNG, PEERS_PNG
from bench.resampler import compare
from tests.conftest import ROOT, require
from tests.integration.bench.test_plots import decoded_size


def test_resampler_comparison_reports_differences() -> None:
    ours = {("15m", "AAPL", 0): (1.0, 2.0, 0.5, 1.5, 100.0, 1.2, 5, 3)}
    assert compare(ours, dict(ours)) == []
    off_by_a_bar = {("15m", "AAPL", 0): (1.0, 2.0, 0.5, 1.5, 100.0, 1.2, 5, 2)}
    assert compare(ours, off_by_a_bar)
    drifted = {("15m", "AAPL", 0): (1.0, 2.0, 0.5, 1.5, 100.0 * (1 + 1e-6), 1.2, 5, 3)}
    assert compare(ours, drifted)
    assert compare(ours, {}) == ["keys differ: 1 only in ours, 0 only in theirs"]
    # exact: every float bit for bit (the columnar path against the streaming resampler)
    assert compare(ours, dict(ours), exact=True) == []
    rounded = {("15m", "AAPL", 0): (1.0, 2.0, 0.5, 1.5, 100.0 * (1 + 1e-15), 1.2, 5, 3)}
    assert compare(ours, rounded) == [] and compare(ours, rounded, exact=True)
    signed = {("15m", "AAPL", 0): (1.0, 2.0, 0.5, 1.5, 100.0, 1.2, 5, 3)}
    assert compare(
        {k: (*v[:4], 0.0, *v[5:]) for k, v in signed.items()},
        {k: (*v[:4], -0.0, *v[5:]) for k, v in signed.items()},
        exact=True,
    )


ONLY = "resampler,live,rest,store_writes,history"


@pytest.mark.timeout(300)
def test_every_benchmark_runs_at_smoke_size(tmp_path: Path) -> None:
    require(bool(shutil.which("wrk")), "wrk is missing: `make setup` installs Debian's wrk package")
    out, doc = tmp_path / "results.json", tmp_path / "benchmarks.md"
    command = [sys.executable, "-m", "bench", "--size", "smoke", "--only", ONLY]
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    proc = subprocess.run(
        [*command, "--out", str(out), "--doc", str(doc), "--readme", str(readme)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    names = [entry["name"] for entry in results["benchmarks"]]
    assert names == [
        "resampler", "full_market_burst", "rest", "websocket_fanout", "store_writes", "history",
    ]  # fmt: skip
    runs = results["runs"]
    for case in runs["resampler"]["figures"]["cases"].values():
        assert case["candles_compared"] == "equal"
        assert case["streaming"]["bars_per_s"] > 0 and case["batch"]["bars_per_s"] > 0
        assert set(case["peers"]) == {"pandas", "polars", "duckdb"}
        assert all(peer["bars_per_s"] > 0 for peer in case["peers"].values())
    history = runs["history"]["figures"]
    assert history["tables_compared"] == "equal"
    assert history["replay"]["summary"]["accepted"] == 20 * 30
    assert history["candles"] == history["replay"]["rows_written"] > 0
    assert history["ratio"] > 0 and history["bound"]["seconds"] > 0
    live = runs["live"]["figures"]
    burst = live["burst"]
    assert burst["runs"] == 2 and burst["bursts"] == 2 * 2  # two bursts in each of two runs
    for row in burst["per_burst"]:
        assert row["bars"] > 0 and row["bars_without_all_updates"] == 0
        assert row["stored_after_last_bar_ms"] is not None
        assert len(row["latency_ms"]) == 101 and row["latency_ms"] == sorted(row["latency_ms"])
        assert row["tail"]["batch"]["count"] > 0 and row["tail"]["write"]["items"] > 0
    fan = live["fanout"]["fanout"]
    assert fan["messages"] > 0 and fan["failed_connections"] == 0
    assert len(fan["latency_p99_ms_per_run"]) == 2 and len(fan["latency_ms"]) == 101
    assert [t["clients"] for t in live["scan"]["tried"]] == [8]
    # the API in a process of its own (`up --workers 1`), and one run in the pipeline's process
    assert live["workers"] == 1 and fan["cpu_s"]["api"] > 0 and fan["cpu_s"]["pipeline"] > 0
    base = live["in_process"]
    assert base["runs"] == 1 and base["fanout"]["messages"] > 0
    assert base["burst"]["bursts"] == 2 and base["fanout"]["cpu_s"]["api"] == 0
    rest = runs["rest"]["figures"]
    for side in ("candles", "noop"):
        for mode in ("saturated", "fixed_rate"):
            assert rest[side][mode]["requests_per_s"] > 0
            assert rest[side][mode]["non_2xx"] == 0
    assert rest["page_cache"]["hits"] > 0  # nothing writes: the candle pages are cached
    workers = rest["workers"]
    for run in (rest["uncached"]["saturated"], workers["candles"], workers["noop"]):
        assert run["requests_per_s"] > 0 and run["non_2xx"] == 0
    assert runs["store_writes"]["figures"]["store_candles_per_s"] > 0
    text = doc.read_text()
    assert "| 1 | resampler batch (history, columnar), in order |" in text
    # The README's table is the run's summary table, and the rest of the README is untouched.
    table = text[text.index("| # |") : text.index("\n\n", text.index("| # |"))]
    ours = readme.read_text()
    assert table in ours.replace("](docs/benchmarks.md#", "](#")
    before = (ROOT / "README.md").read_text()
    marker = "<!-- /bench-table -->"
    assert ours[ours.index(marker) :] == before[before.index(marker) :]
    assert "## 5. Store writes" in text and "## 8. History replay" in text
    assert "`speedlayer up --workers 1`" in text and "For comparison, 1 run(s)" in text
    # The pictures of the run, next to the document that shows them (bench/plots.py).
    for name in (PEERS_PNG, LATENCY_PNG):
        assert f"]({name})" in text
        width, height = decoded_size(tmp_path / name)
        assert width >= 600 and height >= 300


@pytest.mark.timeout(120)
def test_soak_runs_at_smoke_size(tmp_path: Path) -> None:
    """The soak (bench/soak.py, `make soak`) at its smoke size, about 40 s: the run completes,
    every check of "nothing dropped" passes, and the report shows it with its plot."""
    out, doc = tmp_path / "results.json", tmp_path / "benchmarks.md"
    command = [sys.executable, "-m", "bench", "--size", "smoke", "--only", "soak"]
    proc = subprocess.run(
        [*command, "--out", str(out), "--doc", str(doc)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    figures = results["runs"]["soak"]["figures"]
    failed = [check for check in figures["checks"] if not check["ok"]]
    assert not failed, failed
    assert figures["websocket"]["connections"] > figures["clients"]  # they churned
    assert figures["sse"]["connections"] > 0 and figures["rest"]["requests"] > 0
    assert len(figures["samples"]["rss_mib"]) >= figures["seconds"] / figures["sample_s"]
    [entry] = results["benchmarks"]
    assert entry["name"] == "soak" and entry["met"] is True
    assert (tmp_path / "soak.png").read_bytes().startswith(b"\x89PNG")
    text = doc.read_text()
    assert "## 7. Soak" in text and "![soak](soak.png)" in text and "**no**" not in text
