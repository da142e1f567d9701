"""Resources built in the app's lifespan, reached by routes through these dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from speedlayer.bus.base import Bus
from speedlayer.clock import Clock
from speedlayer.config import Settings
from speedlayer.store.base import Store

if TYPE_CHECKING:
    from api.live import CandleHub
    from processors.runner import PipelineRunner


@dataclass
class Resources:
    settings: Settings
    store: Store
    clock: Clock
    bus: Bus | None = None  # the candle-update bus; None when the API runs without a pipeline
    runner: PipelineRunner | None = None  # the in-process pipeline (for metrics), if any
    hub: CandleHub | None = None  # live fan-out (api/live.py); not live when bus is None


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]
