"""Fault injection for aioboto3 clients: botocore event hooks that fake AWS responses.

The emulators never throttle nor report partial failures, so the retry paths are driven by
hooks on the real client: ``before-call`` returning ``(http, parsed)`` short-circuits the request
(nothing reaches the emulator); ``after-call`` edits the parsed response of a real request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class FakeHttp:
    status_code: int
    headers: dict[str, str] | None = None


def error_response(code: str, message: str = "injected", status: int = 400) -> tuple[Any, Any]:
    return FakeHttp(status, {}), {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }


def ok_response(parsed: dict[str, Any]) -> tuple[Any, Any]:
    return FakeHttp(200, {}), {**parsed, "ResponseMetadata": {"HTTPStatusCode": 200}}


def request_body(params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a serialized request (``params`` of a before-call event)."""
    body = params["body"]
    return dict(json.loads(body.decode() if isinstance(body, bytes) else body))


class FirstCalls:
    """A before-call hook answering the first ``n`` calls with ``respond(params)``; counts all."""

    def __init__(self, n: int, respond: Any) -> None:
        self.n = n
        self.respond = respond
        self.calls = 0

    def __call__(self, params: dict[str, Any], **_: Any) -> Any:
        self.calls += 1
        if self.calls <= self.n:
            return self.respond(params)
        return None


class Counter:
    """A hook that only counts (returns None, so the call proceeds)."""

    def __init__(self) -> None:
        self.calls = 0
        self.sizes: list[int] = []

    def __call__(self, params: dict[str, Any] | None = None, **_: Any) -> None:
        self.calls += 1
        if params is not None and "Records" in params:
            self.sizes.append(len(params["Records"]))
