"""The containers' health check (launch/healthcheck.py): the workers' health file and the API's
/readyz, chosen as the image's one HEALTHCHECK chooses."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from launch import healthcheck
from launch.healthcheck import check, check_file, health_file, write_health


class Part:
    def __init__(self) -> None:
        self.problem_text: str | None = None

    def problem(self) -> str | None:
        return self.problem_text


async def test_the_health_file_follows_the_parts_and_goes_with_the_service(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    part = Part()
    async with health_file(path, [part], every_s=0.01):
        await asyncio.sleep(0.05)
        assert json.loads(path.read_text())["problems"] == []
        assert check(None, None, 30, {"SPEEDLAYER_HEALTH_FILE": str(path)}, now=_now(path)) is None
        part.problem_text = "candle write failing for 12s"
        await asyncio.sleep(0.05)
        assert json.loads(path.read_text())["problems"] == ["candle write failing for 12s"]
    assert not path.exists(), "removed when the service stops"


async def test_without_a_path_nothing_is_written(tmp_path: Path) -> None:
    async with health_file(None, [Part()], every_s=0.01):
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


def _now(path: Path) -> float:
    written: float = json.loads(path.read_text())["time"]
    return written


def test_the_file_check(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    assert "no health file" in (check_file(path, 30, 0) or "")
    write_health(path, [], now=1000.0)
    assert check_file(path, 30, 1010.0) is None
    assert "not rewritten for 40 s" in (check_file(path, 30, 1040.0) or "")
    write_health(path, ["sink stopped: boom", "x"], now=1000.0)
    assert check_file(path, 30, 1000.0) == "sink stopped: boom; x"
    path.write_text("{not json")
    assert "unreadable" in (check_file(path, 30, 1000.0) or "")


class Answer(io.BytesIO):
    status = 200

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def test_the_api_check_asks_readyz(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    asked: list[str] = []

    def ready(url: str, timeout: float) -> Answer:
        asked.append(url)
        return Answer(b'{"status": "ready"}')

    monkeypatch.setattr(urllib.request, "urlopen", ready)
    # No health file (the API writes none): /readyz on SPEEDLAYER_PORT.
    env = {"SPEEDLAYER_HEALTH_FILE": str(tmp_path / "absent.json"), "SPEEDLAYER_PORT": "8123"}
    assert check(None, None, 30, env, now=0) is None
    assert asked == ["http://127.0.0.1:8123/readyz"]

    def not_ready(url: str, timeout: float) -> Any:
        body = io.BytesIO(b'{"error": "not_ready", "message": "store: unreachable"}')
        raise urllib.error.HTTPError(url, 503, "Service Unavailable", {}, body)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", not_ready)
    assert "HTTP 503" in (check(None, None, 30, {}, now=0) or "")
    assert "store: unreachable" in (check("http://x/readyz", None, 30, {}, now=0) or "")


def test_nothing_listening_is_unhealthy() -> None:
    problem = check("http://127.0.0.1:9/readyz", None, 30, {}, now=0)
    assert problem is not None and problem.startswith("http://127.0.0.1:9/readyz")


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "health.json"
    write_health(path, [], now=1e12)  # written "in the future": fresh
    assert healthcheck.main(["--file", str(path)]) == 0
    assert capsys.readouterr().out == "healthy\n"
    write_health(path, ["feed: auth_failed"], now=1e12)
    assert healthcheck.main(["--file", str(path)]) == 1
    assert capsys.readouterr().out == "unhealthy: feed: auth_failed\n"
