"""Property-based fuzzing of the parsers that take outside input: the Polygon feed's frame parser
(``PolygonFeed._parse_frame``, what the WebSocket reader hands over) and the replay file readers
(``ingest.files.read_bars`` through ``ingest.replay.read_batches``).

Inputs are generated near the real formats (events with every field present, missing, of the
wrong type or out of range; CSV rows with bad cells; JSON lines, frames and REST responses) and
as arbitrary bytes. The properties: nothing raises (a file that is not a bar file at all gives
the one clear ``ReplayFormatError``); every bar that comes out is valid; every event or row is
accounted for, as a bar or as a counted reject.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.polygon.client import PolygonConfig, PolygonFeed
from ingest.replay import ReadCounts, read_batches
from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import ManualClock
from speedlayer.errors import ReplayFormatError
from speedlayer.models import MAX_PRICE, MAX_TRADES, MAX_VOLUME, Bar, validate_bar
from tests.fuzz_strategies import dumps
from tests.fuzz_strategies import json_values as json_values_of

FAST = bool(os.environ.get("SPEEDLAYER_TEST_FAST"))
FUZZ = settings(
    max_examples=60 if FAST else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
T0 = 1_700_000_040_000  # a whole minute

# -- strategies ----------------------------------------------------------------------------------

json_values = json_values_of()
prices = st.one_of(
    st.floats(0.01, 1000.0),
    st.sampled_from([0, -1.0, 1e308, MAX_PRICE * 2, "12.5", "abc", None, True]),
    json_values,
)
symbols = st.one_of(
    st.sampled_from(["AAPL", "BRK/B", "X:BTCUSD", "C:EURUSD", "", " ", "a" * 300, "A\nB", "*"]),
    st.text(max_size=10),
    json_values,
)
times = st.one_of(
    st.integers(0, 10_000).map(lambda k: T0 + k * 60_000),
    st.integers(-(2**64), 2**64),
    st.sampled_from(["1700000040000", 1.7e12, None, -60_000]),
    json_values,
)
volumes = st.one_of(
    st.floats(0, 1e7), st.sampled_from([-1, 1e300, MAX_VOLUME * 2, "7", None]), json_values
)
trades = st.one_of(st.integers(0, 10_000), st.sampled_from([-1, MAX_TRADES * 2, 2**80, 1.5]))


@st.composite
def am_events(draw: st.DrawFn) -> dict[str, Any]:
    """A minute-aggregate event: fields right, wrong, missing or extra."""
    event: dict[str, Any] = {
        "ev": draw(st.sampled_from(["AM", "AM", "AM", "XA", "CA", "A", "T", "status", "", None])),
        "sym": draw(symbols),
        "pair": draw(symbols),
        "s": draw(times),
        "o": draw(prices),
        "h": draw(prices),
        "l": draw(prices),
        "c": draw(prices),
        "v": draw(volumes),
        "vw": draw(st.one_of(st.none(), prices)),
        "n": draw(st.one_of(st.none(), trades)),
        "status": draw(st.sampled_from(["connected", "success", "auth_failed", "error", "x"])),
        "message": draw(st.text(max_size=20)),
    }
    if isinstance(event["s"], int):
        event["e"] = event["s"] + draw(st.sampled_from([60_000, 60_000, 1000, 0]))
    for name in draw(st.lists(st.sampled_from(sorted(event)), max_size=3)):
        event.pop(name, None)
    return event


frames = st.one_of(
    st.lists(st.one_of(am_events(), json_values), max_size=8).map(dumps),
    am_events().map(dumps),
    json_values.map(dumps),
    st.binary(max_size=200),
    st.lists(am_events(), max_size=4).map(lambda events: dumps(events)[:-1]),  # cut short
)


def assert_valid(bar: Bar) -> None:
    """Every bar that leaves a parser is one validate_bar accepts, with finite numbers."""
    again = validate_bar(bar.symbol, bar.t, bar.o, bar.h, bar.l, bar.c, bar.v, bar.vw, bar.n)
    assert again == bar
    assert all(math.isfinite(x) for x in (bar.o, bar.h, bar.l, bar.c, bar.v))


# -- the feed's frame parser ---------------------------------------------------------------------


def parse(frame: bytes) -> tuple[PolygonFeed, list[Bar]]:
    feed = PolygonFeed(
        PolygonConfig(api_key="fuzz-key", ws_url="ws://127.0.0.1:9"), MemoryBus(), ManualClock(T0)
    )
    bars: list[Bar] = []

    async def run() -> None:  # the parser warns through the running loop's clock
        feed._parse_frame(frame, bars)

    asyncio.run(run())
    return feed, bars


@FUZZ
@given(frames)
def test_any_frame_parses_without_raising_and_every_event_is_counted(frame: bytes) -> None:
    feed, bars = parse(frame)
    stats = feed.stats
    for bar in bars:
        assert_valid(bar)
    try:
        document = orjson.loads(frame)
    except orjson.JSONDecodeError:
        assert stats.rejected["malformed_json"] == 1 and not bars
        return
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        assert stats.rejected["frame_not_array"] == 1 and not bars
        return
    # One outcome per event: a bar, a counted reject, or a status message.
    assert stats.events == len(document)
    statuses = sum(stats.status_messages.values())
    assert len(bars) + sum(stats.rejected.values()) + statuses == len(document)


def test_a_valid_event_gives_its_bar() -> None:
    """The fuzzing above would pass for a parser that rejects everything: not this one."""
    event = {"ev": "AM", "sym": "AAPL", "s": T0, "e": T0 + 60_000, "o": 10.0, "h": 11.0,
             "l": 9.5, "c": 10.5, "v": 1200, "vw": 10.2, "n": 31}  # fmt: skip
    feed, bars = parse(dumps([event, {"ev": "status", "status": "success"}]))
    assert bars == [Bar("AAPL", T0, 10.0, 11.0, 9.5, 10.5, 1200.0, 10.2, 31)]
    assert not feed.stats.rejected and feed.stats.status_messages["success"] == 1


# -- the replay readers --------------------------------------------------------------------------

cells = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.just(""),
)


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    header = draw(st.sampled_from([
        ["symbol", "t", "o", "h", "l", "c", "v", "vw", "n"],
        ["symbol", "t", "o", "h", "l", "c", "v"],
        ["T", "Symbol", "O", "H", "L", "C", "V", "extra"],
        ["symbol", "t", "o"],
    ]))  # fmt: skip
    rows = draw(st.lists(st.lists(cells, max_size=len(header) + 2), max_size=8))
    good = draw(st.lists(st.integers(0, 50), max_size=3))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
    for k in good:  # well-formed rows, in the header's column order where it has them
        values = {"symbol": "AAPL", "t": T0 + k * 60_000, "o": 10, "h": 11, "l": 9, "c": 10,
                  "v": 100, "vw": 10.1, "n": 5}  # fmt: skip
        writer.writerow([values.get(column.lower(), "") for column in header])
    return buffer.getvalue()


json_texts = st.one_of(
    st.lists(st.one_of(am_events(), json_values), max_size=6).map(
        lambda docs: "\n".join(dumps(doc).decode() for doc in docs)
    ),
    st.lists(am_events(), max_size=6).map(lambda events: dumps(events).decode()),
    st.builds(
        lambda ticker, results: dumps({"ticker": ticker, "results": results}).decode(),
        symbols,
        st.one_of(st.lists(st.one_of(am_events(), json_values), max_size=5), json_values),
    ),
)
file_texts = st.one_of(
    csv_texts(),
    json_texts,
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda raw: raw.decode("utf-8", "replace")),
)


@FUZZ
@given(file_texts)
def test_any_file_reads_without_raising_and_every_record_is_counted(
    tmp_path_factory: Any, text: str
) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "bars.txt"
    path.write_text(text, encoding="utf-8")
    counts = ReadCounts()
    bars: list[Bar] = []
    try:
        for batch, _ in read_batches([path], batch_size=3, counts=counts):
            assert 0 < len(batch) <= 3
            bars.extend(batch)
    except ReplayFormatError as exc:  # a CSV without the bar columns: one clear error
        assert "header lacks" in str(exc)
        return
    for bar in bars:
        assert_valid(bar)
    assert counts.bars_read == len(bars) + sum(counts.rejected.values())
    assert set(counts.first_rejected) == set(counts.rejected)


def test_a_csv_with_good_and_bad_rows_keeps_the_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "symbol,t,o,h,l,c,v\n"
        f"AAPL,{T0},10,11,9,10,100\n"
        f"AAPL,{T0 + 60_000},10,nan,9,10,100\n"
        "AAPL,1,2\n"
        f"AAPL,{T0 + 120_000},10,11,9,10.5,7\n"
    )
    counts = ReadCounts()
    bars = [bar for batch, _ in read_batches([path], counts=counts) for bar in batch]
    assert [bar.t for bar in bars] == [T0, T0 + 120_000]
    assert counts.bars_read == 4 and sum(counts.rejected.values()) == 2
