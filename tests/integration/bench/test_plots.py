"""The benchmarks' pictures (bench/plots.py) drawn from a results file alone: `python -m
bench.plots` on a copy of the committed bench/results.json writes PNGs that decode, with the
figures the results hold; the report shows them. The smoke run of every benchmark
(test_bench_smoke.py) checks the plots of a fresh run with full latency distributions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np

from bench import plots
from bench.report import render
from tests.conftest import ROOT


def decoded_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG that decodes; fails if it does not."""
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    # not a blank canvas: a drawing has many distinct colours
    assert len({tuple(p) for p in pixels[:: max(1, height // 50), ::7].reshape(-1, 4)}) > 5
    return width, height


def test_plots_of_the_committed_results(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text((ROOT / "bench" / "results.json").read_text())
    out = tmp_path / "docs"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.plots", "--results", str(results), "--out-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(results.read_text())["runs"]
    expected = plots.available(runs)
    assert {plots.PEERS_PNG, plots.LATENCY_PNG} <= expected
    assert sorted(Path(line).name for line in proc.stdout.split()) == sorted(expected)
    for name in expected:
        width, height = decoded_size(out / name)
        assert 600 <= width <= 2000 and 300 <= height <= 2500, (name, width, height)
    # One panel per comparison of the summary table, each peer with the ratio the table shows.
    panels = plots.peer_panels(runs)
    cases = runs["resampler"]["figures"]["cases"]
    assert len(panels) == len(cases) + sum(
        name in runs for name in ("history", "rest", "store_writes", "flink")
    )
    title, _, bars = panels[0]
    assert title == "resampler batch, in order"
    assert bars[0] == ("speedlayer columnar", cases["in_order"]["batch"]["bars_per_s"], None)
    assert {label: ratio for label, _, ratio in bars[1:]} == cases["in_order"]["batch_ratio"]


def test_the_report_shows_the_plots_it_has_figures_for(tmp_path: Path) -> None:
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    render(results, tmp_path / "benchmarks.md")
    text = (tmp_path / "benchmarks.md").read_text()
    assert f"]({plots.PEERS_PNG})" in text and f"]({plots.LATENCY_PNG})" in text
    only_rest = {"command": "x", "runs": {"rest": results["runs"]["rest"]}}
    render(only_rest, tmp_path / "rest.md")
    text = (tmp_path / "rest.md").read_text()
    assert f"]({plots.PEERS_PNG})" in text and plots.LATENCY_PNG not in text
    assert plots.write(only_rest, tmp_path / "rest") == [tmp_path / "rest" / plots.PEERS_PNG]


def test_a_file_that_is_not_results_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text('{"size": "full"}')
    proc = subprocess.run(
        [sys.executable, "-m", "bench.plots", "--results", str(bad), "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and "not a benchmark results file" in proc.stderr
    assert not list(tmp_path.glob("*.png"))


def test_latency_plot_uses_the_distribution_when_stored() -> None:
    """With the 0th..100th percentiles stored (bench/live.py), each burst is a curve of 101
    points; without them, the three stored percentiles are points."""
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    live = results["runs"]["live"]["figures"]
    fan = live["fanout"]["fanout"]
    key = "latency_ms"
    for row in live["burst"]["per_burst"]:
        row.pop(key, None)
    fan.pop(key, None)
    fig = plots.latency_figure(results["runs"])
    assert fig is not None
    lines = fig.axes[0].get_lines()
    points = [len(np.asarray(line.get_xdata())) for line in lines if line.get_marker() == "o"]
    assert points == [3] * len(live["burst"]["per_burst"])
    for row in live["burst"]["per_burst"]:
        row[key] = [float(i) for i in range(101)]
    fan[key] = [float(i) for i in range(101)]
    fig = plots.latency_figure(results["runs"])
    assert fig is not None
    curves = [line for line in fig.axes[0].get_lines() if len(np.asarray(line.get_xdata())) == 101]
    assert len(curves) == len(live["burst"]["per_burst"])
    assert list(np.asarray(curves[0].get_ydata()))[:2] == [0.0, 0.01]
