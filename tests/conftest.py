"""Shared fixtures: paths, free ports, and a real `speedlayer api` server (uvicorn) per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SPEEDLAYER_SHARED_DIR", ROOT.parent / "shared"))
REALBARS = SHARED / "data" / "realbars"
SPEEDLAYER = str(Path(sys.executable).with_name("speedlayer"))


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
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the installed `speedlayer` command; return the CompletedProcess (text mode)."""
    merged = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [SPEEDLAYER, *args], capture_output=True, text=True, env=merged, timeout=timeout
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
