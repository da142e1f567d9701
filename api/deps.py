"""Resources built in the app's lifespan, reached by routes through these dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from speedlayer.config import Settings
from speedlayer.store.base import Store


@dataclass
class Resources:
    settings: Settings
    store: Store


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]
