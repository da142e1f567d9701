"""`speedlayer replay` end to end: files -> CLI (subprocess) -> SQLite -> `speedlayer candles`.

Expectations come from outside the code under test: the pandas oracle (tests/oracle.py) over bars
parsed here with the csv module, the vendor's own 15-minute bars, and hand-computed values.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ingest.replay import ReadCounts, read_batches
from launch.replay import replay_files
from processors.pipeline import CandlePipeline
from processors.resampler import Resampler
from speedlayer.clock import ManualClock
from speedlayer.intervals import DEFAULT_INTERVALS, IntervalSet
from speedlayer.models import Bar
from speedlayer.store.memory import MemoryStore
from tests.conftest import SPEEDLAYER, free_port, run_cli, wait_for_port
from tests.oracle import CandleValues, oracle_candles, values_close

INTERVAL_MS = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
}
TABLES = {
    "1m": "speed_layer_ohlcv_1min",
    "5m": "speed_layer_ohlcv_5min",
    "15m": "speed_layer_ohlcv_15min",
    "30m": "speed_layer_ohlcv_30min",
    "1h": "speed_layer_ohlcv_1h",
    "2h": "speed_layer_ohlcv_2h",
    "4h": "speed_layer_ohlcv_4h",
}
COLUMNS = (
    "symbol, interval, timestamp, open, high, low, close, volume, vwap, trades, bars, final, "
    "revision, ttl"
)
CSV_HEADER = (
    "symbol,interval,timestamp,open,high,low,close,volume,vwap,trades,bars,final,revision,ttl"
)
RETENTION_100Y_S = 100 * 365 * 86_400
NY = ZoneInfo("America/New_York")
T0 = 1_549_895_400_000  # 2019-02-11T14:30:00Z, a Monday's 09:30 New York open
MIN = 60_000
Key = tuple[str, str, int]  # (interval, symbol, bucket start)


# -- helpers ------------------------------------------------------------------------------------


def replay(db: Path, *files: Path, batch_size: int | None = None) -> dict[str, Any]:
    args = ["replay", *map(str, files), "--db", str(db), "--retention", "*=100y", "--json"]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    proc = run_cli(*args)
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary


def candles_json(db: Path, symbol: str, interval: str) -> list[dict[str, Any]]:
    proc = run_cli("candles", symbol, "--interval", interval, "--db", str(db), "--format", "json")
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def parse_bar(row: dict[str, str]) -> Bar:
    vw, n = row.get("vw") or "", row.get("n") or ""
    return Bar(
        row["symbol"], int(row["t"]), float(row["o"]), float(row["h"]), float(row["l"]),
        float(row["c"]), float(row["v"]), float(vw) if vw else None, int(n) if n else None,
    )  # fmt: skip


def read_csv_bars(*paths: Path) -> list[Bar]:
    """Bars of normalised CSV files in file order (the oracle's own reader, not ingest/)."""
    bars: list[Bar] = []
    for path in paths:
        with path.open(newline="") as handle:
            bars.extend(parse_bar(row) for row in csv.DictReader(handle))
    return bars


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def dump_tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every candle table, every column, in key order."""
    with sqlite3.connect(db) as conn:
        out = {
            name: conn.execute(
                f"SELECT {COLUMNS} FROM {table} ORDER BY symbol, timestamp"
            ).fetchall()
            for name, table in TABLES.items()
        }
    conn.close()
    return out


def db_values(db: Path) -> dict[Key, CandleValues]:
    out: dict[Key, CandleValues] = {}
    for name, rows in dump_tables(db).items():
        for r in rows:
            assert r[1] == name, f"interval column {r[1]!r} in table of {name}"
            out[(name, r[0], r[2])] = (r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])
    return out


def assert_values_match(actual: dict[Key, CandleValues], expected: dict[Key, CandleValues]) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing, f"{len(missing)} candles missing, first: {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected candles, first: {extra[:5]}"
    wrong = [
        (key, actual[key], expected[key])
        for key in sorted(expected)
        if not values_close(actual[key], expected[key])
    ]
    assert not wrong, f"{len(wrong)} candles differ (key, actual, expected), first: {wrong[:5]}"


def json_values(row: dict[str, Any]) -> CandleValues:
    return (
        row["open"], row["high"], row["low"], row["close"], row["volume"], row["vwap"],
        row["trades"], row["bars"],
    )  # fmt: skip


def expected_ttl(interval: str, start_ms: int) -> int:
    return (start_ms + INTERVAL_MS[interval]) // 1000 + RETENTION_100Y_S


# -- the full real data set -----------------------------------------------------------------------


class FullReplay:
    def __init__(self, db: Path, files: list[Path], summary: dict[str, Any], wall_s: float):
        self.db = db
        self.files = files
        self.summary = summary
        self.wall_s = wall_s
        self.bars = read_csv_bars(*files)
        self.expected = oracle_candles(self.bars, INTERVAL_MS)


@pytest.fixture(scope="module")
def full_replay(realbars: Path, tmp_path_factory: pytest.TempPathFactory) -> FullReplay:
    files = sorted(realbars.glob("*/bars_1m.csv"))
    assert len(files) == 3, files
    db = tmp_path_factory.mktemp("full") / "realbars.db"
    started = time.perf_counter()
    summary = replay(db, *files)
    wall_s = time.perf_counter() - started
    return FullReplay(db, files, summary, wall_s)


@pytest.mark.slow
def test_full_replay_summary_and_measurements(full_replay: FullReplay) -> None:
    summary, n = full_replay.summary, len(full_replay.bars)
    assert n > 120_000
    assert summary["files"] == 3
    assert summary["bars_read"] == n
    assert summary["accepted"] == n
    assert summary["duplicates"] == 0
    assert summary["rejected"] == 0 and summary["rejected_by_reason"] == {}
    assert summary["expired_on_write"] == 0
    db_bytes = sum(
        os.path.getsize(p)
        for p in (full_replay.db, Path(f"{full_replay.db}-wal"), Path(f"{full_replay.db}-shm"))
        if p.exists()
    )
    candles = sum(len(rows) for rows in dump_tables(full_replay.db).values())
    print(
        f"\n[replay] {n} real bars -> {candles} candles: "
        f"{n / full_replay.wall_s:,.0f} bars/s wall "
        f"(process incl. startup, {full_replay.wall_s:.2f} s), "
        f"{summary['bars_per_second']:,} bars/s as reported by the replay; "
        f"db {db_bytes / 1e6:.1f} MB = {db_bytes / n:,.0f} B/bar = "
        f"{db_bytes / n * 1e6 / 2**20:,.0f} MiB per million bars"
    )


@pytest.mark.slow
def test_full_replay_every_candle_matches_the_oracle(full_replay: FullReplay) -> None:
    assert_values_match(db_values(full_replay.db), full_replay.expected)
    symbols = {b.symbol for b in full_replay.bars}
    assert len(symbols) == 37
    for name, rows in dump_tables(full_replay.db).items():
        assert {r[0] for r in rows} == symbols, name
        for r in rows:
            symbol, _, ts, *_, final, revision, ttl = r
            assert ts % INTERVAL_MS[name] == 0
            assert final == 1, (name, symbol, ts)  # all history is far in the past
            assert revision >= 1
            assert ttl == expected_ttl(name, ts), (name, symbol, ts, ttl)


@pytest.mark.slow
@pytest.mark.parametrize("symbol", ["SPY", "AAPL", "BTCUSD", "GOOG"])
def test_candles_cli_json_matches_the_oracle(full_replay: FullReplay, symbol: str) -> None:
    """SPY and AAPL come from several files at different dates; BTCUSD is 24/7 crypto."""
    for name in INTERVAL_MS:
        rows = candles_json(full_replay.db, symbol, name)
        expected = {k: v for k, v in full_replay.expected.items() if k[:2] == (name, symbol)}
        assert [r["timestamp"] for r in rows] == sorted(k[2] for k in expected), name
        # equal up to float summation order (OHLC and counts exactly), like the SQLite read
        assert_values_match(
            {(name, r["symbol"], r["timestamp"]): json_values(r) for r in rows}, expected
        )
        for r in rows:
            assert r["interval"] == name
            assert r["final"] is True
            assert r["ttl"] == expected_ttl(name, r["timestamp"])
            assert isinstance(r["revision"], int) and r["revision"] >= 1


@pytest.mark.slow
def test_candles_cli_accepts_interval_aliases(full_replay: FullReplay) -> None:
    for alias, name in (("60m", "1h"), ("15min", "15m"), ("60min", "1h"), ("5min", "5m")):
        rows = candles_json(full_replay.db, "MSFT", alias)
        assert rows == candles_json(full_replay.db, "MSFT", name), alias
        assert rows and {r["interval"] for r in rows} == {name}


@pytest.mark.slow
def test_candles_cli_csv_format(full_replay: FullReplay) -> None:
    db = full_replay.db
    proc = run_cli("candles", "AAPL", "--interval", "15m", "--db", str(db), "--format", "csv")
    lines = proc.stdout.splitlines()
    assert lines[0] == CSV_HEADER
    as_json = candles_json(db, "AAPL", "15m")
    assert len(lines) == len(as_json) + 1 > 100
    for line, row in zip(lines[1:], as_json, strict=True):
        cells = next(csv.reader([line]))
        assert len(cells) == 14
        record = dict(zip(CSV_HEADER.split(","), cells, strict=True))
        assert record["vwap"] == "" and record["trades"] == ""  # null -> empty cell
        assert record["final"] == "true"
        assert record["symbol"] == "AAPL" and record["interval"] == "15m"
        assert int(record["timestamp"]) == row["timestamp"]
        for field in ("open", "high", "low", "close", "volume"):
            assert float(record[field]) == row[field], field
        for field in ("bars", "revision", "ttl"):
            assert int(record[field]) == row[field], field
    # the --start/--end/--limit flags select like the store does
    first, fourth = as_json[0]["timestamp"], as_json[3]["timestamp"]
    proc = run_cli(
        "candles", "AAPL", "-i", "15m", "--db", str(db), "--start", str(first),
        "--end", str(fourth), "--format", "json",
    )  # fmt: skip
    assert [r["timestamp"] for r in json.loads(proc.stdout)] == [
        r["timestamp"] for r in as_json[:3]
    ]
    proc = run_cli("candles", "AAPL", "-i", "15m", "--db", str(db), "--limit", "2")
    assert len(proc.stdout.splitlines()) == 3


# -- the vendor's own 15-minute bars ---------------------------------------------------------------

VENDOR_EXACT = ["SPY", "MSFT", "AMZN", "JPM", "GLD", "MU", "V", "XLP"]


def vendor_15m(path: Path) -> dict[int, tuple[float, float, float, float, float]]:
    """End-labelled, New York wall-time 15m bars of 2019-02-11..15 -> bucket start epoch ms."""
    out: dict[int, tuple[float, float, float, float, float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            end = datetime.strptime(row["datetime"], "%Y-%m-%d %H:%M:%S")
            start = (end - timedelta(minutes=15)).replace(tzinfo=NY)
            if not "2019-02-11" <= start.date().isoformat() <= "2019-02-15":
                continue
            start_ms = int(start.timestamp()) * 1000
            out[start_ms] = (
                float(row["open"]), float(row["high"]), float(row["low"]), float(row["close"]),
                float(row["volume"]),
            )  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("ticker", VENDOR_EXACT)
def test_15m_candles_equal_the_vendors_15m_bars(
    full_replay: FullReplay, realbars: Path, ticker: str
) -> None:
    vendor = vendor_15m(realbars / "eqker_2019" / "raw" / f"{ticker}_15min.csv")
    assert len(vendor) == 130  # 26 bars x 5 sessions
    # first bar of 2019-02-11 is labelled 09:45 New York = starts 14:30 UTC
    assert min(vendor) == T0
    lo, hi = T0, T0 + 5 * 86_400_000
    with sqlite3.connect(full_replay.db) as conn:
        ours = {
            ts: (o, h, low, c, v)
            for ts, o, h, low, c, v in conn.execute(
                "SELECT timestamp, open, high, low, close, volume FROM speed_layer_ohlcv_15min "
                "WHERE symbol = ? AND timestamp >= ? AND timestamp < ?",
                (ticker, lo, hi),
            )
        }
    conn.close()
    assert ours == vendor


# -- restart ------------------------------------------------------------------------------------

RESTART_SYMBOLS = ("SPY", "AAPL", "UGA", "VIX", "MSFT")
# 2019-02-13T18:07:00Z: inside the 16:00-20:00 UTC 4h bucket, the 18:00 1h bucket, the 18:05 5m one
SPLIT_MS = 1_550_081_220_000


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text + "+00:00").timestamp() * 1000)


def _tweak(
    row: list[str], *, volume: int = 0, close_to: str | None = None, low: float = 0
) -> list[str]:
    """A correction of a real row (columns symbol,market,t,o,h,l,c,v,vw,n); still a valid bar."""
    out = list(row)
    if volume:
        out[7] = str(int(out[7]) + volume)
    if close_to == "high":
        out[6] = out[4]
    elif close_to == "open":
        out[6] = out[3]
    if low:
        out[5] = repr(round(float(out[5]) - low, 4))
    return out


def add_vw(rows: Iterable[list[str]], *, zero_volume: bool = False) -> list[list[str]]:
    """Give real rows a plausible VWAP and trade count (the sources have neither).

    Bars with zero volume keep a blank vw unless ``zero_volume``.
    """
    out = []
    for row in rows:
        row = list(row)
        if zero_volume or float(row[7]) > 0:
            row[8] = repr(round((float(row[4]) + float(row[5]) + float(row[6])) / 3, 4))
        row[9] = str(int(row[7]) // 100 + 1)
        out.append(row)
    return out


def eqker_rows(realbars: Path, symbols: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    with (realbars / "eqker_2019" / "bars_1m.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [r for r in reader if r[0] in symbols]
    assert header == ["symbol", "market", "t", "o", "h", "l", "c", "v", "vw", "n"]
    return header, rows


def restart_files(realbars: Path, tmp: Path, with_vw: bool) -> tuple[Path, Path, Path]:
    header, rows = eqker_rows(realbars, RESTART_SYMBOLS)
    if with_vw:
        rows = add_vw(rows)
    rows.sort(key=lambda r: (int(r[2]), r[0]))  # live arrival order: by minute
    first = [r for r in rows if int(r[2]) < SPLIT_MS]
    second = [r for r in rows if int(r[2]) >= SPLIT_MS]
    by_key = {(r[0], int(r[2])): r for r in rows}

    def row(symbol: str, when: str) -> list[str]:
        return by_key[(symbol, _ms(when))]

    last_spy = [r for r in first if r[0] == "SPY"][-1]
    assert int(last_spy[2]) == SPLIT_MS - MIN
    middle = row("AAPL", "2019-02-13T17:32")
    assert middle[3] != middle[6]
    duplicate = row("SPY", "2019-02-13T16:30")
    if with_vw:  # one whose vw is not exactly vw * v / v in floating point
        duplicate = next(
            r
            for r in first
            if int(r[2]) >= _ms("2019-02-13T16:00")
            and r[8]
            and float(r[8]) * float(r[7]) / float(r[7]) != float(r[8])
        )
    early = [
        _tweak(last_spy, volume=100, close_to="high"),  # open 4h/1h/5m bucket of the split
        list(duplicate),  # exact duplicate, open 4h bucket
        _tweak(row("AAPL", "2019-02-11T15:00"), volume=1, low=0.01),  # long evicted buckets
        list(row("SPY", "2019-02-12T20:59")),  # exact duplicate, last bar of a session
        _tweak(middle, close_to="open"),  # mid-bucket: may leave the longer candles unchanged
    ]
    later = [
        _tweak(row("MSFT", "2019-02-13T18:06"), volume=7),  # last first-half minute, late
        _tweak(second[10], volume=3),  # a correction of a second-half bar, in the same file
        list(row("VIX", "2019-02-11T14:31")),  # exact duplicate of its very first minute
    ]
    second_file = early + second[:300] + later + second[300:]
    a = write_csv(tmp / "first.csv", header, first)
    b = write_csv(tmp / "second.csv", header, second_file)
    whole = write_csv(tmp / "whole.csv", header, first + second_file)
    return a, b, whole


@pytest.mark.slow
@pytest.mark.parametrize("with_vw", [False, True], ids=["no_vw", "vw"])
@pytest.mark.parametrize("batch_size", [5000, 97])
def test_replay_in_two_processes_equals_one_replay(
    realbars: Path, tmp_path: Path, batch_size: int, with_vw: bool
) -> None:
    first, second, whole = restart_files(realbars, tmp_path, with_vw)
    single_db, split_db = tmp_path / "single.db", tmp_path / "split.db"
    s_whole = replay(single_db, whole, batch_size=batch_size)
    s1 = replay(split_db, first, batch_size=batch_size)
    s2 = replay(split_db, second, batch_size=batch_size)
    single, split = dump_tables(single_db), dump_tables(split_db)
    for name in TABLES:
        assert len(split[name]) == len(single[name]), name
        diff = [(a, b) for a, b in zip(split[name], single[name], strict=True) if a != b]
        assert not diff, f"{name}: {len(diff)} rows differ (split, single), first: {diff[:3]}"
    # both are also right, not just equal
    assert_values_match(db_values(single_db), oracle_candles(read_csv_bars(whole), INTERVAL_MS))
    # 3 exact duplicates (2 early, 1 later), whichever process reads them
    assert s1["duplicates"] + s2["duplicates"] == 3
    assert s_whole["duplicates"] == 3
    assert s_whole["accepted"] == s1["accepted"] + s2["accepted"]
    assert s_whole["bars_read"] == s1["bars_read"] + s2["bars_read"]


# -- idempotence ----------------------------------------------------------------------------------


def assert_second_replay_changes_nothing(db: Path, source: Path, n: int) -> None:
    first = replay(db, source)
    before = dump_tables(db)
    second = replay(db, source)
    after = dump_tables(db)
    assert first["accepted"] == n
    for name in TABLES:
        diff = [(a, b) for a, b in zip(after[name], before[name], strict=True) if a != b]
        assert not diff, f"{name}: {len(diff)} rows changed (after, before), first: {diff[:3]}"
    assert after == before
    assert second["bars_read"] == n
    assert (second["duplicates"], second["accepted"], second["rejected"]) == (n, 0, 0)
    assert second["candles_published"] == 0


@pytest.mark.slow
def test_replaying_the_same_file_twice_changes_nothing(realbars: Path, tmp_path: Path) -> None:
    source = realbars / "eqker_2019" / "bars_1m.csv"
    assert_second_replay_changes_nothing(tmp_path / "twice.db", source, 43_164)


@pytest.mark.slow
@pytest.mark.parametrize("zero_volume", [False, True], ids=["vw", "vw_on_zero_volume_bars"])
def test_replaying_bars_with_vwap_twice_changes_nothing(
    realbars: Path, tmp_path: Path, zero_volume: bool
) -> None:
    """Same with vw and n present: a re-delivered bar must be recognised as a duplicate."""
    header, rows = eqker_rows(realbars, ("SPY", "AAPL", "VIX"))
    source = write_csv(tmp_path / "vw.csv", header, add_vw(rows, zero_volume=zero_volume))
    assert_second_replay_changes_nothing(tmp_path / "twice_vw.db", source, len(rows))


@pytest.mark.parametrize(
    "row",
    [
        # vw * v / v != vw in floating point (169.71000000000004)
        ["AAPL", T0, 169.87, 169.88, 169.6, 169.65, 106861, 169.71, 1068],
        # zero volume with a vw: the 1-minute candle's vwap is null
        ["VIX", T0 + MIN, 15.87, 15.87, 15.87, 15.87, 0, 15.87, 1],
    ],
    ids=["vw_not_round_tripping", "vw_on_zero_volume"],
)
def test_exact_redelivery_of_a_bar_with_vwap_is_a_duplicate(
    tmp_path: Path, row: list[object]
) -> None:
    """The smallest form of the two tests above: one bar, replayed by two processes."""
    path = write_csv(
        tmp_path / "one.csv", ["symbol", "t", "o", "h", "l", "c", "v", "vw", "n"], [row]
    )
    db = tmp_path / "one.db"
    replay(db, path)
    before = dump_tables(db)
    second = replay(db, path)
    assert dump_tables(db) == before
    assert (second["accepted"], second["duplicates"], second["candles_published"]) == (0, 1, 0)


# -- other formats ------------------------------------------------------------------------------


def _am(
    sym: str, t: int, o: float, h: float, lo: float, c: float, v: float, **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ev": "AM", "sym": sym, "v": v, "av": v * 10, "op": o, "o": o, "h": h, "l": lo, "c": c,
        "a": (h + lo) / 2, "z": 12, "s": t, "e": t + MIN, **extra,
    }  # fmt: skip
    return event


def test_polygon_am_event_lines(tmp_path: Path) -> None:
    status = [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
    auth = [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
    lines: list[object] = [
        status,
        auth,
        [  # one frame, two events
            _am("AAPL", T0, 170.0, 171.0, 169.5, 170.5, 1000, vw=170.2),
            _am("MSFT", T0, 105.0, 105.5, 104.8, 105.2, 500, vw=105.1),
        ],
        _am("AAPL", T0 + MIN, 170.5, 172.0, 170.4, 171.8, 3000, vw=171.0),  # a bare event
        # a second aggregate: not a minute bar
        [{"ev": "A", "sym": "AAPL", "v": 5, "o": 171.8, "h": 171.9, "l": 171.7, "c": 171.9,
          "vw": 171.8, "s": T0 + 2 * MIN, "e": T0 + 2 * MIN + 1000}],
        [
            {"ev": "XA", "pair": "BTC-USD", "o": 3600.0, "h": 3610.0, "l": 3590.0, "c": 3605.0,
             "v": 1.5, "vw": 3601.2, "z": 0.01, "s": T0, "e": T0 + MIN},
            {"ev": "CA", "pair": "EUR/USD", "o": 1.1301, "h": 1.1305, "l": 1.1299, "c": 1.1302,
             "v": 85, "s": T0, "e": T0 + MIN},
            {"ev": "status", "status": "success", "message": "subscribed to: AM.*"},
        ],
        # Polygon resends the AAPL minute with late trades
        [_am("AAPL", T0 + MIN, 170.5, 172.0, 170.4, 171.9, 3100, vw=171.05)],
        [_am("AAPL", T0 + 5 * MIN, 171.9, 172.5, 171.5, 172.1, 800, vw=172.0)],
    ]  # fmt: skip
    path = tmp_path / "am.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    db = tmp_path / "am.db"
    summary = replay(db, path)
    assert summary["rejected_by_reason"] == {"not_a_minute_aggregate": 1}
    assert summary["bars_read"] == 8  # 7 bars + the rejected A event; status events are not bars
    assert summary["accepted"] == 7
    bars = [
        Bar("AAPL", T0, 170.0, 171.0, 169.5, 170.5, 1000, 170.2),
        Bar("MSFT", T0, 105.0, 105.5, 104.8, 105.2, 500, 105.1),
        Bar("AAPL", T0 + MIN, 170.5, 172.0, 170.4, 171.8, 3000, 171.0),
        Bar("BTC-USD", T0, 3600.0, 3610.0, 3590.0, 3605.0, 1.5, 3601.2),
        Bar("EUR/USD", T0, 1.1301, 1.1305, 1.1299, 1.1302, 85),
        Bar("AAPL", T0 + MIN, 170.5, 172.0, 170.4, 171.9, 3100, 171.05),
        Bar("AAPL", T0 + 5 * MIN, 171.9, 172.5, 171.5, 172.1, 800, 172.0),
    ]
    actual = db_values(db)
    assert_values_match(actual, oracle_candles(bars, INTERVAL_MS))
    # by hand: the 5m candle of 14:30 holds AAPL's first two minutes, the second one corrected
    vwap = (170.2 * 1000 + 171.05 * 3100) / 4100
    assert values_close(
        actual[("5m", "AAPL", T0)], (170.0, 172.0, 169.5, 171.9, 4100, vwap, None, 2)
    )
    assert values_close(
        actual[("15m", "AAPL", T0)],
        (170.0, 172.5, 169.5, 172.1, 4900, (170.2 * 1000 + 171.05 * 3100 + 172.0 * 800) / 4900,
         None, 3),
    )  # fmt: skip
    assert actual[("1h", "EUR/USD", T0 - 30 * MIN)] == (1.1301, 1.1305, 1.1299, 1.1302, 85, None,
                                                        None, 1)  # fmt: skip
    rows = candles_json(db, "BTC-USD", "4h")
    assert [(r["timestamp"], r["close"], r["bars"]) for r in rows] == [(T0 - 150 * MIN, 3605.0, 1)]
    assert rows[0]["vwap"] == pytest.approx(3601.2, rel=1e-12)


def _rest(ticker: str, results: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "ticker": ticker, "queryCount": len(results), "resultsCount": len(results),
        "adjusted": True, "results": results, "status": "OK", "request_id": "abc123",
        "count": len(results), **extra,
    }  # fmt: skip


def _r(
    t: int, o: float, h: float, lo: float, c: float, v: float, vw: float, n: int
) -> dict[str, Any]:
    return {"v": v, "vw": vw, "o": o, "c": c, "h": h, "l": lo, "t": t, "n": n}


AAPL_REST = [
    _r(T0, 170.0, 171.0, 169.5, 170.5, 1000, 170.2, 31),
    _r(T0 + MIN, 170.5, 172.0, 170.4, 171.8, 3000, 171.0, 75),
    _r(T0 + 3 * MIN, 171.8, 171.8, 171.0, 171.1, 400, 171.3, 9),
]
AAPL_REST_PAGE2 = [_r(T0 + 16 * MIN, 171.0, 171.2, 170.9, 171.0, 250, 171.05, 4)]
MSFT_REST = [_r(T0 + 2 * MIN, 105.0, 105.5, 104.8, 105.2, 500, 105.1, 12)]


def _bars(ticker: str, results: list[dict[str, Any]]) -> list[Bar]:
    return [
        Bar(ticker, r["t"], r["o"], r["h"], r["l"], r["c"], r["v"], r["vw"], r["n"])
        for r in results
    ]


def test_polygon_rest_response_single_document(tmp_path: Path) -> None:
    path = tmp_path / "aapl.json"
    path.write_text(json.dumps(_rest("AAPL", AAPL_REST), indent=2))  # pretty-printed, many lines
    db = tmp_path / "rest.db"
    summary = replay(db, path)
    assert (summary["bars_read"], summary["accepted"], summary["rejected"]) == (3, 3, 0)
    actual = db_values(db)
    assert_values_match(actual, oracle_candles(_bars("AAPL", AAPL_REST), INTERVAL_MS))
    vwap = (170.2 * 1000 + 171.0 * 3000 + 171.3 * 400) / 4400
    assert values_close(
        actual[("5m", "AAPL", T0)], (170.0, 172.0, 169.5, 171.1, 4400, vwap, 115, 3)
    )
    # non-null vwap and trades in the CSV output
    proc = run_cli("candles", "AAPL", "-i", "5m", "--db", str(db), "--format", "csv")
    (header, line) = proc.stdout.splitlines()
    assert header == CSV_HEADER
    record = dict(zip(CSV_HEADER.split(","), next(csv.reader([line])), strict=True))
    assert abs(float(record["vwap"]) - vwap) < 1e-9
    assert record["trades"] == "115" and record["bars"] == "3"


def test_polygon_rest_responses_one_per_line(tmp_path: Path) -> None:
    documents = [
        _rest("AAPL", AAPL_REST, next_url="https://api.polygon.io/v2/aggs/cursor/x"),
        _rest("MSFT", MSFT_REST),
        {"ticker": "TSLA", "queryCount": 0, "resultsCount": 0, "adjusted": True, "status": "OK",
         "request_id": "empty"},
        _rest("AAPL", AAPL_REST_PAGE2),
    ]  # fmt: skip
    path = tmp_path / "aggs.jsonl"
    path.write_text("".join(json.dumps(doc) + "\n" for doc in documents))
    db = tmp_path / "rest_lines.db"
    summary = replay(db, path)
    assert (summary["bars_read"], summary["accepted"], summary["rejected"]) == (5, 5, 0)
    bars = _bars("AAPL", AAPL_REST) + _bars("MSFT", MSFT_REST) + _bars("AAPL", AAPL_REST_PAGE2)
    actual = db_values(db)
    assert_values_match(actual, oracle_candles(bars, INTERVAL_MS))
    assert actual[("30m", "AAPL", T0)][6:] == (31 + 75 + 9 + 4, 4)
    assert actual[("1m", "MSFT", T0 + 2 * MIN)] == (105.0, 105.5, 104.8, 105.2, 500, 105.1, 12, 1)


# -- bad input ----------------------------------------------------------------------------------

BAD_HEADER = ["symbol", "market", "t", "o", "h", "l", "c", "v", "vw", "n"]
GOOD_ROWS = [
    ["AAPL", "us_equity", str(T0), "170", "171", "169.5", "170.5", "1000", "170.2", "31"],
    ["AAPL", "us_equity", str(T0 + MIN), "170.5", "172", "170.4", "171.8", "3000", "", ""],
    ["MSFT", "us_equity", str(T0), "105", "105.5", "104.8", "105.2", "500", "105.1", ""],
    ["AAPL", "us_equity", str(T0 + 4 * MIN), "171.8", "171.8", "171", "171.1", "400", "", "9"],
    ["AAPL", "us_equity", str(T0 + 7 * MIN), "171", "171.2", "170.9", "171", "0", "", ""],
]
BAD_ROWS = [
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170.9"], "malformed_row"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "abc", "171", "170", "170.5", "1", "", ""],
     "not_a_number"),
    (["AAPL", "us_equity", "2019-02-11 14:32", "170", "171", "170", "170.5", "1", "", ""],
     "not_a_number"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170", "171", "170", "170.5", "1", "", "1.5"],
     "not_a_number"),
    (["AAPL", "us_equity", str(T0), "nan", "171", "170", "170.5", "1", "", ""],
     "price_not_finite"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170", "inf", "170", "170.5", "1", "", ""],
     "price_not_finite"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "-170", "171", "-171", "170.5", "1", "", ""],
     "price_not_positive"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170", "171", "170", "170.5", "-1", "", ""],
     "bad_volume"),
    (["AAPL", "us_equity", str(T0 + MIN), "170", "171", "170", "170.5", "nan", "", ""],
     "bad_volume"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170", "171", "170", "170.5", "inf", "", ""],
     "bad_volume"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170.5", "169", "170", "170", "1", "", ""],
     "high_below_low"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "172", "171", "170", "170.5", "1", "", ""],
     "open_close_outside_range"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170", "171", "170", "169", "1", "", ""],
     "open_close_outside_range"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN + 30_000), "170", "171", "170", "170.5", "1", "", ""],
     "time_not_minute_aligned"),
    (["AA PL", "us_equity", str(T0 + 2 * MIN), "170", "171", "170", "170.5", "1", "", ""],
     "bad_symbol"),
    (["", "us_equity", str(T0 + 2 * MIN), "170", "171", "170", "170.5", "1", "", ""],
     "bad_symbol"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170", "171", "170", "170.5", "1", "-5", ""],
     "bad_vwap"),
    (["AAPL", "us_equity", str(T0 + 2 * MIN), "170", "171", "170", "170.5", "1", "", "-3"],
     "bad_trade_count"),
]  # fmt: skip


def test_bad_rows_are_counted_and_good_rows_kept(tmp_path: Path) -> None:
    # interleave: good, bad, bad, good, ... and a blank line; bad rows may share a good row's key
    lines: list[list[str]] = []
    first_line: dict[str, int] = {}
    good = list(GOOD_ROWS)
    for i, (row, reason) in enumerate(BAD_ROWS):
        if i % 3 == 0 and good:
            lines.append(good.pop(0))
        lines.append(row)
        first_line.setdefault(reason, len(lines) + 1)  # +1: the header is line 1
    lines.append([])
    lines.extend(good)
    mixed = write_csv(tmp_path / "mixed.csv", BAD_HEADER, lines)
    clean = write_csv(tmp_path / "clean.csv", BAD_HEADER, GOOD_ROWS)
    mixed_db, clean_db = tmp_path / "mixed.db", tmp_path / "clean.db"
    summary = replay(mixed_db, mixed)
    replay(clean_db, clean)
    expected_reasons: dict[str, int] = {}
    for _, reason in BAD_ROWS:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert summary["rejected_by_reason"] == expected_reasons
    assert summary["rejected"] == len(BAD_ROWS)
    assert summary["accepted"] == len(GOOD_ROWS)
    assert summary["bars_read"] == len(BAD_ROWS) + len(GOOD_ROWS)
    for reason, line in first_line.items():
        assert summary["first_rejected"][reason] == f"{mixed}:{line}", reason
    assert dump_tables(mixed_db) == dump_tables(clean_db)
    assert_values_match(db_values(mixed_db), oracle_candles(read_csv_bars(clean), INTERVAL_MS))


async def test_replay_in_process_batches_and_summary(tmp_path: Path) -> None:
    """``read_batches`` (files -> batches) and ``launch.replay.replay_files`` (batches ->
    pipeline) in process: file order, batch sizes, the running counts and the CLI's summary."""
    bad = [row for row, _ in BAD_ROWS[:3]]
    mixed = write_csv(tmp_path / "mixed.csv", BAD_HEADER, [*GOOD_ROWS[:2], *bad])
    clean = write_csv(tmp_path / "clean.csv", BAD_HEADER, GOOD_ROWS[2:])
    files = [mixed, clean]
    expected = read_csv_bars(write_csv(tmp_path / "good.csv", BAD_HEADER, GOOD_ROWS))
    counts = ReadCounts()
    batches = []
    for batch, running in read_batches(files, 2, counts):
        assert running is counts
        batches.append(batch)
    assert [len(batch) for batch in batches] == [2] * (len(expected) // 2) + (
        [1] if len(expected) % 2 else []
    )
    assert [bar for batch in batches for bar in batch] == expected
    reasons = Counter(reason for _, reason in BAD_ROWS[:3])
    assert (counts.files, counts.bars_read, counts.rejected) == (2, len(GOOD_ROWS) + 3, reasons)
    assert counts.first_rejected[BAD_ROWS[0][1]] == f"{mixed}:4"

    # Now, as the CLI's clock says: the bars are history, final on arrival (a clock among the
    # bars would keep their candles forming, and forming candles are written at every revision)
    clock = ManualClock(int(time.time() * 1000))
    intervals = IntervalSet(list(DEFAULT_INTERVALS))
    store = MemoryStore(intervals, clock)
    await store.start()
    try:
        pipeline = CandlePipeline(Resampler(intervals, clock), store)
        summary = await replay_files(files, pipeline, batch_size=2)
    finally:
        await store.stop()
    cli = replay(tmp_path / "cli.db", *files, batch_size=2)
    ours = summary.as_dict()
    for volatile in ("seconds", "bars_per_second", "expired_on_write"):
        del ours[volatile], cli[volatile]
    assert ours == cli
    assert summary.accepted == len(expected)


def test_csv_without_the_required_header_is_a_clear_error(tmp_path: Path) -> None:
    headerless = write_csv(tmp_path / "noheader.csv", GOOD_ROWS[0], GOOD_ROWS[1:])
    proc = run_cli("replay", str(headerless), "--db", str(tmp_path / "x.db"), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "header" in proc.stderr and "noheader.csv" in proc.stderr
    no_volume = write_csv(
        tmp_path / "novolume.csv",
        ["symbol", "t", "o", "h", "l", "c"],
        [r[:1] + r[2:7] for r in GOOD_ROWS],
    )
    proc = run_cli("replay", str(no_volume), "--db", str(tmp_path / "y.db"), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "lacks v" in " ".join(proc.stderr.split())


def test_malformed_json_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    good1 = [_am("AAPL", T0, 170.0, 171.0, 169.5, 170.5, 1000)]
    good2 = _am("AAPL", T0 + MIN, 170.5, 172.0, 170.4, 171.8, 3000)
    text = "\n".join(
        [
            json.dumps(good1),
            "{not json at all",
            json.dumps([good2])[:40],  # truncated frame
            json.dumps({"hello": "world"}),
            json.dumps(good2),
            "",
        ]
    )
    path = tmp_path / "broken.jsonl"
    path.write_text(text)
    db = tmp_path / "broken.db"
    summary = replay(db, path)
    assert summary["rejected_by_reason"] == {"malformed_json": 2, "unknown_record": 1}
    assert summary["first_rejected"]["malformed_json"] == f"{path}:2"
    assert summary["accepted"] == 2
    bars = [
        Bar("AAPL", T0, 170.0, 171.0, 169.5, 170.5, 1000),
        Bar("AAPL", T0 + MIN, 170.5, 172.0, 170.4, 171.8, 3000),
    ]
    assert_values_match(db_values(db), oracle_candles(bars, INTERVAL_MS))


# -- last write wins ----------------------------------------------------------------------------


def test_last_write_wins_within_a_file(tmp_path: Path) -> None:
    header = ["symbol", "t", "o", "h", "l", "c", "v", "vw", "n"]
    rows = [
        ["AAPL", T0, 10, 12, 9, 11, 100, 10.5, 5],
        ["AAPL", T0 + MIN, 11, 11.5, 10.5, 11.2, 200, 11.1, 7],
        ["AAPL", T0 + 2 * MIN, 11.2, 11.3, 11.0, 11.1, 50, "", ""],
        ["AAPL", T0, 10.2, 11, 10, 10.8, 40, 10.6, 2],  # replaces the first row
        ["AAPL", T0 + MIN, 11, 11.5, 10.5, 11.2, 200, 11.1, 7],  # exact duplicate
        ["AAPL", T0 + 2 * MIN, 11.2, 11.4, 8.5, 11.1, 60, 11.2, 3],  # replaces the third row
    ]
    path = write_csv(tmp_path / "lww.csv", header, rows)
    db = tmp_path / "lww.db"
    summary = replay(db, path)
    assert (summary["bars_read"], summary["accepted"], summary["duplicates"]) == (6, 5, 1)
    actual = db_values(db)
    assert actual[("1m", "AAPL", T0)] == (10.2, 11.0, 10.0, 10.8, 40.0, 10.6, 2, 1)
    assert actual[("1m", "AAPL", T0 + 2 * MIN)] == (11.2, 11.4, 8.5, 11.1, 60.0, 11.2, 3, 1)
    vwap = (10.6 * 40 + 11.1 * 200 + 11.2 * 60) / 300
    # the replaced high 12 and low 9 are gone; volume 40 + 200 + 60
    assert values_close(actual[("5m", "AAPL", T0)], (10.2, 11.5, 8.5, 11.1, 300.0, vwap, 12, 3))
    for name in ("15m", "30m", "1h", "2h", "4h"):
        start = T0 - T0 % INTERVAL_MS[name]
        assert values_close(actual[(name, "AAPL", start)], actual[("5m", "AAPL", T0)]), name
    assert_values_match(actual, oracle_candles(read_csv_bars(path), INTERVAL_MS))
    # the same correction coming from a second file (another process) also replaces
    fix = write_csv(
        tmp_path / "fix.csv", header, [["AAPL", T0 + MIN, 11, 11.6, 10.5, 11.2, 10, "", ""]]
    )
    s2 = replay(db, fix)
    assert (s2["accepted"], s2["duplicates"]) == (1, 0)
    after = db_values(db)
    assert after[("1m", "AAPL", T0 + MIN)] == (11.0, 11.6, 10.5, 11.2, 10.0, None, None, 1)
    assert values_close(
        after[("5m", "AAPL", T0)],
        (10.2, 11.6, 8.5, 11.1, 110.0, (10.6 * 40 + 11.2 * 60) / 100, 5, 3),
    )


def test_summary_in_text_form(tmp_path: Path) -> None:
    """Without --json the summary is human-readable lines, with the rejection reasons."""
    path = write_csv(tmp_path / "few.csv", BAD_HEADER, [*GOOD_ROWS, BAD_ROWS[0][0]])
    proc = run_cli("replay", str(path), "--db", str(tmp_path / "t.db"), "--retention", "*=100y")
    out = proc.stdout
    assert "bars read: 6" in out
    assert "accepted: 5" in out
    assert "malformed_row: 1" in out


def test_history_past_its_retention_is_written_but_never_returned(tmp_path: Path) -> None:
    """Default retention (7..90 days from the candle's end): 2019 bars are expired on arrival."""
    path = write_csv(tmp_path / "old.csv", BAD_HEADER, GOOD_ROWS)
    db = tmp_path / "old.db"
    proc = run_cli("replay", str(path), "--db", str(db), "--json")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == len(GOOD_ROWS)
    assert summary["expired_on_write"] == summary["candles_published"] > 0
    assert "SPEEDLAYER_RETENTION" in proc.stderr  # the pipeline's warning, where it happens
    for name in INTERVAL_MS:
        out = run_cli("candles", "AAPL", "-i", name, "--db", str(db), "--format", "json").stdout
        assert json.loads(out) == [], name
    with sqlite3.connect(db) as conn:
        ttl = conn.execute(
            "SELECT ttl FROM speed_layer_ohlcv_4h WHERE symbol = 'AAPL' AND timestamp = ?",
            (T0 - 150 * MIN,),
        ).fetchone()[0]
    conn.close()
    assert ttl == (T0 - 150 * MIN + 4 * 3_600_000) // 1000 + 90 * 86_400
    served = tmp_path / "served.db"
    shutil.copyfile(db, served)
    purged = run_cli("purge", "--db", str(db)).stdout
    assert f"purged {summary['rows_written']} " in purged
    assert sqlite_rows(db) == 0

    # An API started on such a database purges them at once, and says why nothing is served.
    port = free_port()
    api = subprocess.Popen(
        [SPEEDLAYER, "api", "--db", str(served), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, api)
        deadline = time.monotonic() + 20
        while sqlite_rows(served) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        api.terminate()
        _, stderr = api.communicate(timeout=20)
    expected = f"purged {summary['rows_written']} candles past their retention at start-up"
    assert expected in stderr, stderr


def sqlite_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'speed_layer_%'"
            )
        ]
        count = sum(conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in tables)
    conn.close()
    return int(count)


def test_replaying_history_again_with_the_advised_retention_keeps_it(tmp_path: Path) -> None:
    """The advice of a replay of old history works: the same file again with a longer retention
    rewrites the ttl of every candle it covers, although every bar is a duplicate, and the
    candles are served; a third replay with that retention changes nothing."""
    path = write_csv(tmp_path / "old.csv", BAD_HEADER, GOOD_ROWS)
    db = tmp_path / "old.db"
    first = run_cli("replay", str(path), "--db", str(db)).stdout
    assert "--retention '*=10y'" in first and "note:" in first

    def replay_long() -> dict[str, Any]:
        args = ["replay", str(path), "--db", str(db), "--retention", "*=10y", "--json"]
        summary: dict[str, Any] = json.loads(run_cli(*args).stdout.strip().splitlines()[-1])
        return summary

    again = replay_long()
    assert again["accepted"] == 0 and again["duplicates"] == len(GOOD_ROWS)
    assert again["ttl_rewritten"] == again["candles_published"] > 0
    assert again["expired_on_write"] == 0
    for name, interval_ms in INTERVAL_MS.items():
        out = run_cli("candles", "AAPL", "-i", name, "--db", str(db), "--format", "json").stdout
        candles = json.loads(out)
        assert candles, name
        for candle in candles:
            assert candle["ttl"] == (candle["timestamp"] + interval_ms) // 1000 + 10 * 365 * 86_400
    with sqlite3.connect(db) as conn:
        stale = conn.execute("SELECT COUNT(*) FROM speed_layer_ohlcv_1min WHERE ttl < ?",
                             (int(time.time()),)).fetchone()[0]  # fmt: skip
    conn.close()
    assert stale == 0
    third = replay_long()
    assert third["ttl_rewritten"] == third["candles_published"] == third["rows_written"] == 0


# -- values whose sums would overflow -------------------------------------------------------------


def test_bars_too_large_to_sum_are_rejected_and_counted(tmp_path: Path) -> None:
    """Each of these bars is a well-formed row; a bucket of them would sum to inf (volume, VWAP)
    or overflow SQLite's integers (trades). They are counted and skipped; the rest is stored and
    every number served is finite, in the CLI and over REST (where the schema says number)."""
    big = [1e308] * 5
    rows = [
        ["BIG", T0, *big, 1e308, 5],
        ["BIG", T0 + MIN, *big, 1e308, 5],
        ["HUGE", T0, 1e16, 1e16, 1e16, 1e16, 10, "", ""],
        ["VOL", T0, 1, 2, 1, 2, 2e15, "", ""],
        ["NN", T0, 1, 2, 1, 2, 3, 1.5, 10**20],
        ["OK", T0, 1, 2, 1, 2, 3, 1.5, 4],
        ["OK", T0 + MIN, 1e15, 1e15, 1e15, 1e15, 1e15, 1e15, 10**12],  # at the bounds
    ]
    header = ["symbol", "t", "o", "h", "l", "c", "v", "vw", "n"]
    source = write_csv(tmp_path / "big.csv", header, rows)
    db = tmp_path / "big.db"
    summary = replay(db, source)
    assert summary["accepted"] == 2, summary
    assert summary["rejected_by_reason"] == {
        "price_too_large": 3,
        "volume_too_large": 1,
        "bad_trade_count": 1,
    }, summary
    for symbol in ("BIG", "HUGE", "VOL", "NN"):
        assert candles_json(db, symbol, "5m") == []
    csv_out = run_cli("candles", "OK", "--interval", "5m", "--db", str(db), "--format", "csv")
    assert "inf" not in csv_out.stdout.lower() and "nan" not in csv_out.stdout.lower()
    (candle,) = candles_json(db, "OK", "5m")
    assert candle["volume"] == 1e15 + 3 and candle["trades"] == 10**12 + 4
    assert candle["vwap"] is not None and candle["vwap"] > 0
