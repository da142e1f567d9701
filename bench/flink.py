"""The Flink SQL job (flink_sql/) against the embedded resampler (benchmark 6).

    .venv/bin/python -m bench.flink --symbols 2000 --minutes 500 --kafka-symbols 100000

Two parts:

* **files, the same input for both.** The bars of ``bench/resampler.py``'s disordered case
  (``symbols`` x ``minutes``, 2.5 % late, 2.5 % sent twice) in arrival order, written as the bus's
  JSON bar records, one per line. The Flink job runs on them with ``speedlayer flink run --env
  files`` as a subprocess, once per parallelism: its progress events on stderr give the start-up
  (process start to ``running``: the CLI, numbering the input, the JVM, planning, submitting),
  the processing time (``running`` to ``finished`` on the job's clock: deploying the tasks,
  reading and parsing the file, every interval, writing the changelog) and the candle updates
  written; the resident memory of the whole process tree (the CLI, the PyFlink Python and its
  JVM) is sampled from /proc every 0.2 s. The embedded resampler (``processors.resampler``) gets
  the same bars as Bar objects, frame by frame, as ``bench/resampler.py`` drives it, in a fresh
  child process. The check: per candle key the Flink update with the highest ``revision`` equals
  the embedded resampler's final candle in every field but ``revision`` (VWAP within 1e-12
  relative; docs/flink.md#semantics-compared-with-the-embedded-resampler).
* **Kafka, at scale.** An options-like universe (``kafka_symbols`` OCC-style tickers, one bar each
  per minute for ``kafka_minutes`` minutes, in time order) published to the raw topic of a real
  Kafka broker (``tests/kafka_broker.py``; or the one at ``$SPEEDLAYER_BENCH_KAFKA_BOOTSTRAP``),
  then ``speedlayer flink run --env kafka --bounded`` with ``speedlayer sink`` storing its output
  in SQLite as it comes: the job's sustained bars/s (``running`` to ``finished``) and the lag
  from ``running`` to the last candle stored (the store polled every 0.5 s); the stored candles
  are checked against the embedded resampler's.

The Flink side reads and parses JSON text, the embedded side is handed Bar objects: the ratio is
the job's processing rate over the resampler's, not an end-to-end comparison of two services.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import numpy as np

from bench.common import PeakRss, in_child
from bench.resampler import INTERVALS, MINUTE_MS, START_MS, arrival_order, feed_frames, make_bars

ROOT = Path(__file__).resolve().parent.parent
SPEEDLAYER = str(Path(sys.executable).with_name("speedlayer"))
DISORDER = 0.05  # bench/resampler.py's disordered case
# Synthetic bars are old: both sides keep them, so `ttl` is comparable and the store keeps them.
RETENTION = "*=100y"
VWAP_REL = 1e-12
SAMPLE_S = 0.2
POLL_S = 0.5
BAR_FIELDS = ("symbol", "t", "o", "h", "l", "c", "v", "vw", "n")
KAFKA_ENV = "SPEEDLAYER_BENCH_KAFKA_BOOTSTRAP"
PARTITIONS = 4  # of every topic the benchmark creates: room for parallelism 2 and 4
_PAGE = os.sysconf("SC_PAGE_SIZE")

Key = tuple[str, str, int]  # (symbol, interval, bucket start)


# The mini-cluster's heap (SPEEDLAYER_FLINK_HEAP) at full size: 1M bars keep about 5 GB of state.
HEAP = "6g"


def flink_env(heap: str, **extra: str) -> dict[str, str]:
    """The environment of the Flink job and the sink: the bench's intervals and retention, and
    the mini-cluster's ``heap``."""
    return {
        **os.environ,
        "SPEEDLAYER_FLINK_HEAP": heap,
        "SPEEDLAYER_INTERVALS": ",".join(INTERVALS),
        "SPEEDLAYER_RETENTION": RETENTION,
        "SPEEDLAYER_LOG_LEVEL": "warning",
        **extra,
    }


def interval_set() -> Any:
    from speedlayer.intervals import IntervalSet

    return IntervalSet(list(INTERVALS), {"*": RETENTION.split("=", 1)[1]})


def missing_prerequisite() -> str | None:
    """Why the Flink job cannot run here (no Java, no Flink virtualenv or jars), or None."""
    if shutil.which("java") is None:
        return "Java is not installed (the Flink job runs on it)"
    if not (ROOT / ".flink-venv" / "bin" / "python").exists():
        return "no Flink virtualenv (.flink-venv): run `make flink`"
    if not any((ROOT / ".flink" / "lib").glob("*.jar")):
        return "no Flink connector jars in .flink/lib: run `make flink`"
    return None


# -- memory of a process tree ---------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        kids[int(data[data.rindex(b")") + 2 :].split()[1])].append(int(entry.name))
    return kids


def _rss_and_name(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            rss = int(statm.read().split()[1]) * _PAGE
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return rss, comm.read().strip()
    except (OSError, IndexError, ValueError):
        return None


class TreeRss:
    """Peak resident memory of a process and all its descendants (sampled from /proc every
    ``SAMPLE_S``), in total and per part: the root (``cli``), ``java`` and the other processes
    (``python``: PyFlink's driver)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.parts: dict[str, int] = defaultdict(int)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        kids = _children()
        total = 0
        parts: dict[str, int] = defaultdict(int)
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            todo.extend(kids.get(pid, ()))
            found = _rss_and_name(pid)
            if found is None:
                continue
            rss, name = found
            total += rss
            parts["cli" if pid == self.pid else "java" if name == "java" else "python"] += rss
        self.samples += 1
        self.peak = max(self.peak, total)
        for part, rss in parts.items():
            self.parts[part] = max(self.parts[part], rss)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_S):
                return

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, Any]:
        return {
            "peak_rss_mib": round(self.peak / 2**20, 1),
            "peak_rss_mib_by_process": {
                k: round(v / 2**20, 1) for k, v in sorted(self.parts.items())
            },
        }


# -- the Flink job as a subprocess ----------------------------------------------------------------


class FlinkJob:
    """``speedlayer flink run ARGS`` in a process group of its own; its progress events (JSON
    lines on stderr) are collected with the wall time of their arrival, its tree's memory
    sampled."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.began = time.monotonic()
        self.proc = subprocess.Popen(
            [SPEEDLAYER, "flink", "run", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.events: dict[str, tuple[float, dict[str, Any]]] = {}
        self.tail: deque[str] = deque(maxlen=40)
        self.memory = TreeRss(self.proc.pid).__enter__()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.strip()
            if line.startswith('{"event"'):
                event = json.loads(line)
                self.events.setdefault(event["event"], (time.monotonic() - self.began, event))
            elif line:
                self.tail.append(line)

    def at(self, name: str) -> float | None:
        """Wall seconds from the process start to the event ``name`` (None if not seen)."""
        seen = self.events.get(name)
        return None if seen is None else seen[0]

    def field(self, name: str, key: str) -> Any:
        seen = self.events.get(name)
        return None if seen is None else seen[1].get(key)

    def wait(self, timeout_s: float) -> float:
        """Until the job exits (killed after ``timeout_s``); its wall time. RuntimeError unless
        it exits with 0."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(
                f"the Flink job did not finish in {timeout_s:.0f} s:\n" + "\n".join(self.tail)
            ) from None
        finally:
            wall = time.monotonic() - self.began
            self._reader.join(timeout=10)
            self.memory.__exit__(None, None, None)
        if self.proc.returncode != 0:
            raise RuntimeError(
                f"the Flink job exited with {self.proc.returncode}:\n" + "\n".join(self.tail)
            )
        return wall

    def stop(self) -> None:
        """The whole group (the CLI, PyFlink, the JVM): SIGTERM, then SIGKILL."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def timings(self, bars: int) -> dict[str, Any]:
        """Start-up, processing time and rate from the events (the job's own clock for the
        processing time, so that the pipe's delays do not count)."""
        running, finished = self.field("running", "seconds"), self.field("finished", "seconds")
        processing = None if running is None or finished is None else finished - running
        return {
            "startup_s": round(self.at("running") or 0.0, 1),
            "job_planned_s": self.field("planned", "seconds"),
            "job_running_s": running,
            "job_finished_s": finished,
            "processing_s": None if processing is None else round(processing, 1),
            "bars_per_s": round(bars / processing) if processing else None,
        }


# -- part 1: files --------------------------------------------------------------------------------


def disordered(symbols: int, minutes: int) -> tuple[list[Any], list[int]]:
    """bench/resampler.py's disordered bars in arrival order, and the bounds of each frame."""
    from speedlayer.models import Bar

    cols = make_bars(symbols, minutes)
    rows, arrive = arrival_order(cols, DISORDER)
    lists = {name: cols[name][rows].tolist() for name in BAR_FIELDS}
    bars = list(map(Bar, *(lists[name] for name in BAR_FIELDS)))
    bounds = np.searchsorted(arrive, np.arange(arrive[-1] + 2)).tolist()
    return bars, bounds


def write_input(symbols: int, minutes: int, path: str) -> int:
    """The disordered bars as the bus's JSON bar records, one per line; the number written."""
    from speedlayer.bus.wire import encode_item

    bars, _ = disordered(symbols, minutes)
    with open(path, "wb") as out:
        for i in range(0, len(bars), 50_000):
            out.write(b"".join(encode_item(bar) + b"\n" for bar in bars[i : i + 50_000]))
    return len(bars)


def newest_updates(path: Path) -> Iterator[Any]:
    """The candle records of a JSON-lines file, decoded in chunks."""
    from speedlayer.models import Candle

    decoder = msgspec.json.Decoder(Candle)
    with path.open("rb") as lines:
        rest = b""
        while chunk := lines.read(32 * 2**20):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            yield from decoder.decode_lines(chunk[:cut])
        if rest.strip():
            yield decoder.decode(rest)


def newest_per_key(candles: Iterable[Any]) -> dict[Key, Any]:
    out: dict[Key, Any] = {}
    for candle in candles:
        key = (candle.symbol, candle.interval, candle.timestamp)
        held = out.get(key)
        if held is None or candle.revision > held.revision:
            out[key] = candle
    return out


def compare(got: dict[Key, Any], want: dict[Key, Any]) -> dict[str, Any]:
    """How ``got`` (Flink's) differs from ``want`` (the embedded resampler's): every field but
    ``revision``, VWAP within 1e-12 relative, the rest exact."""
    from speedlayer.models import Candle

    fields = [name for name in Candle.__struct_fields__ if name != "revision"]
    missing = want.keys() - got.keys()
    extra = got.keys() - want.keys()
    examples = [f"missing {key}" for key in sorted(missing)[:3]]
    examples += [f"extra {key}" for key in sorted(extra)[:3]]
    mismatched = 0
    vwap_rel = 0.0
    for key, a in got.items():
        b = want.get(key)
        if b is None:
            continue
        if msgspec.structs.replace(b, revision=a.revision) == a:
            continue
        bad = []
        for name in fields:
            x, y = getattr(a, name), getattr(b, name)
            if x == y:
                continue
            if name == "vwap" and x is not None and y is not None:
                rel = abs(x - y) / max(abs(x), abs(y))
                vwap_rel = max(vwap_rel, rel)
                if rel <= VWAP_REL:
                    continue
            bad.append(f"{name}: flink {x!r}, embedded {y!r}")
        if bad:
            mismatched += 1
            if len(examples) < 8:
                examples.append(f"{key} " + "; ".join(bad))
    equal = not (missing or extra or mismatched)
    return {
        "result": "equal" if equal else "differ",
        "candles": len(want),
        "missing": len(missing),
        "extra": len(extra),
        "mismatched": mismatched,
        "vwap_max_rel_diff": float(f"{vwap_rel:.3g}"),
        "examples": examples,
    }


def run_embedded(symbols: int, minutes: int, outputs: Sequence[str]) -> dict[str, Any]:
    """The resampler on the disordered bars as bench/resampler.py drives it (timed), then its
    final candles compared with each Flink output (in this child process)."""
    from speedlayer.runtime import tune_gc

    bars, bounds = disordered(symbols, minutes)
    frames = [bars[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    intervals = interval_set()
    tune_gc()

    def feed(keep: dict[Key, Any] | None) -> int:
        collect = (
            None
            if keep is None
            else lambda c: keep.__setitem__((c.symbol, c.interval, c.timestamp), c)
        )
        return feed_frames(frames, intervals, collect)

    with PeakRss() as memory:
        began = time.perf_counter()
        emitted = feed(None)
        elapsed = time.perf_counter() - began
    figures: dict[str, Any] = {
        "bars": len(bars),
        "seconds": round(elapsed, 3),
        "bars_per_s": round(len(bars) / elapsed),
        "candle_updates": emitted,
        "peak_rss_mib": round(memory.mib, 1),
        "process_peak_rss_mib": round(memory.peak / 2**20, 1),
    }
    want: dict[Key, Any] = {}
    feed(want)
    bars.clear()  # memory for the outputs' candles
    frames.clear()
    figures["checks"] = [compare(newest_per_key(newest_updates(Path(p))), want) for p in outputs]
    return figures


def run_same(
    symbols: int,
    minutes: int,
    parallelisms: Sequence[int],
    tmp: Path,
    timeout_s: float,
    bootstrap: str | None,
    heap: str = HEAP,
) -> dict[str, Any]:
    """The job on the disordered bars from a file (parallelism 1: the files environment reads
    with one reader) and, with a broker, over Kafka at each of ``parallelisms``; then the
    embedded resampler on the same bars, and every job's candles checked against its."""
    source = tmp / "bars.jsonl"
    bars = in_child(__name__, "write_input", symbols, minutes, str(source))
    work, output = tmp / "files", tmp / "candles-files.jsonl"
    job = FlinkJob(
        ["--env", "files", "--input", str(source), "--output", str(output),
         "--work-dir", str(work)],
        flink_env(heap),
    )  # fmt: skip
    try:
        wall = job.wait(timeout_s)
    finally:
        job.stop()
        shutil.rmtree(work, ignore_errors=True)  # the changelog: gigabytes at full size
    source.unlink()
    runs = [
        {
            "environment": "files",
            "parallelism": 1,
            **job.timings(bars),
            "wall_s": round(wall, 1),
            "candle_updates": job.field("written", "records"),
            **job.memory.figures(),
        }
    ]
    outputs = [str(output)]
    if bootstrap is not None:
        kafka_runs, kafka_outputs = run_same_kafka(
            symbols, minutes, parallelisms, tmp, timeout_s, bootstrap, heap
        )
        runs += kafka_runs
        outputs += kafka_outputs
    embedded = in_child(__name__, "run_embedded", symbols, minutes, outputs)
    checks = embedded.pop("checks")
    for run, check in zip(runs, checks, strict=True):
        run["ratio"] = round(run["bars_per_s"] / embedded["bars_per_s"], 4)
        run["check"] = check
    return {"bars": bars, "flink": runs, "embedded": embedded}


# -- part 1b: the same bars over Kafka, at each parallelism --------------------------------------


async def newest_on_topics(bootstrap: str, topics: Sequence[str]) -> tuple[dict[Key, Any], int]:
    """Every record of ``topics`` (read to the end offsets at the start) decoded as the bus does
    (tombstones and retractions skipped): per key the candle with the highest revision, and the
    number of candle updates read."""
    from aiokafka import AIOKafkaConsumer

    from speedlayer.bus.wire import decode_record
    from speedlayer.models import Candle

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=16 * 2**20,
        fetch_max_bytes=64 * 2**20,
    )  # fmt: skip
    await consumer.start()
    try:
        # Without a group every partition of the topics is assigned once their metadata is in.
        want = len(topics) * PARTITIONS
        for _ in range(600):  # polled for 60 s at most
            if len(consumer.assignment()) >= want:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"{len(consumer.assignment())} of {want} partitions assigned")
        parts = sorted(consumer.assignment())
        ends = await consumer.end_offsets(parts)
        todo = {tp for tp in parts if ends[tp] > 0}
        newest: dict[Key, Any] = {}
        updates = 0
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1000, max_records=50_000)
            for tp, records in batches.items():
                for record in records:
                    candle = None if record.value is None else decode_record(record.value)
                    if not isinstance(candle, Candle):
                        continue
                    updates += 1
                    key = (candle.symbol, candle.interval, candle.timestamp)
                    held = newest.get(key)
                    if held is None or candle.revision > held.revision:
                        newest[key] = candle
                if records and records[-1].offset + 1 >= ends[tp]:
                    todo.discard(tp)
        return newest, updates
    finally:
        await consumer.stop()


def run_same_kafka(
    symbols: int,
    minutes: int,
    parallelisms: Sequence[int],
    tmp: Path,
    timeout_s: float,
    bootstrap: str,
    heap: str = HEAP,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The disordered bars of part 1 published to a raw topic (4 partitions, keyed by symbol),
    then ``flink run --env kafka --bounded`` once per parallelism (a topic prefix each). After
    each job its candle topics are read back; per key the newest update is written as JSON lines
    for the embedded resampler's check. Returns the runs' figures and those files."""
    from speedlayer.bus.base import candle_topic

    bars, _ = disordered(symbols, minutes)
    encoder = msgspec.json.Encoder()
    runs, outputs = [], []
    for parallelism in parallelisms:
        prefix = f"bench-{uuid.uuid4().hex[:8]}-"
        began = time.monotonic()
        asyncio.run(publish(bootstrap, prefix, bars))
        published = round(len(bars) / (time.monotonic() - began))
        env = flink_env(
            heap,
            SPEEDLAYER_BUS="kafka",
            SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            SPEEDLAYER_KAFKA_TOPIC_PREFIX=prefix,
            SPEEDLAYER_FLINK_CHECKPOINT_DIR=str(tmp / f"checkpoints-k{parallelism}"),
        )
        work = tmp / f"k{parallelism}"
        job = FlinkJob(
            ["--env", "kafka", "--bounded", "--fresh", "--work-dir", str(work),
             "--parallelism", str(parallelism)],
            env,
        )  # fmt: skip
        try:
            wall = job.wait(timeout_s)
        finally:
            job.stop()
            shutil.rmtree(work, ignore_errors=True)
        topics = [prefix + candle_topic(name) for name in INTERVALS]
        newest, updates = asyncio.run(newest_on_topics(bootstrap, topics))
        output = tmp / f"candles-k{parallelism}.jsonl"
        with output.open("wb") as out:
            for candle in newest.values():
                out.write(encoder.encode(candle) + b"\n")
        del newest
        runs.append(
            {
                "environment": "kafka",
                "parallelism": parallelism,
                "publish_bars_per_s": published,
                **job.timings(len(bars)),
                "wall_s": round(wall, 1),
                "candle_updates": updates,
                **job.memory.figures(),
            }
        )
        outputs.append(str(output))
    return runs, outputs


# -- part 2: Kafka at scale -----------------------------------------------------------------------

ROOTS = ("SPY", "QQQ", "IWM", "AAPL", "TSLA", "NVDA", "AMZN", "MSFT", "META", "AMD")


def option_symbols(count: int) -> list[str]:
    """``count`` OCC-style option tickers (``O:SPY260116C00450000``): roots x expiries x strikes
    x call/put."""
    out: list[str] = []
    strikes = max(1, -(-count // (len(ROOTS) * 12 * 2)))
    for root in ROOTS:
        for month in range(1, 13):
            for strike in range(strikes):
                for side in "CP":
                    out.append(f"O:{root}26{month:02d}16{side}{(50 + strike) * 1000:08d}")
    return out[:count]


def scale_bars(symbols: int, minutes: int) -> list[Any]:
    """One bar per symbol per minute for ``minutes`` minutes, in time order (a minute's burst)."""
    from speedlayer.models import Bar

    cols = make_bars(symbols, minutes, seed=23)
    names = np.array(option_symbols(symbols), dtype=object)
    cols["symbol"] = np.tile(names, minutes)
    lists = {name: cols[name].tolist() for name in BAR_FIELDS}
    return list(map(Bar, *(lists[name] for name in BAR_FIELDS)))


def expected_keys(symbols: int, minutes: int) -> int:
    ts = START_MS + np.arange(minutes, dtype=np.int64) * MINUTE_MS
    return symbols * sum(len(set((ts - ts % iv.interval_ms).tolist())) for iv in interval_set())


async def publish(bootstrap: str, prefix: str, bars: Sequence[Any], batch: int = 10_000) -> None:
    from speedlayer.bus.base import RAW_TOPIC
    from speedlayer.bus.kafka import KafkaBus

    async with KafkaBus(
        bootstrap, topic_prefix=prefix, intervals=INTERVALS, partitions=PARTITIONS
    ) as bus:
        await bus.ensure()  # the raw and candle topics
        for i in range(0, len(bars), batch):
            await bus.publish(RAW_TOPIC, bars[i : i + batch])


def stored_counts(db: Path) -> tuple[int, int]:
    """(candles stored, of which forming) in the sink's SQLite file; (0, 0) before it exists."""
    if not db.exists():
        return 0, 0
    total = forming = 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return 0, 0
    try:
        for iv in interval_set():
            total += conn.execute(f"SELECT COUNT(*) FROM {iv.table}").fetchone()[0]
            forming += conn.execute(f"SELECT COUNT(*) FROM {iv.table} WHERE final = 0").fetchone()[
                0
            ]
    except sqlite3.Error:  # tables not created yet
        return 0, 0
    finally:
        conn.close()
    return total, forming


def check_store(symbols: int, minutes: int, db: str) -> dict[str, Any]:
    """The stored candles against the embedded resampler's for the same bars (a child)."""
    from processors.resampler import Resampler
    from speedlayer.clock import ManualClock
    from speedlayer.models import Candle

    bars = scale_bars(symbols, minutes)
    resampler = Resampler(interval_set(), ManualClock(START_MS + (minutes + 300) * MINUTE_MS))
    want: dict[Key, Any] = {}
    for i in range(0, len(bars), symbols):  # one frame per minute
        for c in resampler.process(bars[i : i + symbols]).candles:
            want[(c.symbol, c.interval, c.timestamp)] = c
    del bars
    got: dict[Key, Any] = {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    columns = ", ".join(Candle.__struct_fields__)
    for iv in interval_set():
        for row in conn.execute(f"SELECT {columns} FROM {iv.table}"):
            s, name, ts, o, h, lo, c, v, vw, n, count, final, rev, ttl = row
            got[(s, name, ts)] = Candle(s, name, ts, o, h, lo, c, v, vw, n, count, bool(final),
                                        rev, ttl)  # fmt: skip
    conn.close()
    return compare(got, want)


@contextlib.contextmanager
def kafka_broker(tmp: Path) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """The broker at ``$SPEEDLAYER_BENCH_KAFKA_BOOTSTRAP``, or one started for the run (stopped
    after it): ``(bootstrap, figures)``; bootstrap None (and why, in figures) without one."""
    from tests.kafka_broker import KafkaBroker, missing_prerequisite

    bootstrap = os.environ.get(KAFKA_ENV)
    if bootstrap:
        yield bootstrap, {}
        return
    missing = missing_prerequisite()
    if missing:
        yield None, {"skipped": missing}
        return
    broker = KafkaBroker(tmp / "kafka")
    broker.start()
    try:
        yield broker.bootstrap, {"broker_start_s": round(broker.start_s or 0.0, 1)}
    finally:
        broker.stop()


def run_kafka(
    symbols: int,
    minutes: int,
    parallelism: int,
    tmp: Path,
    timeout_s: float,
    bootstrap: str,
    heap: str = HEAP,
) -> dict[str, Any]:
    figures: dict[str, Any] = {"symbols": symbols, "minutes": minutes, "parallelism": parallelism}
    if symbols <= 0 or minutes <= 0:
        return figures | {"skipped": "no bars asked for"}
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    env = flink_env(
        heap,
        SPEEDLAYER_BUS="kafka",
        SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        SPEEDLAYER_KAFKA_TOPIC_PREFIX=prefix,
        SPEEDLAYER_FLINK_CHECKPOINT_DIR=str(tmp / "checkpoints"),
        SPEEDLAYER_SINK_CONSUMER=f"{prefix}sink",
    )
    db, sink_log = tmp / "scale.db", tmp / "sink.log"
    sink: subprocess.Popen[bytes] | None = None
    job: FlinkJob | None = None
    try:
        bars = scale_bars(symbols, minutes)
        figures["bars"] = len(bars)
        began = time.monotonic()
        asyncio.run(publish(bootstrap, prefix, bars))
        figures["publish_bars_per_s"] = round(len(bars) / (time.monotonic() - began))
        del bars
        want = expected_keys(symbols, minutes)
        with sink_log.open("wb") as log:
            sink = subprocess.Popen(
                [SPEEDLAYER, "sink", "--db", str(db)],
                env=env | {"SPEEDLAYER_LOG_LEVEL": "info"},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        job = FlinkJob(
            ["--env", "kafka", "--bounded", "--work-dir", str(tmp / "work"),
             "--parallelism", str(parallelism)],
            env,
        )  # fmt: skip
        deadline = job.began + timeout_s
        first = done = None
        stored = forming = 0
        while time.monotonic() < deadline:
            if sink.poll() is not None:
                raise RuntimeError(f"speedlayer sink exited with {sink.returncode}")
            if job.proc.poll() not in (None, 0):
                job.wait(1)  # raises with the job's messages
            stored, forming = stored_counts(db)
            now = time.monotonic() - job.began
            if stored and first is None:
                first = now
            if stored >= want and not forming:
                done = now
                break
            time.sleep(POLL_S)
        wall = job.wait(max(1.0, deadline - time.monotonic()))
        running = job.at("running")
        figures |= job.timings(figures["bars"])
        figures |= {
            "wall_s": round(wall, 1),
            **job.memory.figures(),
            "candles_expected": want,
            "candles_stored": stored,
            "complete": done is not None,
            "first_stored_after_running_s": None
            if first is None or running is None
            else round(first - running, 1),
            "last_stored_after_running_s": None
            if done is None or running is None
            else round(done - running, 1),
        }
        if done is not None and running is not None:
            figures["end_to_end_bars_per_s"] = round(figures["bars"] / (done - running))
    finally:
        if job is not None:
            job.stop()
        if sink is not None and sink.poll() is None:
            sink.terminate()
            try:
                sink.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sink.kill()
                sink.wait(timeout=10)
    match = re.findall(rb"sink: (\d+) candles in, (\d+) written", sink_log.read_bytes())
    if match:
        figures["sink_candles_in"], figures["sink_candles_written"] = map(int, match[-1])
    figures["sink_exit_code"] = sink.returncode if sink is not None else None
    figures["check"] = in_child(__name__, "check_store", symbols, minutes, str(db))
    return figures


# -- the benchmark --------------------------------------------------------------------------------


def run(
    symbols: int,
    minutes: int,
    parallelisms: Sequence[int] = (1, 2),
    kafka_symbols: int = 100_000,
    kafka_minutes: int = 5,
    kafka_parallelism: int = 2,
    timeout_s: float = 1800,
    heap: str = HEAP,
) -> dict[str, Any]:
    """Both parts; the figures as ``bench/results.json`` records them."""
    missing = missing_prerequisite()
    if missing:
        raise RuntimeError(f"the Flink benchmark cannot run: {missing}")
    with tempfile.TemporaryDirectory(prefix="bench-flink-") as name:
        tmp = Path(name)
        with kafka_broker(tmp) as (bootstrap, broker):
            began = time.monotonic()
            same = run_same(symbols, minutes, parallelisms, tmp, timeout_s, bootstrap, heap)
            same["seconds"] = round(time.monotonic() - began, 1)
            for stale in tmp.glob("*.jsonl"):
                stale.unlink()
            began = time.monotonic()
            if bootstrap is None:
                scale = {"skipped": broker["skipped"]}
            else:
                scale = run_kafka(
                    kafka_symbols,
                    kafka_minutes,
                    kafka_parallelism,
                    tmp,
                    timeout_s,
                    bootstrap,
                    heap,
                )
            scale["seconds"] = round(time.monotonic() - began, 1)
    return {
        "symbols": symbols,
        "minutes": minutes,
        "intervals": list(INTERVALS),
        "broker": broker,
        "same_bars": same,
        "scale": scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=500)
    parser.add_argument(
        "--parallelisms",
        default="1,2",
        help="comma-separated, of the Kafka runs on the same bars (empty: none)",
    )
    parser.add_argument("--kafka-symbols", type=int, default=100_000)
    parser.add_argument("--kafka-minutes", type=int, default=5)
    parser.add_argument("--kafka-parallelism", type=int, default=2)
    parser.add_argument("--heap", default=HEAP, help="the mini-cluster's heap, as for -Xmx")
    args = parser.parse_args()
    parallelisms = [int(p) for p in args.parallelisms.split(",") if p.strip()]
    figures = run(args.symbols, args.minutes, parallelisms, args.kafka_symbols,
                  args.kafka_minutes, args.kafka_parallelism, heap=args.heap)  # fmt: skip
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
