"""The cost model: docs/cost.md is current, the traffic part scales with the bars, the fixed part
does not, and the price list is really what prices it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from launch.cli import main
from launch.cost import DOC, MEASURED, PRICES, estimate, load_prices, render_doc


def test_the_doc_is_current() -> None:
    assert DOC.read_text() == render_doc(), "run `python -m launch.cost`"


def test_the_traffic_part_scales_with_the_bars_and_the_fixed_part_does_not() -> None:
    small, large = estimate(100, "stocks"), estimate(200, "stocks")
    assert large.bars_per_month == 2 * small.bars_per_month == 2 * 100 * 390 * 21
    price = load_prices()["dynamodb"]["write_request_unit"]
    assert small.lines["DynamoDB writes"] == pytest.approx(
        small.bars_per_month * MEASURED["candle_writes_per_bar"] * price
    )
    assert large.lines["DynamoDB writes"] == pytest.approx(2 * small.lines["DynamoDB writes"])
    for name in small.fixed:
        assert large.lines[name] == small.lines[name], name
    assert small.total == pytest.approx(sum(small.lines.values()))
    crypto = estimate(100, "crypto")
    assert crypto.bars_per_month == 100 * 1440 * 30


def test_the_price_list_prices_it(tmp_path: Path) -> None:
    text = PRICES.read_text().replace("kpu_hour = 0.11", "kpu_hour = 0.22")
    assert text != PRICES.read_text()
    dearer = tmp_path / "prices.toml"
    dearer.write_text(text)
    runner = CliRunner()
    args = ["cost", "--symbols", "100", "--json"]
    base = json.loads(runner.invoke(main, args).output)
    result = runner.invoke(main, [*args, "--prices", str(dearer)])
    assert result.exit_code == 0, result.output
    changed = json.loads(result.output)
    flink = "Managed Flink KPUs"
    assert changed["usd_per_month"][flink] == pytest.approx(2 * base["usd_per_month"][flink])
    assert changed["total"] == pytest.approx(base["total"] + base["usd_per_month"][flink], abs=0.02)


def test_bad_arguments_are_usage_errors() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["cost", "--symbols", "0"]).exit_code == 2
    assert runner.invoke(main, ["cost", "--symbols", "10", "--market", "bonds"]).exit_code == 2
    out = runner.invoke(main, ["cost", "--symbols", "10"])
    assert out.exit_code == 0 and "| **total** |" in out.output
