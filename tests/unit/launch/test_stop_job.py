"""launch.flink.stop_job: a job that ignores SIGTERM (say, cancelling through a JVM that hangs in
its own shutdown) is killed after the grace period, so `speedlayer flink run` always stops."""

from __future__ import annotations

import subprocess
import sys
import time

from launch.flink import stop_job

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
STOPS_ON_SIGTERM = "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"


def started(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    proc = started(IGNORES_SIGTERM)
    began = time.monotonic()
    stop_job(proc, grace=0.5)
    assert proc.returncode == -9
    assert time.monotonic() - began < 30


def test_a_job_that_stops_on_sigterm_is_not_killed() -> None:
    proc = started(STOPS_ON_SIGTERM)
    stop_job(proc, grace=30)
    assert proc.returncode == -15


def test_stopping_a_finished_job_does_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], text=True)
    proc.wait()
    stop_job(proc)
    assert proc.returncode == 0
