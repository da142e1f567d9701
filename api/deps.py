"""Resources built in the app's lifespan, reached by routes through these dependencies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from api.live.hub import CandleHub
from api.page_cache import PageCache
from speedlayer.bus.base import Bus
from speedlayer.clock import Clock
from speedlayer.config import Settings
from speedlayer.health import HealthCheck, PipelineView
from speedlayer.store.base import Store


@dataclass
class Resources:
    settings: Settings
    store: Store
    clock: Clock
    hub: CandleHub  # live fan-out (api/live/hub.py); not live when bus is None
    bus: Bus | None = None  # the candle-update bus; None when the API runs without a pipeline
    pipeline: PipelineView | None = None  # the in-process pipeline (metrics, readiness), if any
    health: Sequence[HealthCheck] = ()  # other parts whose problems /readyz reports (a feed)
    pages: PageCache = field(default_factory=lambda: PageCache(0))  # served candle pages

    def health_problems(self) -> list[str]:
        """What the hub, the pipeline (if any) and each part of ``health`` report, in that
        order; empty when every one works. Each check's own text names its part."""
        checks: list[HealthCheck] = [self.hub]
        if self.pipeline is not None:
            checks.append(self.pipeline)
        checks.extend(self.health)
        problems = []
        for check in checks:
            try:
                problem = check.problem()
            except Exception as exc:  # a failing check means "not ready", never a 500
                problem = f"{type(check).__name__}: health check failed ({exc})"
            if problem:
                problems.append(problem)
        return problems


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]
