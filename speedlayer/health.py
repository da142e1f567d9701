"""What a service's long-lived parts report about themselves, and the views the API takes of
parts it does not own (an in-process pipeline, a feed): protocols, so the API needs no import of
the other services; the composition layer (``launch``) hands the real objects over.

Readiness. Every long-lived part (the pipeline runner, the feed, the live hub) answers
``problem()``: None while it works, else a short text saying what is wrong (a write that keeps
failing, a consumer that died). ``/readyz`` is ready only when every part answers None.
"""

from __future__ import annotations

from typing import Protocol


class HealthCheck(Protocol):
    """A long-lived part whose state ``/readyz`` reports."""

    def problem(self) -> str | None:
        """None when working; otherwise what is wrong, for the readiness answer and logs."""
        ...


class PipelineView(HealthCheck, Protocol):
    """The counters of an in-process pipeline that ``/metrics`` reports."""

    bars_in: int
    candles_out: int

    def lag_ms(self) -> int | None:
        """Now minus the end of the newest bar processed (None before the first bar)."""
        ...
