"""The Flink SQL job against the embedded resampler, on the same adversarial arrival of real
bars: late minutes, superseded versions, exact duplicates (docs/flink.md#semantics)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from speedlayer.models import Candle
from tests.conftest import run_cli
from tests.flink_helpers import (
    FLINK_ENV,
    INTERVALS,
    adversarial,
    differences,
    embedded_candles,
    newest,
    real_bars,
    write_bar_records,
)

pytestmark = pytest.mark.timeout(900)

MINUTES = 480  # two whole 4h buckets of 24 tickers


def read_candles(path: Path) -> list[Candle]:
    decoder = msgspec.json.Decoder(Candle)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line]


def test_flink_job_gives_the_embedded_candles_on_adversarial_real_bars(
    tmp_path: Path, realbars: Path, flink_ready: None
) -> None:
    bars = real_bars(realbars, MINUTES)
    arrivals = adversarial(bars)
    assert len(arrivals) > len(bars)  # resends and duplicates are in the input
    source = write_bar_records(arrivals, tmp_path / "bars.jsonl")
    output = tmp_path / "candles.jsonl"
    # Paths relative to the working directory, as a user types them.
    proc = run_cli(
        "flink", "run", "--env", "files", "--input", source.name, "--output", output.name,
        "--work-dir", "work", env=FLINK_ENV, timeout=800, cwd=tmp_path,
    )  # fmt: skip
    # Its progress on stderr (not a terminal): the job's events as JSON lines, in order.
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    names = [event["event"] for event in events]
    assert [n for n in names if n != "first_output"] == [
        "planned", "running", "finished", "written",
    ], names  # fmt: skip
    assert names.index("running") < names.index("first_output") < names.index("finished")
    assert proc.stdout == ""
    updates = read_candles(output)
    got = newest(updates)
    want = embedded_candles(arrivals)
    assert differences(got, want) == []
    assert all(candle.final for candle in got.values())
    # Forming candles were published before their bucket closed: for the long buckets, which
    # stay open across many of the job's updates, always, and for the longest several per
    # candle. (How many a short bucket gets depends on how far the watermark had got when each
    # update was computed: a 5-minute bucket may close before its first update is emitted.)
    forming = Counter(c.interval for c in updates if not c.final)
    assert all(forming[name] > 0 for name in ("1h", "2h", "4h")), forming
    assert forming["4h"] > 2 * sum(1 for key in want if key[1] == "4h"), forming
    # ... and each key's last update on the way out is its highest revision: a consumer that
    # simply keeps the last update per candle ends up with the same candles.
    last = {(c.symbol, c.interval, c.timestamp): c for c in updates}
    assert differences(last, want) == []
    # The output stays within a small multiple of one update per bar and interval.
    assert len(updates) <= 2 * len(arrivals) * len(INTERVALS)
