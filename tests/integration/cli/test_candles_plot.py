"""`speedlayer candles SYMBOL --interval 15m --plot FILE` on replayed real bars: a candlestick
chart with volume that decodes, of the candles the same query prints; clear errors for what
cannot be drawn."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib.image
import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def realbars_db(realbars: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("plot") / "realbars.db"
    bars = realbars / "eqker_2019" / "bars_1m.csv"
    run_cli("replay", str(bars), "--db", str(db), "--retention", "*=100y", "--quiet")
    return db


def test_candles_plot_renders_the_queried_candles(realbars_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "charts" / "aapl.png"
    proc = run_cli(
        "candles", "AAPL", "--interval", "15m", "--db", str(realbars_db), "--plot", str(out)
    )
    printed = run_cli("candles", "AAPL", "--interval", "15m", "--db", str(realbars_db))
    rows = list(csv.DictReader(io.StringIO(printed.stdout)))
    assert len(rows) > 100
    assert proc.stdout == ""  # the chart instead of the table
    assert f"wrote {out} ({len(rows)} candles of AAPL 15m)" in proc.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    pixels = matplotlib.image.imread(out)
    height, width = pixels.shape[:2]
    assert 700 <= width <= 2000 and 400 <= height <= 1200, (width, height)
    # both colours of candles are on it (the real data has rising and falling quarters)
    rgb = {tuple(round(float(v) * 255) for v in p[:3]) for p in pixels.reshape(-1, pixels.shape[2])}
    assert (0x26, 0xA6, 0x9A) in rgb and (0xEF, 0x53, 0x50) in rgb
    # --limit narrows what is drawn, as it narrows what is printed; SVG by its extension
    svg = tmp_path / "aapl.svg"
    proc = run_cli(
        "candles", "aapl", "-i", "1h", "--limit", "20", "--db", str(realbars_db), "--plot", str(svg)
    )
    assert "(20 candles of AAPL 1h)" in proc.stderr
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def test_candles_plot_refuses_what_it_cannot_draw(realbars_db: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "candles", "NOPE", "-i", "15m", "--db", str(realbars_db), "--plot", str(tmp_path / "x.png"),
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "no stored candles of NOPE at 15m to plot" in proc.stderr
    assert not (tmp_path / "x.png").exists()
    odd = tmp_path / "x.bmpx"
    proc = run_cli(
        "candles", "AAPL", "-i", "15m", "--db", str(realbars_db), "--plot", str(odd), check=False
    )  # fmt: skip
    assert proc.returncode == 1 and "cannot write" in proc.stderr and "png" in proc.stderr
    assert "Traceback" not in proc.stderr
