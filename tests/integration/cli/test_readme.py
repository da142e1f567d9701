"""The README's distributed sections work when followed literally: each shell block marked
``<!-- readme-test: NAME -->`` is run line by line, in the repository, as its text says.

- ``export`` lines set the environment of every later line (one shell per terminal);
- a line whose comment says "keeps running" is started in a terminal of its own (a process group
  of its own, stopped at the end); the next line waits until it is ready, as a reader would;
- every other line runs to completion and must succeed; a query (``curl``, ``speedlayer
  candles``) is repeated until it shows data, as a reader would wait for the first candles.

The only changes to the text: the ports (the block's own ports become free ones, so the test
cannot meet another server) and where data is kept (the emulators' folder, the Makefile's
``AWS_LOCAL_DATA``; the SQLite file), so that the test leaves nothing in the repository.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, listening, require

README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (?P<name>[\w-]+) -->\n```sh\n(?P<body>.*?)```", re.S)
KEEPS_RUNNING = "keeps running"
QUERY_TIMEOUT_S = 120


def readme_block(name: str) -> list[str]:
    blocks = {m["name"]: m["body"] for m in BLOCK.finditer(README.read_text())}
    assert name in blocks, f"README has no block marked readme-test: {name}"
    return [line for line in blocks[name].splitlines() if line.strip()]


class Reader:
    """Follows a block: the environment, the terminals that keep running, the logs."""

    def __init__(
        self, tmp: Path, ports: dict[int, int], env: dict[str, str], paths: dict[str, str]
    ) -> None:
        self.tmp = tmp
        self.ports = ports
        self.paths = paths
        base = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDLAYER_")}
        self.env = {**base, **env}
        self.terminals: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def text(self, line: str) -> str:
        for port, free in self.ports.items():
            line = re.sub(rf"\b{port}\b", str(free), line)
        for path, elsewhere in self.paths.items():
            line = line.replace(path, elsewhere)
        return line

    def follow(self, line: str, ready: Callable[[str], bool]) -> None:
        line = self.text(line)
        command = line.split("#", 1)[0].strip()
        if command.startswith("export "):
            for assignment in shlex.split(command)[1:]:
                key, _, value = assignment.partition("=")
                self.env[key] = value
        elif KEEPS_RUNNING in line:
            self.start(command, ready)
        else:
            self.run(command)

    def start(self, command: str, ready: Callable[[str], bool]) -> None:
        log = self.tmp / f"terminal-{len(self.terminals) + 1}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.terminals.append((command, proc, log))
        deadline = time.monotonic() + 60
        while not ready(command):
            self.alive()
            assert time.monotonic() < deadline, f"not ready in 60 s: {command}\n{self.logs()}"
            time.sleep(0.2)

    def run(self, command: str) -> None:
        """Until it succeeds with data (queries wait for the first candles), then once more
        to check it stays so."""
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        while True:
            proc = subprocess.run(
                ["bash", "-c", command],
                cwd=ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=QUERY_TIMEOUT_S,
            )
            if proc.returncode == 0 and shows_data(command, proc.stdout):
                return
            self.alive()
            assert time.monotonic() < deadline, (
                f"`{command}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n"
                f"{self.logs()}"
            )
            time.sleep(1)

    def alive(self) -> None:
        for command, proc, _ in self.terminals:
            assert proc.poll() is None, f"`{command}` exited {proc.returncode}\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(
            f"--- {command}\n{log.read_text(errors='replace')[-3000:]}"
            for command, _, log in self.terminals
        )

    def stop(self) -> None:
        """Ctrl-C in each terminal, newest first, as a reader ends the session."""
        for command, proc, _ in reversed(self.terminals):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                    raise AssertionError(f"`{command}` ignored Ctrl-C\n{self.logs()}") from None


def shows_data(command: str, stdout: str) -> bool:
    if "speedlayer candles" in command:
        return len(stdout.strip().splitlines()) > 1  # the CSV header and candles
    if command.startswith("curl"):  # JSON with something in it
        return bool(stdout.strip()) and re.search(r"\[\s*\]|\{\s*\}", stdout) is None
    return True


MakeReader = Callable[..., Reader]


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[MakeReader]:
    readers: list[Reader] = []

    def make(
        ports: dict[int, int], env: dict[str, str], paths: dict[str, str] | None = None
    ) -> Reader:
        readers.append(Reader(tmp_path, ports, env, paths or {}))
        return readers[-1]

    yield make
    for r in readers:
        r.stop()


@pytest.mark.timeout(420)
def test_the_aws_section_works_as_written(reader: MakeReader, tmp_path: Path) -> None:
    require((ROOT / "node_modules" / "dynalite").exists(), "the emulators: run `make setup`")
    ports = {4567: free_port(), 4568: free_port(), 8000: free_port()}
    follow = reader(
        ports,
        {
            "DYNAMODB_PORT": str(ports[4567]),
            "KINESIS_PORT": str(ports[4568]),
            "AWS_LOCAL_DATA": str(tmp_path / "aws-data"),
        },
    )

    def ready(command: str) -> bool:
        if command.startswith("make aws-local"):
            return listening(ports[4567]) and listening(ports[4568])
        return api_ready(command, ports[8000])

    follow_block(follow, "aws", ready, ports[8000])


@pytest.mark.timeout(420)
def test_the_kafka_section_works_as_written(reader: MakeReader, tmp_path: Path) -> None:
    from tests.kafka_broker import missing_prerequisite

    missing = missing_prerequisite()
    require(missing is None, str(missing))
    ports = {9092: free_port(), 8000: free_port()}
    follow = reader(
        ports, {"KAFKA_PORT": str(ports[9092])}, {"data/kafka.db": str(tmp_path / "kafka.db")}
    )

    def ready(command: str) -> bool:
        if command.startswith("make kafka-local"):
            return listening(ports[9092])
        return api_ready(command, ports[8000])

    follow_block(follow, "kafka", ready, ports[8000])


def api_ready(command: str, port: int) -> bool:
    if " api " not in command:
        return True
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def follow_block(follow: Reader, name: str, ready: Callable[[str], bool], api_port: int) -> None:
    lines = readme_block(name)
    assert any(KEEPS_RUNNING in line for line in lines)
    for line in lines:
        follow.follow(line, ready)
    symbols = httpx.get(f"http://127.0.0.1:{api_port}/symbols").json()
    assert "AAPL" in str(symbols), symbols
    follow.stop()
    for command, proc, _ in follow.terminals:
        assert proc.returncode in (0, 2, -signal.SIGINT, 130), (command, follow.logs())


@pytest.mark.timeout(300)
def test_the_symbols_section_works_as_written(reader: MakeReader, tmp_path: Path) -> None:
    """`speedlayer up --market crypto`, then the pair by Polygon's REST ticker and lower case."""
    ports = {8000: free_port()}
    api = f"http://127.0.0.1:{ports[8000]}"
    # where `up` listens and keeps its database: the README's defaults, moved out of the way
    follow = reader(
        ports, {"SPEEDLAYER_PORT": str(ports[8000]), "SPEEDLAYER_DB": str(tmp_path / "up.db")}
    )

    def ready(command: str) -> bool:
        try:
            return httpx.get(api + "/readyz").status_code == 200
        except httpx.TransportError:
            return False

    lines = readme_block("symbols")
    assert any(KEEPS_RUNNING in line for line in lines)
    for line in lines:
        follow.follow(line, ready)
    assert "BTC-USD" in httpx.get(api + "/symbols").json()["symbols"]
    info = httpx.get(api + "/symbols/x:btcusd").json()
    assert info["symbol"] == "BTC-USD" and info["stored"] is True, info
    follow.stop()
