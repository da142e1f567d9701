"""`python -m tests.kafka_broker` (docs/aws.md#the-kafka-broker-tests-and-local-runs): stopped
with SIGTERM, as a service manager or a script stops it, it leaves nothing behind: no broker JVM
still listening, no temporary folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, listening, require
from tests.kafka_broker import missing_prerequisite

pytestmark = [pytest.mark.timeout(120)]

STARTED = re.compile(r"Kafka broker at 127\.0\.0\.1:(\d+) \(data in ([^,)\s]+)")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, already ended, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_jvm_and_removes_the_folder(sig: signal.Signals) -> None:
    missing = missing_prerequisite()
    require(missing is None, missing or "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kafka_broker"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "SPEEDLAYER_KAFKA_HEAP": "-Xmx256m"},
    )
    jvm: int | None = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # once the broker answers
        found = STARTED.search(line)
        assert found, f"unexpected first line: {line!r}"
        port, folder = int(found[1]), Path(found[2])
        (jvm,) = children(proc.pid)  # the broker's JVM
        assert listening(port) and folder.is_dir() and alive(jvm)

        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        deadline = time.monotonic() + 5
        while alive(jvm) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(jvm), "the broker JVM outlived its launcher"
        assert not listening(port)
        assert not folder.exists()
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if jvm is not None and alive(jvm):
            os.kill(jvm, signal.SIGKILL)
