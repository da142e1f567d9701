"""The ingest service's embedded-metric-format lines (launch/emf.py): what CloudWatch Logs needs
to turn a line into metrics, and that ``speedlayer ingest``'s reporter writes one per interval
with the feed lag only when a namespace is set (the AWS stack's feed lag alarm reads it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from ingest.polygon.client import FeedStats
from launch import emf
from launch.services import _report_feed


def test_a_line_declares_each_metric_with_its_unit_and_the_service_dimension() -> None:
    line = emf.emf_line(
        "Speedlayer/Test", "ingest", 1_700_000_000_000, {"FeedLagSeconds": 2.5}, {"Bars": 7}
    )
    doc = json.loads(line)
    assert "\n" not in line  # one log event per line
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert doc["_aws"]["Timestamp"] == 1_700_000_000_000
    assert directive["Namespace"] == "Speedlayer/Test"
    assert directive["Dimensions"] == [["Service"]]
    assert directive["Metrics"] == [
        {"Name": "FeedLagSeconds", "Unit": "Seconds"},
        {"Name": "Bars", "Unit": "Count"},
    ]
    assert doc["Service"] == "ingest" and doc["FeedLagSeconds"] == 2.5 and doc["Bars"] == 7


def test_an_unknown_value_is_left_out_not_sent_as_null() -> None:
    doc = json.loads(emf.emf_line("N", "ingest", 0, {"FeedLagSeconds": None}, {"Bars": 0}))
    assert "FeedLagSeconds" not in doc
    assert doc["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "Bars", "Unit": "Count"}]


async def _report(namespace: str, stats: FeedStats, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run the reporter (every 10 ms) until it wrote a line, add 10 bars and a rejection, run it
    until that is written too (or 2 s passed); the lines on stdout."""
    feed: Any = SimpleNamespace(stats=stats)
    target = stats.bars_published + 10
    task = asyncio.create_task(_report_feed(feed, 0.01, namespace))
    lines: list[str] = []

    async def until(done: Any) -> None:
        deadline = time.monotonic() + 2
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            lines.extend(capsys.readouterr().out.splitlines())

    await until(lambda: lines)
    stats.bars_published += 10
    stats.rejected["bad_price"] += 1
    await until(lambda: sum(json.loads(line)[emf.BARS_PUBLISHED] for line in lines) >= target)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return lines + capsys.readouterr().out.splitlines()


async def test_ingest_writes_feed_lag_and_interval_counts_when_a_namespace_is_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now_ms = time.time_ns() // 1_000_000
    stats = FeedStats(bars_published=5, rejected=Counter(), last_bar_end_ms=now_ms - 30_000)
    lines = await _report("Speedlayer/Test", stats, capsys)
    docs = [json.loads(line) for line in lines]
    assert len(docs) >= 2
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Speedlayer/Test" for d in docs)
    assert 29 <= docs[0][emf.FEED_LAG] < 40
    assert docs[0][emf.BARS_PUBLISHED] == 5  # counts are per interval, not totals
    assert sum(d[emf.BARS_PUBLISHED] for d in docs) == 15
    assert sum(d[emf.BARS_REJECTED] for d in docs) == 1


async def test_ingest_writes_no_metric_lines_without_a_namespace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stats = FeedStats(bars_published=5, last_bar_end_ms=time.time_ns() // 1_000_000)
    feed: Any = SimpleNamespace(stats=stats)
    task = asyncio.create_task(_report_feed(feed, 0.01, ""))
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert capsys.readouterr().out == ""


async def test_before_the_first_bar_the_lag_is_absent(capsys: pytest.CaptureFixture[str]) -> None:
    lines = await _report("N", FeedStats(), capsys)
    assert lines and all(emf.FEED_LAG not in json.loads(line) for line in lines)
