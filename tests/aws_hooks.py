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
        if self.answers(self.calls):
            return self.respond(params)
        return None

    def answers(self, call: int) -> bool:
        return call <= self.n


class NthCall(FirstCalls):
    """A before-call hook answering only the ``n``-th call with ``respond(params)``."""

    def answers(self, call: int) -> bool:
        return call == self.n


class Counter:
    """A hook that only counts (returns None, so the call proceeds)."""

    def __init__(self) -> None:
        self.calls = 0
        self.sizes: list[int] = []

    def __call__(self, params: dict[str, Any] | None = None, **_: Any) -> None:
        self.calls += 1
        if params is not None and "Records" in params:
            self.sizes.append(len(params["Records"]))


class PartlyUnprocessed:
    """BatchWriteItem: for ``n`` calls (every ``every``-th one), the request reaches the emulator,
    which writes all of it, then the response claims the second half of it as UnprocessedItems
    (register ``before`` on before-call and ``after`` on after-call; they pair up by context)."""

    def __init__(self, n: int, every: int = 1) -> None:
        self.n = n
        self.every = every
        self.calls = 0
        self.injected = 0

    def before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        self.calls += 1
        if self.injected < self.n and self.calls % self.every == 0:
            self.injected += 1
            context["claim_unprocessed"] = request_body(params)["RequestItems"]

    def after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        items = context.get("claim_unprocessed")
        if not isinstance(items, dict) or "Error" in parsed:
            return
        flat = [(table, request) for table, requests in items.items() for request in requests]
        unprocessed: dict[str, list[Any]] = {}
        for table, request in flat[len(flat) // 2 :]:
            unprocessed.setdefault(table, []).append(request)
        parsed["UnprocessedItems"] = unprocessed


class FailSomeRecords:
    """An after-call hook on PutRecords: for ``n`` calls (every ``every``-th one) every third
    record is reported failed (FailedRecordCount) although the emulator stored it, as a partial
    failure of Kinesis looks to a client that retries it."""

    def __init__(self, n: int, every: int = 1) -> None:
        self.n = n
        self.every = every
        self.calls = 0
        self.injected = 0
        self.failed_records = 0

    def __call__(self, parsed: dict[str, Any], **_: Any) -> None:
        if "Records" not in parsed:  # an error answer (e.g. an injected throttle)
            return
        self.calls += 1
        if self.injected >= self.n or self.calls % self.every:
            return
        self.injected += 1
        failed = 0
        for i, record in enumerate(parsed.get("Records", [])):
            if i % 3 == 0:
                record.clear()
                record.update(ErrorCode="ProvisionedThroughputExceededException", ErrorMessage="x")
                failed += 1
        parsed["FailedRecordCount"] = failed
        self.failed_records += failed
