"""Container health checks: the image's ``HEALTHCHECK`` (Dockerfile, docker-compose.yml).

    python -m launch.healthcheck [--url URL] [--file PATH] [--max-age SECONDS]

The API (``speedlayer api``, ``speedlayer up``) answers ``/readyz``: healthy when it answers 200.
The workers without an HTTP port (``ingest``, ``process``, ``sink``) rewrite a health file
(``SPEEDLAYER_HEALTH_FILE``) every few seconds with the problems their long-lived parts report
(the same ``problem()`` answers as ``/readyz``): healthy when the file is fresh (younger than
``--max-age``, so the event loop still runs) and lists no problem. Without ``--url`` or
``--file`` the check takes the health file when ``SPEEDLAYER_HEALTH_FILE`` names one that
exists, else ``http://127.0.0.1:$SPEEDLAYER_PORT/readyz``; so one ``HEALTHCHECK`` serves every
command of the image. Exit 0 when healthy, 1 (with the reason on stdout) when not.

Imports only the standard library: it runs every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# How often a worker rewrites its health file, and how old the file may be before the check
# fails (the event loop has not run the writer for that long).
WRITE_EVERY_S = 5.0
MAX_AGE_S = 30.0
HTTP_TIMEOUT_S = 4.0


def health_record(problems: Sequence[str], now: float) -> str:
    return json.dumps({"time": now, "problems": list(problems)})


def write_health(path: Path, problems: Sequence[str], now: float) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(health_record(problems, now))
    os.replace(partial, path)


@contextlib.asynccontextmanager
async def health_file(
    path: Path | None, parts: Sequence[Any], every_s: float = WRITE_EVERY_S
) -> AsyncIterator[None]:
    """While the block runs, rewrite ``path`` every ``every_s`` with the problems ``parts``
    report (each has ``problem() -> str | None``, speedlayer.health.HealthCheck); the file is
    removed when the block ends. Nothing happens without a path."""
    if path is None:
        yield
        return

    async def write_forever() -> None:
        while True:
            problems = [p for part in parts if (p := part.problem()) is not None]
            try:
                await asyncio.to_thread(write_health, path, problems, time.time())
            except OSError as exc:  # the check then fails on age: say why, once per round
                log.warning("cannot write the health file %s: %s", path, exc)
            await asyncio.sleep(every_s)

    task = asyncio.create_task(write_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(path.unlink, missing_ok=True)


def check_file(path: Path, max_age_s: float, now: float) -> str | None:
    """None when ``path`` is a fresh health record without problems; else what is wrong."""
    try:
        record = json.loads(path.read_text())
        written = float(record["time"])
        problems = [str(p) for p in record["problems"]]
    except FileNotFoundError:
        return f"no health file at {path} (the service has not started, or has stopped)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable health file {path}: {exc}"
    if now - written > max_age_s:
        return f"health file {path} not rewritten for {now - written:.0f} s"
    if problems:
        return "; ".join(problems)
    return None


def check_url(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> str | None:
    """None when ``url`` answers 200; else what is wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        body = exc.read(500).decode(errors="replace")
        return f"{url}: HTTP {exc.code} {body}".strip()
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def default_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env.get('SPEEDLAYER_PORT') or 8000}/readyz"


def check(
    url: str | None, file: Path | None, max_age_s: float, env: dict[str, str], now: float
) -> str | None:
    """The problem the selected check finds (see the module docstring), or None."""
    if file is not None:
        return check_file(file, max_age_s, now)
    if url is None:
        named = env.get("SPEEDLAYER_HEALTH_FILE")
        if named and Path(named).exists():
            return check_file(Path(named), max_age_s, now)
        url = default_url(env)
    return check_url(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="check this URL answers 200 (default: /readyz)")
    parser.add_argument("--file", type=Path, help="check this health file")
    parser.add_argument("--max-age", type=float, default=MAX_AGE_S, help="seconds (default 30)")
    args = parser.parse_args(argv)
    problem = check(args.url, args.file, args.max_age, dict(os.environ), time.time())
    if problem is None:
        print("healthy")
        return 0
    print(f"unhealthy: {problem}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
