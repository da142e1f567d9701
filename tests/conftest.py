"""Shared fixtures: paths, free ports, a real `speedlayer api` server (uvicorn) per test, the AWS
emulators and the Kafka broker per session; markers by layer; prerequisites.

Layout (docs/design.md#layout): ``tests/unit/<package>/`` runs in-process with no servers, brokers
or browsers (``make test-fast``); ``tests/integration/<area>/`` uses real parts (uvicorn, the
simulator over WebSocket, dynalite/kinesalite, a Kafka broker, Chromium, subprocesses). Every
test is marked ``unit`` or ``integration`` plus its area (``api``, ``aws``, ``bench``,
``browser``, ``cli``, ``feed``, ``kafka``, ``store``), so ``pytest -m "integration and not
browser"`` selects by layer.

A missing prerequisite (Java and the Kafka jars, the npm emulators, Chromium, wrk) skips the
tests that need it, with the reason, so a partial machine can still run the rest; with
``SPEEDLAYER_REQUIRE_ALL=1`` (set by ``make test`` and so by CI) it fails them instead, so the
full run never passes by skipping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kafka_broker import KafkaBroker, KafkaBrokerError, missing_prerequisite

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SPEEDLAYER_SHARED_DIR", ROOT.parent / "shared"))
REALBARS = SHARED / "data" / "realbars"
SPEEDLAYER = str(Path(sys.executable).with_name("speedlayer"))


LAYERS = {"unit", "integration"}
AREAS = {
    "api",
    "aws",
    "bench",
    "browser",
    "cli",
    "deploy",
    "feed",
    "flink",
    "infra",
    "kafka",
    "store",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its directory: ``unit``/``integration`` and the integration area."""
    tests = Path(__file__).resolve().parent
    for item in items:
        parts = item.path.resolve().relative_to(tests).parts
        if parts[0] in LAYERS:
            item.add_marker(parts[0])
        if parts[0] == "integration" and parts[1] in AREAS:
            item.add_marker(parts[1])


def require(available: bool, reason: str) -> None:
    """Skip the test (with ``reason``) when a prerequisite is missing; fail it instead when
    ``SPEEDLAYER_REQUIRE_ALL`` is set, as ``make test`` does."""
    if available:
        return
    if os.environ.get("SPEEDLAYER_REQUIRE_ALL"):
        pytest.fail(f"{reason} (SPEEDLAYER_REQUIRE_ALL is set: every prerequisite is required)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def realbars() -> Path:
    if not (REALBARS / "README.md").exists():
        pytest.fail(f"real bar data not found at {REALBARS} (set SPEEDLAYER_SHARED_DIR)")
    return REALBARS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed `speedlayer` command (in ``cwd``, default ours); return the
    CompletedProcess (text mode)."""
    merged = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [SPEEDLAYER, *args], capture_output=True, text=True, env=merged, timeout=timeout, cwd=cwd
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"speedlayer {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


class ApiServer:
    """`speedlayer api` as a subprocess on a free loopback port."""

    def __init__(self, db: Path, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "SPEEDLAYER_LOG_LEVEL": "warning", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [SPEEDLAYER, "api", "--db", str(self.db), "--port", str(self.port)], env=self.env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"speedlayer api exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("speedlayer api did not become healthy in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def api_server_factory(tmp_path: Path) -> Iterator[type[ApiServer] | object]:
    servers: list[ApiServer] = []

    def make(db: Path | None = None, env: dict[str, str] | None = None) -> ApiServer:
        server = ApiServer(db or tmp_path / "api.db", env)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# -- AWS emulators (npm: dynalite, kinesalite; installed by `make setup` with `npm ci`) ------------

NODE_MODULES = ROOT / "node_modules"


def listening(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"emulator did not listen on port {port} in {timeout} s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def stop_by_sigterm(
    proc: subprocess.Popen[bytes], failure: Callable[[], str], timeout: float = 20
) -> int:
    """SIGTERM, as a service manager stops a service; the exit code. A process still running
    after ``timeout`` is killed and the test fails with the message ``failure()``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(failure()) from None
    return proc.returncode


def dynalite_command(port: int, *extra: str) -> list[str]:
    cli = NODE_MODULES / "dynalite" / "cli.js"
    require(cli.exists(), f"{cli} not found: run `make setup` (npm ci) first")
    return ["node", str(cli), "--host", "127.0.0.1", "--port", str(port), *extra]


def kinesalite_command(port: int, **options: object) -> list[str]:
    """kinesalite with stream ARNs understood (infra/local/kinesalite.js), ``options`` given to
    kinesalite (``path``, ``shardLimit``: default 1000)."""
    require(
        (NODE_MODULES / "kinesalite").exists(),
        "node_modules/kinesalite not found: run `make setup` (npm ci) first",
    )
    script = ROOT / "infra" / "local" / "kinesalite.js"
    return ["node", str(script), str(port), json.dumps({"shardLimit": 1000, **options})]


def start_emulator(command: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


@pytest.fixture(scope="session")
def dynalite_url() -> Iterator[str]:
    """An in-memory dynalite for the session (tables ACTIVE at once; tests prefix their names)."""
    port = free_port()
    proc = start_emulator(
        dynalite_command(port, "--createTableMs", "0", "--deleteTableMs", "0"), port
    )
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture(scope="session")
def kinesalite_url() -> Iterator[str]:
    """An in-memory kinesalite for the session (shardLimit raised; default 500 ms CREATING)."""
    port = free_port()
    proc = start_emulator(kinesalite_command(port), port)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


# -- Kafka (a real broker from Maven Central jars; `make setup` fetches them into .kafka/lib) ------


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One KRaft Kafka broker for the session (tests prefix their topic and group names)."""
    missing = missing_prerequisite()
    require(missing is None, missing or "")
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except KafkaBrokerError as exc:
        pytest.fail(str(exc))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap
