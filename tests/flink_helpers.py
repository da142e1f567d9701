"""What the Flink tests share: the adversarial arrival order of real bars, the embedded
resampler's candles for it, and the comparison of two candle sets."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from ingest.files import read_bars
from processors.resampler import Resampler
from processors.sink import newest_per_key
from speedlayer.bus.wire import encode_item
from speedlayer.clock import ManualClock
from speedlayer.intervals import DEFAULT_INTERVALS, MINUTE_MS, IntervalSet
from speedlayer.models import Bar, Candle

# Real bars are years old: the tests keep them (and give the Flink job the same retention).
RETENTION = "*=100y"
INTERVALS = IntervalSet(list(DEFAULT_INTERVALS), {"*": "100y"})
FLINK_ENV = {"SPEEDLAYER_RETENTION": RETENTION, "SPEEDLAYER_LOG_LEVEL": "warning"}
CandleKey = tuple[str, str, int]
# Polygon resends a minute up to about 15 minutes later: the arrival jitter stays inside that.
CORRECTION_WINDOW_MIN = 12


def real_bars(realbars: Path, minutes: int) -> list[Bar]:
    """The first ``minutes`` minutes of realbars/eqker_2019 (24 US tickers), in time order."""
    bars = [b for b in read_bars(realbars / "eqker_2019" / "bars_1m.csv") if isinstance(b, Bar)]
    first = min(bar.t for bar in bars)
    out = [bar for bar in bars if bar.t < first + minutes * MINUTE_MS]
    out.sort(key=lambda b: (b.t, b.symbol))
    return out


def adversarial(bars: Sequence[Bar], seed: int = 7) -> list[Bar]:
    """``bars`` as a messy feed would deliver them: a tenth arrive up to CORRECTION_WINDOW_MIN
    minutes late, 3 % are first sent in a version that a later resend supersedes, 2 % are sent
    twice. The newest version of every minute is the true bar, so the final candles are those
    of ``bars``."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, int, Bar]] = []
    for i, bar in enumerate(bars):
        minute = bar.t / MINUTE_MS
        at = minute + (rng.uniform(0, CORRECTION_WINDOW_MIN) if rng.random() < 0.10 else 0.0)
        if rng.random() < 0.03:
            early = Bar(
                bar.symbol, bar.t, bar.o, bar.h * 1.01, bar.l * 0.99, bar.o, bar.v + 100,
                None if bar.vw is None else bar.vw * 1.001, None if bar.n is None else bar.n + 1,
            )  # fmt: skip
            arrivals.append((minute, 3 * i, early))
            at = max(at, minute + rng.uniform(1, CORRECTION_WINDOW_MIN))
        arrivals.append((at, 3 * i + 1, bar))
        if rng.random() < 0.02:
            arrivals.append((at + rng.uniform(0, 3), 3 * i + 2, bar))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return [bar for _, _, bar in arrivals]


def write_bar_records(bars: Iterable[Bar], path: Path) -> Path:
    """Bars as the bus's JSON records, one per line (the Flink job's files environment)."""
    with path.open("wb") as f:
        for bar in bars:
            f.write(encode_item(bar) + b"\n")
    return path


def embedded_candles(arrivals: Sequence[Bar], batch: int = 500) -> dict[CandleKey, Candle]:
    """The embedded resampler's candles for ``arrivals`` in that order: per key, the newest."""
    clock = ManualClock(max(bar.t for bar in arrivals) + 365 * 24 * 60 * MINUTE_MS)
    resampler = Resampler(INTERVALS, clock)
    out: dict[CandleKey, Candle] = {}
    for i in range(0, len(arrivals), batch):
        for candle in resampler.process(arrivals[i : i + batch]).candles:
            out[(candle.symbol, candle.interval, candle.timestamp)] = candle
    return out


def final_at(candles: dict[CandleKey, Candle], watermark: int) -> dict[CandleKey, Candle]:
    """``candles`` as a job whose watermark stands at ``watermark`` (epoch ms) has them: final
    only where the bucket ends at or before it (an unbounded job never closes its newest
    buckets; the embedded resampler's far-future clock closes every one)."""
    ends = {interval.name: interval.interval_ms for interval in INTERVALS}
    return {
        key: msgspec.structs.replace(c, final=c.timestamp + ends[c.interval] <= watermark)
        for key, c in candles.items()
    }


def newest(candles: Iterable[Candle]) -> dict[CandleKey, Candle]:
    """Per key, the candle with the highest revision (what a consumer of the bus keeps)."""
    return {(c.symbol, c.interval, c.timestamp): c for c in newest_per_key(candles)}


def differences(got: dict[CandleKey, Candle], want: dict[CandleKey, Candle]) -> list[str]:
    """Every way ``got`` differs from ``want``: missing or extra keys, and any field apart from
    ``revision`` (VWAP within 1e-12 relative, everything else exact)."""
    out = [f"missing {key}" for key in sorted(want.keys() - got.keys())]
    out += [f"extra {key}" for key in sorted(got.keys() - want.keys())]
    for key in sorted(want.keys() & got.keys()):
        a, b = got[key], want[key]
        for name in Candle.__struct_fields__:
            if name == "revision":
                continue
            x, y = getattr(a, name), getattr(b, name)
            if name == "vwap" and x is not None and y is not None:
                same = math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0)
            else:
                same = x == y
            if not same:
                out.append(f"{key} {name}: got {x!r}, want {y!r}")
    return out


def stop_group(job: subprocess.Popen[bytes], within_s: float = 60) -> None:
    """SIGTERM to a job started in a process group of its own (the CLI, PyFlink, the JVM: all
    signalled at once, as a service manager does); it must exit ``within_s``. Whatever is left
    of the group is killed either way."""
    try:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout=within_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
