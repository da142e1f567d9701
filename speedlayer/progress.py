"""Progress of a long command on stderr: a live bar (rich) when stderr is a terminal, a plain log
line every few seconds when it is not (CI logs, pipes), nothing when quiet.

    with Progress("replay", total=50_000, unit="bars", mode=progress_mode(quiet)) as progress:
        progress.update(completed=12_000, accepted=11_990, rejected=10)

stdout is never written, so ``--json`` output and pipes stay clean. In log mode the lines go to
the ``speedlayer.progress`` logger at INFO every ``every_s`` seconds (the first after
``every_s``, so a short command logs nothing more than before) and a last one when a command that
logged progress ends (or always, with ``summary``). While the bar is live, log records written to
stderr are printed above it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TextIO

Mode = Literal["bar", "log", "quiet"]

log = logging.getLogger("speedlayer.progress")


def progress_mode(quiet: bool = False, stream: TextIO | None = None) -> Mode:
    """``quiet``: nothing; else a bar when ``stream`` (stderr) is a terminal, log lines if not."""
    if quiet:
        return "quiet"
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "log"
    except ValueError:  # a closed stream
        return "log"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """One task's progress: ``completed`` of ``total`` ``unit`` (total may be unknown or an
    estimate), a rate, an ETA, a status text and named figures (``accepted=..``)."""

    def __init__(
        self,
        label: str,
        *,
        total: float | None = None,
        unit: str = "",
        mode: Mode = "log",
        every_s: float = 5.0,
        rate: bool = True,
        counts: bool = True,
        summary: bool = False,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.mode: Mode = mode
        self.every_s = every_s
        self.completed = 0.0
        self.status = ""
        self.fields: dict[str, Any] = {}
        self.lines_logged = 0
        self._rate = rate
        self._counts = counts  # the bar shows "M/N" and a percentage
        self._summary = summary  # log the last line even if no periodic one was logged
        self._clock = clock
        self._started = clock()
        self._next_log = self._started + every_s
        self._stream = stream
        self._bar: Any = None  # rich.progress.Progress while live
        self._task: Any = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    # -- use --------------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(ok=exc_type is None)

    def start(self) -> None:
        if self.mode == "bar" and self._bar is None:
            self._start_bar()

    def update(
        self,
        *,
        advance: float = 0,
        completed: float | None = None,
        total: float | None = None,
        status: str | None = None,
        **fields: Any,
    ) -> None:
        if completed is not None:
            self.completed = completed
        self.completed += advance
        if total is not None:
            self.total = total
        if status is not None:
            self.status = status
        self.fields.update(fields)
        if self.mode == "bar":
            self._refresh_bar()
        elif self.mode == "log" and self._clock() >= self._next_log and not self._complete():
            self._log_line()

    def close(self, ok: bool = True) -> None:
        """Stop the bar (left on screen with its last state), or log the last line if any was
        logged."""
        if self._bar is not None:
            self._refresh_bar()
            self._bar.stop()
            self._bar = None
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self._handlers.clear()
        elif self.mode == "log" and (self.lines_logged or self._summary) and ok:
            self._log_line(final=True)

    def _complete(self) -> bool:
        """All of a known total is done (what is left is said by ``close``)."""
        return bool(self.total) and self.completed >= (self.total or 0)

    # -- text ----------------------------------------------------------------------------------

    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def rate_per_s(self) -> float | None:
        elapsed = self.elapsed_s()
        return self.completed / elapsed if elapsed > 0 and self.completed else None

    def eta_s(self) -> float | None:
        rate = self.rate_per_s()
        if not rate or not self.total or self.completed >= self.total:
            return None
        return (self.total - self.completed) / rate

    def figures_text(self) -> str:
        """The status, named figures and rate: ``accepted 1,200, rejected 3, 4,100 bars/s``."""
        parts = [self.status] if self.status else []
        parts += [
            f"{name.replace('_', ' ')} {_number(v)}"
            for name, v in self.fields.items()
            if v not in ("", None)
        ]
        rate = self.rate_per_s() if self._rate else None
        if rate is not None:
            parts.append(f"{_number(rate)} {self.unit or 'items'}/s")
        return ", ".join(parts)

    def line(self, final: bool = False) -> str:
        """The log line: ``replay: 12,000 of 50,000 bars (24%), accepted ..., ETA 0:00:09``."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            percent = min(100.0, 100.0 * self.completed / self.total)
            done = f"{_number(self.completed)} of {_number(self.total)}{unit} ({percent:.0f}%)"
        elif self.completed or self.unit:
            done = f"{_number(self.completed)}{unit}"
        else:
            done = ""
        parts = [p for p in (done, self.figures_text()) if p]
        if final:
            parts.append(f"done in {_duration(self.elapsed_s())}")
        else:
            eta = self.eta_s()
            parts.append(f"ETA {_duration(eta)}" if eta is not None else "")
        return f"{self.label}: " + ", ".join(p for p in parts if p)

    def _log_line(self, final: bool = False) -> None:
        log.info("%s", self.line(final))
        self.lines_logged += 1
        now = self._clock()
        while self._next_log <= now:
            self._next_log += self.every_s

    # -- the bar ---------------------------------------------------------------------------

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        stream = self._stream if self._stream is not None else sys.stderr
        console = Console(file=stream, stderr=self._stream is None)
        counts = [TaskProgressColumn(), MofNCompleteColumn()] if self._counts else []
        eta = [TextColumn("ETA"), TimeRemainingColumn()] if self._counts else []
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            *counts,
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            *eta,
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._bar.add_task(
            self.label, total=self.total, completed=self.completed, figures=""
        )
        self._bar.start()
        # Log records printed through the console land above the bar instead of through it.
        writer = _ConsoleWriter(console)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.stderr,
                stream,
            ):
                self._handlers.append((handler, handler.setStream(writer)))

    def _refresh_bar(self) -> None:
        if self._bar is None:
            return
        self._bar.update(
            self._task,
            total=self.total,
            completed=self.completed,
            figures=self.figures_text(),
        )


class _ConsoleWriter:
    """A text stream that prints through a rich console (above a live display)."""

    def __init__(self, console: Any) -> None:
        self._console = console

    def write(self, text: str) -> int:
        self._console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass
