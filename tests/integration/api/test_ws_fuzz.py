"""Property-based fuzzing of the live WebSocket's message parser over a real `speedlayer api`
(uvicorn) server: client messages generated near the protocol (subscribe, unsubscribe and ping
with every field right, wrong, missing or oversized) and as arbitrary text.

The properties: the connection survives every message; each message gets exactly one reply of
its own (an ack, a pong or an error with a message), before the pong of the ping that follows
it; every reply is a JSON object with a known `type`; the server stays healthy.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ApiServer
from tests.fuzz_strategies import json_values as json_values_of

FAST = bool(os.environ.get("SPEEDLAYER_TEST_FAST"))
REPLIES = {"subscribed", "unsubscribed", "pong", "error"}
LIMIT = 4096  # SPEEDLAYER_LIVE_MAX_MESSAGE_BYTES of the server below

json_values = json_values_of(10)
symbol_lists = st.one_of(
    st.lists(st.sampled_from(["AAPL", "MSFT", "BRK/B", "*", "", "aapl", "A" * 40, "X:BTCUSD"]),
             max_size=5),
    json_values,
)  # fmt: skip
interval_lists = st.one_of(
    st.lists(st.sampled_from(["1m", "15m", "4h", "1min", "1 hour", "7m", "", "1d"]), max_size=4),
    json_values,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    request: dict[str, Any] = {
        "action": draw(st.one_of(st.sampled_from(["subscribe", "unsubscribe", "ping", "", "SUB"]),
                                 json_values)),
        "symbols": draw(symbol_lists),
        "intervals": draw(interval_lists),
        "snapshot": draw(st.one_of(st.integers(-5, 5), st.sampled_from([True, 1e9, "3", 10**30]),
                                   json_values)),
        "id": draw(json_values),
    }  # fmt: skip
    for name in draw(st.lists(st.sampled_from(sorted(request)), max_size=3)):
        request.pop(name, None)
    return request


messages = st.one_of(
    requests().map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.integers(LIMIT - 10, LIMIT + 10).map(
        lambda size: '{"action": "ping", "x": "'.ljust(size, "y")
    ),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    db = Path(tmp_path_factory.mktemp("wsfuzz")) / "api.db"
    api = ApiServer(db, {"SPEEDLAYER_LIVE_MAX_MESSAGE_BYTES": str(LIMIT)})
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def socket(server: ApiServer) -> Iterator[ClientConnection]:
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as ws:
        yield ws


_marks = itertools.count()


def exchange(ws: ClientConnection, text: str) -> list[dict[str, Any]]:
    """Send ``text``, then a ping with a fresh id; the replies before that ping's pong."""
    mark = f"mark-{next(_marks)}"
    ws.send(text)
    ws.send(json.dumps({"action": "ping", "id": mark}))
    replies: list[dict[str, Any]] = []
    while True:
        reply = json.loads(ws.recv(timeout=10))
        assert isinstance(reply, dict) and isinstance(reply.get("type"), str), reply
        if reply["type"] == "pong" and reply.get("id") == mark:
            return replies
        replies.append(reply)


@settings(
    max_examples=60 if FAST else 250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages)
def test_any_message_gets_one_reply_and_the_socket_survives(
    socket: ClientConnection, text: str
) -> None:
    replies = [r for r in exchange(socket, text) if r["type"] in REPLIES]
    assert len(replies) == 1, replies
    reply = replies[0]
    if reply["type"] == "error":
        assert isinstance(reply.get("message"), str) and reply["message"]


def test_the_server_is_healthy_after_the_fuzzing(
    server: ApiServer, socket: ClientConnection
) -> None:
    """Ordered after the fuzzing (same module): a valid subscription still works."""
    replies = exchange(socket, json.dumps({"action": "subscribe", "symbols": ["AAPL"],
                                           "intervals": ["1m"], "id": 7}))  # fmt: skip
    assert [r["type"] for r in replies if r["type"] in REPLIES] == ["subscribed"]
    assert replies[0]["id"] == 7
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
