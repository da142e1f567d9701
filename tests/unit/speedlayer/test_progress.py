"""speedlayer/progress.py: the log line's text and timing, the quiet mode, and the bar on a
terminal with log records printed above it."""

from __future__ import annotations

import io
import logging

import pytest

from speedlayer.progress import Progress, progress_mode


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_stream_and_quiet() -> None:
    assert progress_mode(stream=io.StringIO()) == "log"
    assert progress_mode(stream=Tty()) == "bar"
    assert progress_mode(quiet=True, stream=Tty()) == "quiet"


def test_log_lines_every_period_then_a_last_one(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, "speedlayer.progress")
    with Progress("replay", total=1000, unit="bars", mode="log", every_s=5, clock=clock) as p:
        p.update(completed=100, accepted=90, rejected=1)
        assert caplog.messages == []  # the first line after a period, not at once
        clock.now += 5
        p.update(completed=250, accepted=240, rejected=2)
        clock.now += 1
        p.update(completed=300)  # within the period: no line
        clock.now += 4
        p.update(completed=400, accepted=390)
        clock.now += 10
        p.update(completed=1000, accepted=990)  # complete: the end is said once, by close
    assert caplog.messages == [
        "replay: 250 of 1,000 bars (25%), accepted 240, rejected 2, 50 bars/s, ETA 0:00:15",
        "replay: 400 of 1,000 bars (40%), accepted 390, rejected 2, 40 bars/s, ETA 0:00:15",
        "replay: 1,000 of 1,000 bars (100%), accepted 990, rejected 2, 50 bars/s, done in 0:00:20",
    ]


def test_a_short_command_logs_nothing_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "speedlayer.progress")
    with Progress("init-aws", unit="resources", mode="log", rate=False) as p:
        p.update(completed=3, total=3, status="ready")
    assert caplog.messages == []
    clock = FakeClock()
    with Progress("backfill", unit="symbols", mode="log", summary=True, clock=clock) as p:
        clock.now += 2
        p.update(completed=4, total=4, minute_bars=120, rate_limit_waits=1)
    assert caplog.messages == [
        "backfill: 4 of 4 symbols (100%), minute bars 120, rate limit waits 1, 2 symbols/s, "
        "done in 0:00:02"
    ]
    caplog.clear()
    with Progress("x", mode="quiet", summary=True, every_s=0) as p:
        p.update(completed=5, status="busy")
    assert caplog.messages == []


def test_the_bar_draws_on_a_terminal_and_log_records_print_above_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    tty = Tty()
    handler = logging.StreamHandler(tty)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with Progress("replay", total=200, unit="bars", mode="bar", stream=tty) as p:
            p.update(completed=50, accepted=50, rejected=0)
            logging.getLogger("test.progress").warning("a warning while the bar is live")
            p.update(completed=200)
        assert handler.stream is tty  # given back
    finally:
        root.removeHandler(handler)
    text = tty.getvalue()
    assert "replay" in text and "━" in text and "200/200" in text and "100%" in text
    assert "a warning while the bar is live" in text
    assert "speedlayer.progress" not in text
