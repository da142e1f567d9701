"""The server side of Polygon's (Massive's) WebSocket protocol, shared by the simulator
(``ingest/simulator/server.py``) and the API's Polygon-shaped candle feed (``api/polygon_ws.py``).

Every frame is a JSON array of events. Status events are ``{"ev": "status", "status": ...,
"message": ...}``: ``connected`` on open, ``auth_success`` / ``auth_failed`` in answer to
``{"action": "auth", "params": KEY}``, one ``success`` per channel of a ``subscribe`` /
``unsubscribe`` (``{"action": "subscribe", "params": "AM.AAPL,AM.MSFT"}``), ``error`` for
anything the server cannot use (the connection stays open). The official client
(``massive.WebSocketClient``) reads ``connected``, then sends ``auth`` and reads one frame: an
``auth_failed`` status there raises its ``AuthError``.
"""

from __future__ import annotations

import orjson

ACTIONS = ("auth", "subscribe", "unsubscribe")


def status_frame(status: str, message: str) -> bytes:
    """One status event as a frame: ``[{"ev":"status","status":...,"message":...}]``."""
    return orjson.dumps([{"ev": "status", "status": status, "message": message}])


CONNECTED = status_frame("connected", "Connected Successfully")
AUTH_SUCCESS = status_frame("auth_success", "authenticated")
AUTH_FAILED = status_frame("auth_failed", "authentication failed")


def subscribed(subscribe: bool, channel: str) -> bytes:
    """The ``success`` status of one channel of a subscribe or unsubscribe."""
    return status_frame("success", f"{'subscribed' if subscribe else 'unsubscribed'} to: {channel}")


def channels(params: str) -> list[tuple[str, str, str] | str]:
    """The channels of a subscribe's ``params`` (``"AM.AAPL, AM.*"``), in order: each
    ``(channel, prefix, ticker)`` (``("AM.AAPL", "AM", "AAPL")``), or an error message for a
    token that is not ``PREFIX.TICKER``; blank tokens are skipped."""
    out: list[tuple[str, str, str] | str] = []
    for raw in params.split(","):
        token = raw.strip()
        if not token:
            continue
        prefix, dot, ticker = token.partition(".")
        ticker = ticker.strip()
        if not dot or not prefix or not ticker:
            out.append(f"invalid subscription: {token[:100]}")
        else:
            out.append((token, prefix, ticker))
    return out
