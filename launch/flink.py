"""Render and run the Flink SQL job (flink_sql/) from the service's settings.

The job runs in the Flink virtualenv (``make flink``: ``.flink-venv`` with apache-flink, and the
connector jars in ``.flink/lib``), as a child process: ``flink_sql/job.py`` with the rendered
spec. Locally it runs on a mini-cluster inside that process, bound to 127.0.0.1, with its
temporary files under ``work_dir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from flink_sql import JOB_SCRIPT, STREAMING, JobOptions, JobSpec, render
from speedlayer.config import Settings
from speedlayer.errors import ConfigError, RunnerError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# A mini-cluster in one JVM: the job's heap, and every listener on loopback only.
LOCAL_CONFIG = {
    "rest.bind-address": "127.0.0.1",
    "rest.address": "127.0.0.1",
    "jobmanager.bind-host": "127.0.0.1",
    "taskmanager.bind-host": "127.0.0.1",
    "taskmanager.host": "127.0.0.1",
}


def job_options(settings: Settings, **overrides: object) -> JobOptions:
    """The job's options from the settings (Kafka brokers and topic prefix, state TTL,
    parallelism), with ``overrides`` (e.g. ``environment``, ``bounded``, ``input_path``)."""
    values: dict[str, object] = {
        "checkpoint_dir": settings.flink_checkpoint_dir,
        "checkpoint_interval": settings.flink_checkpoint_interval,
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "topic_prefix": settings.kafka_topic_prefix,
        "state_ttl": settings.flink_state_ttl,
        "parallelism": settings.flink_parallelism,
        "idle_timeout": settings.flink_idle_timeout,
        "aws_region": settings.aws_region,
        "aws_account_id": settings.aws_account_id,
        "stream_prefix": settings.kinesis_stream_prefix,
        "kinesis_endpoint": settings.kinesis_endpoint_url or settings.aws_endpoint_url or "",
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    return JobOptions(**values)  # type: ignore[arg-type]


def number_lines(source: Path, target: Path) -> Path:
    """Copy a JSON-lines file of bar records, giving each record its line number as ``arrival``
    (the files environment's stand-in for a Kafka offset)."""
    with source.open("rb") as lines, target.open("wb") as out:
        for number, line in enumerate(lines):
            line = line.strip()
            if line.startswith(b"{"):
                out.write(b'{"arrival":%d,' % number + line[1:] + b"\n")
    return target


def _part_order(part: Path) -> tuple[str, int, int]:
    """Part files in the order the sink wrote them: interval, subtask, then the rolling count
    (``part-<uuid>-<subtask>-<count>``)."""
    *_, subtask, count = part.name.rsplit("-", 2)
    return part.parent.name, int(subtask), int(count)


def changelog_to_records(changelog: Path, output: Path) -> int:
    """The files environment's output: every insert and update image in the job's changelog
    files (``changelog/<interval>/part-*``, Debezium JSON) as one candle record per line, in
    the order the job wrote them per interval. Returns the number of records."""
    count = 0
    with output.open("wb") as out:
        for part in sorted(changelog.glob("*/part-*"), key=_part_order):
            for line in part.read_bytes().splitlines():
                if not line.strip():
                    continue
                after = json.loads(line).get("after")
                if after is not None:
                    out.write(json.dumps(after, separators=(",", ":")).encode() + b"\n")
                    count += 1
    return count


def newest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint (``<job id>/chk-<n>`` with its ``_metadata``) in
    ``checkpoint_dir``, or None."""
    done = [meta.parent for meta in checkpoint_dir.glob("*/chk-*/_metadata")]
    return max(done, key=lambda chk: chk.stat().st_mtime, default=None)


def local_spec(
    settings: Settings,
    options: JobOptions,
    work_dir: Path,
    *,
    resume: bool = True,
    cluster: bool = False,
) -> JobSpec:
    """The job for a local run; for the files environment, the input is numbered into
    ``work_dir`` and the changelog goes to ``work_dir/changelog``. A Kafka or Kinesis job
    resumes from the newest checkpoint in its checkpoint directory unless ``resume`` is false.
    With ``cluster``, the job is for a Flink cluster's SQL client (``flink plan --cluster``):
    without the mini-cluster's loopback settings (``LOCAL_CONFIG``: its ``rest.address`` would
    send the SQL client's job to 127.0.0.1), streaming environments only."""
    if cluster and options.environment not in STREAMING:
        raise ConfigError("a job for a Flink cluster reads a bus: --env kafka or kinesis")
    if options.environment in STREAMING and resume and options.checkpoint_dir:
        checkpoint = newest_checkpoint(Path(options.checkpoint_dir))
        if checkpoint is not None:
            log.info("resuming the Flink job from %s", checkpoint)
            options = dataclasses.replace(options, resume_from=str(checkpoint))
    if options.environment == "files":
        if options.parallelism > 1:
            # Each reader of a split file has its own watermark: a late bar read by one is
            # dropped by a window the other's watermark closed (measured: bench/flink.py).
            raise ConfigError(
                "the files environment runs at parallelism 1 (a symbol's bars must be read in "
                "their order by one reader); use --env kafka for more"
            )
        work_dir.mkdir(parents=True, exist_ok=True)
        numbered = number_lines(Path(options.input_path), work_dir / "bars.jsonl")
        changelog = work_dir / "changelog"
        options = dataclasses.replace(options, input_path=str(numbered), output_dir=str(changelog))
    spec = render(settings.interval_set, options)
    if not cluster:
        spec.config.update(LOCAL_CONFIG)
    return spec


# The job's own aggregate functions (flink_sql/udf, built by `make flink`): every environment
# loads it (flink_sql/functions.sql).
UDF_JAR = "speedlayer-flink-udf.jar"


def connector_jars(settings: Settings, environment: str) -> list[Path]:
    """The jars the job loads in ``environment``: the SQL connector jar(s) of a streaming
    environment (``*<environment>*.jar``; the files environment needs none), then the jar of the
    job's functions, all from the lib dir."""
    lib = Path(settings.flink_lib_dir) if settings.flink_lib_dir else ROOT / ".flink" / "lib"
    jars = []
    if environment in STREAMING:
        jars = sorted(lib.glob(f"*{environment}*.jar"))
        if not jars:
            raise ConfigError(f"no {environment} connector jar in {lib}: see `make flink`")
    udf = lib / UDF_JAR
    if not udf.is_file():
        raise ConfigError(f"no {UDF_JAR} (the job's functions) in {lib}: see `make flink`")
    return [*jars, udf]


def flink_python(settings: Settings) -> Path:
    python = Path(settings.flink_python or ROOT / ".flink-venv" / "bin" / "python")
    if not python.exists():
        raise ConfigError(f"no Flink virtualenv at {python}: run `make flink` first")
    return python


def job_command(
    settings: Settings, spec_path: Path, jars: list[Path], plan: bool = False
) -> list[str]:
    command = [str(flink_python(settings)), str(JOB_SCRIPT), str(spec_path)]
    if jars:
        command += ["--jars", ",".join(str(jar) for jar in jars)]
    if plan:
        command.append("--plan")
    return command


def job_env(work_dir: Path, jvm_options: list[str], heap: str = "768m") -> dict[str, str]:
    """The child's environment: a bounded heap (``heap``, as for -Xmx), temporary files
    (mini-cluster state, shipped jars) and Flink's log (``log/``) inside ``work_dir``, and the
    job's own JVM options.
    ``JVM_ARGS`` of the caller's environment come last, so they override these (a larger
    ``-Xmx``, a profiler such as ``-XX:StartFlightRecording=...``)."""
    tmp = work_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    jvm = " ".join([f"-Xmx{heap}", f"-Djava.io.tmpdir={tmp}", *jvm_options])
    return {
        **os.environ,
        "JVM_ARGS": f"{jvm} {os.environ.get('JVM_ARGS', '')}".strip(),
        "FLINK_LOG_DIR": str(work_dir / "log"),
    }


def start_job(
    settings: Settings, spec: JobSpec, work_dir: Path, *, plan: bool = False
) -> subprocess.Popen[str]:
    """Start the job (or its plan, with ``plan``) as a child process; stderr carries its
    progress events (JSON lines) and Flink's own messages."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / "job.json"
    spec_path.write_text(spec.to_json())
    jars = connector_jars(settings, spec.environment)
    return subprocess.Popen(
        job_command(settings, spec_path, jars, plan),
        env=job_env(work_dir, spec.jvm_options, settings.flink_heap),
        stdout=subprocess.PIPE if plan else None,
        stderr=subprocess.PIPE,
        text=True,
        cwd=work_dir,
    )


STOP_GRACE_S = 30.0


def stop_job(job: subprocess.Popen[str], grace: float = STOP_GRACE_S) -> None:
    """Stop a running job: SIGTERM (the job cancels itself), then SIGKILL after ``grace``
    seconds. The mini-cluster's JVM ends with the job's process (PyFlink's gateway exits when
    its parent's pipe closes)."""
    if job.poll() is not None:
        return
    job.terminate()
    try:
        job.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("the Flink job did not stop within %.0f s of SIGTERM: killing it", grace)
        job.kill()
        job.wait()


def follow(job: subprocess.Popen[str], on_event: Callable[[dict[str, object]], None]) -> int:
    """Relay the job's progress events to ``on_event`` and its other stderr lines to the log
    (errors at error level); return its exit code."""
    assert job.stderr is not None
    for line in job.stderr:
        line = line.rstrip()
        if line.startswith('{"event"'):
            on_event(json.loads(line))
        elif line:
            log.log(logging.ERROR if "Error" in line or "Exception" in line else logging.DEBUG,
                    "flink: %s", line)  # fmt: skip
    return job.wait()


def run_job(
    settings: Settings,
    spec: JobSpec,
    work_dir: Path,
    on_event: Callable[[dict[str, object]], None] | None = None,
) -> None:
    """Run the job to its end (bounded input) or until stopped; RunnerError if it fails.
    SIGTERM stops it as Ctrl-C does (KeyboardInterrupt): the job's process is terminated, which
    cancels the job, instead of being left running without its parent."""
    job = start_job(settings, spec, work_dir)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main else None
    try:
        code = follow(job, on_event or (lambda e: log.info("flink: %s", e)))
    finally:
        stop_job(job)
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if code != 0:
        raise RunnerError(f"the Flink job exited with {code} (its errors are in the log above)")


def explain(settings: Settings, spec: JobSpec, work_dir: Path) -> str:
    """Flink's optimised plan of the job (needs the Flink virtualenv, not a cluster)."""
    job = start_job(settings, spec, work_dir, plan=True)
    out, err = job.communicate()
    if job.returncode != 0:
        tail = "\n".join(err.splitlines()[-20:])
        raise RunnerError(f"planning the Flink job failed:\n{tail}")
    return out


@contextlib.contextmanager
def watch_first_output(
    changelog: Path, on_event: Callable[[dict[str, object]], None], every_s: float = 0.5
) -> Iterator[None]:
    """While in the block, watch ``changelog`` (the files job's output directory) and report
    ``{"event": "first_output", "seconds": ...}`` once a file in it has content."""
    started = time.monotonic()
    stop = threading.Event()

    def written() -> bool:
        try:
            return any(f.is_file() and f.stat().st_size > 0 for f in changelog.rglob("*"))
        except OSError:  # a part file renamed while looked at
            return False

    def watch() -> None:
        while not stop.wait(every_s):
            if written():
                on_event({"event": "first_output", "seconds": round(time.monotonic() - started, 1)})
                return

    thread = threading.Thread(target=watch, name="flink-first-output", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def echo_event(event: dict[str, object]) -> None:
    print(json.dumps(event), file=sys.stderr, flush=True)
