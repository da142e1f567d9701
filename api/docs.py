"""API documents: the OpenAPI schema completed per app; the AsyncAPI document of the live feeds.

FastAPI generates the OpenAPI schema from the routes; ``install_openapi`` then adds what depends on
the settings (the configured intervals as an enum, the maximum page size, the API-key security
schemes with 401/403 responses when auth is on) and links the AsyncAPI document, which describes
the WebSocket ``/ws``, SSE ``/stream/candles`` and Polygon-protocol ``/polygon/{market}`` message
formats (OpenAPI cannot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from api import security
from api.polygon_ws import MARKETS
from api.wire import CandleOut, ErrorBody
from speedlayer import __version__
from speedlayer.config import Settings

ASYNCAPI_PATH = "/asyncapi.json"
# SYMBOL_RE. In the path a "/" may be sent as it is or as %2F (the server decodes both the same
# way; a ticker ending in "/latest" would therefore name the /latest route).
SYMBOL_LIST_BODY = r"[A-Za-z0-9][A-Za-z0-9.:/_^=+-]{0,39}"


def symbols_pattern(max_symbols: int) -> str:
    return rf"^{SYMBOL_LIST_BODY}(,{SYMBOL_LIST_BODY}){{0,{max_symbols - 1}}}$"


def openapi_parameters(model: type[BaseModel], where: str = "query") -> list[dict[str, Any]]:
    """OpenAPI parameters documenting ``model``'s fields (by alias), required as the model says,
    for routes that parse their parameters themselves (to answer errors in their own shape). An
    optional field is documented as its non-null type: a query or path has no null."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        options = [p for p in prop.pop("anyOf", []) if p.get("type") != "null"]
        if options:
            prop.update(options[0])
            if prop.get("default") is None:
                prop.pop("default", None)
        param: dict[str, Any] = {"name": name, "in": where, "required": name in required}
        if "description" in prop:
            param["description"] = prop["description"]
        param["schema"] = prop
        out.append(param)
    return out


def _error_ref(spec: dict[str, Any]) -> dict[str, Any]:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorBody" not in schemas:
        schemas["ErrorBody"] = ErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    return {"$ref": "#/components/schemas/ErrorBody"}


def complete_openapi(spec: dict[str, Any], settings: Settings) -> None:
    """Settings-dependent parts of the schema (in place)."""
    names = [iv.name for iv in settings.interval_set]
    for path, item in spec.get("paths", {}).items():
        if not path.startswith("/candles"):
            continue
        for op in item.values():
            for param in op.get("parameters", []):
                schema = param.setdefault("schema", {})
                if param["name"] == "interval" and param["in"] == "query":
                    schema["enum"] = names
                    # member names for generated clients (GetCandlesInterval.INTERVAL_5M)
                    schema["x-enum-varnames"] = [f"INTERVAL_{name.upper()}" for name in names]
                    schema.pop("anyOf", None)
                    schema["type"] = "string"
                elif param["name"] == "limit" and param["in"] == "query":
                    for option in schema.get("anyOf", [schema]):
                        if option.get("type") == "integer":
                            option["maximum"] = settings.max_page
                elif param["name"] == "symbol" and param["in"] == "path":
                    schema["pattern"] = f"^{SYMBOL_LIST_BODY}$"
    description = spec.setdefault("info", {}).get("description", "")
    spec["info"]["description"] = (
        f"{description}\n\n"
        "**Live feeds.** The WebSocket `/ws` and the Server-Sent Events stream `/stream/candles` "
        f"are described (message formats, JSON schemas) by the AsyncAPI document at "
        f"[{ASYNCAPI_PATH}]({ASYNCAPI_PATH}).\n\n"
        '**Errors** are JSON `{"error": code, "message": text}` with the matching status.\n\n'
        f"**Auth.** {security.protected_paths_note(settings, sorted(security.EXEMPT_PATHS))}"
    )
    spec["externalDocs"] = {
        "description": "AsyncAPI 3.0 document of the WebSocket and SSE feeds",
        "url": ASYNCAPI_PATH,
    }
    security.document_security(spec, settings, _error_ref(spec))


def install_docs_page(app: FastAPI) -> None:
    """``/docs``: Swagger UI with its script, style sheet and icon served by this app (the npm
    package ``swagger-ui-dist``, see ``api/dashboard.py``) rather than from a CDN, so the page
    works offline. Build the app with ``docs_url=None`` and ``redoc_url=None`` (ReDoc would
    load from a CDN too)."""
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse

    from api import dashboard

    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=dashboard.SWAGGER_JS_URL,
            swagger_css_url=dashboard.SWAGGER_CSS_URL,
            swagger_favicon_url=dashboard.SWAGGER_FAVICON_URL,
            oauth2_redirect_url=redirect_url,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Wrap ``app.openapi`` so the generated schema is completed once per generation."""
    generate = app.openapi
    done: list[int] = []

    def openapi() -> dict[str, Any]:
        spec = generate()
        if not done or done[0] != id(spec):
            complete_openapi(spec, settings)
            done[:] = [id(spec)]
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


# -- AsyncAPI ------------------------------------------------------------------------------------

_CANDLE_FIELDS_DOC = (
    "`timestamp` (bucket start, epoch ms UTC), `open`, `high`, `low`, `close`, `volume`, `vwap` "
    "(null when no bar had one), `trades` (null when no bar had a count), `bars` (1-minute bars "
    "in the candle), `final` (the bucket's end plus the grace period has passed), `revision` "
    "(increases with every change; order and de-duplicate updates by it), `ttl` (expiry, epoch s)"
)


def _candle_schema() -> dict[str, Any]:
    schema = CandleOut.model_json_schema()
    schema.pop("title", None)
    return schema


def _object(
    properties: dict[str, Any], required: list[str], description: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": required,
    }
    if description:
        out["description"] = description
    return out


def _const(value: str) -> dict[str, Any]:
    return {"type": "string", "const": value}


def _polygon_channel(
    intervals: list[str], message: Callable[[str, dict[str, Any], str], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The channel of the Polygon-protocol WebSocket (api/polygon_ws.py) and its operations."""

    def client(action: str, params: dict[str, Any], description: str) -> dict[str, Any]:
        return _object({"action": _const(action), "params": params}, ["action", "params"],
                       description)  # fmt: skip

    channels = {
        "type": "string",
        "description": "comma-separated channels: `AM.<ticker>` (1-minute candles), "
        "`AM<interval>.<ticker>` (another configured interval, any spelling /intervals takes: "
        f"{', '.join(intervals)}), `<ticker>` `*` for every symbol",
        "examples": ["AM.AAPL,AM5m.MSFT,AM1h.*"],
    }
    status = _object(
        {
            "ev": _const("status"),
            "status": {
                "type": "string",
                "description": "connected, auth_success, auth_failed, success (one per channel "
                "of a subscribe or unsubscribe), error (the connection stays open), "
                "max_connections, slow_consumer, live_feed_interrupted, server_shutting_down",
                "examples": ["success"],
            },
            "message": {"type": "string", "examples": ["subscribed to: AM5m.AAPL"]},
        },
        ["ev", "status", "message"],
    )
    number = {"type": "number"}
    aggregate = _object(
        {
            "ev": _const("AM"),
            "sym": {"type": "string", "examples": ["AAPL"]},
            "v": {**number, "description": "volume"},
            "vw": {**number, "description": "the candle's VWAP (absent when no bar had one)"},
            "o": number,
            "h": number,
            "l": number,
            "c": number,
            "z": {**number, "description": "average trade size (when trades are known)"},
            "s": {"type": "integer", "description": "bucket start, epoch ms"},
            "e": {"type": "integer", "description": "bucket end, epoch ms"},
            "interval": {"type": "string", "enum": intervals},
            "n": {"type": "integer", "description": "trades (when known)"},
            "final": {"type": "boolean"},
            "revision": {"type": "integer", "minimum": 1},
        },
        ["ev", "sym", "v", "o", "h", "l", "c", "s", "e", "interval", "final", "revision"],
        "One candle update as Polygon's `AM` aggregate; `interval`, `n`, `final` and "
        "`revision` are extra fields Polygon's own clients ignore.",
    )
    frame = {
        "type": "array",
        "items": {"oneOf": [status, aggregate]},
        "minItems": 1,
        "description": "every server frame is a JSON array of events",
    }
    messages = {
        "polygonAuth": message(
            "auth", client("auth", {"type": "string"}, "`params` is the API key"), "client → server"
        ),
        "polygonSubscribe": message(
            "subscribe", client("subscribe", channels, "add channels"), "client → server"
        ),
        "polygonUnsubscribe": message(
            "unsubscribe", client("unsubscribe", channels, "remove channels"), "client → server"
        ),
        "polygonEvents": message("events", frame, "server → client: status and AM events"),
    }
    channel = {
        "address": "/polygon/{market}",
        "title": "Polygon-protocol WebSocket",
        "servers": [{"$ref": "#/servers/websocket"}],
        "description": (
            "Polygon's (Massive's) WebSocket protocol, so its official client reads live candles "
            'of every configured interval (`WebSocketClient(feed="HOST:PORT/polygon", '
            "secure=False, ...)`): `connected` on open, then `auth` (answered by `auth_success` "
            "or `auth_failed`), then `subscribe`. Updates come from the same live hub as `/ws` "
            "(no snapshot): a forming candle is sent again at each revision, the last of a "
            "bucket with `final: true`. Close codes: 1008 slow consumer, 1011 live feed "
            "interrupted, 1013 too many connections."
        ),
        "parameters": {
            "market": {
                "enum": list(MARKETS),
                "description": "names the client's event models only: every symbol is served "
                "on every market path",
            }
        },
        "messages": messages,
    }
    ref = "#/channels/polygon"
    operations = {
        "receivePolygonClientMessages": {
            "action": "receive",
            "channel": {"$ref": ref},
            "title": "Client → server Polygon-protocol messages",
            "messages": [
                {"$ref": f"{ref}/messages/{n}"}
                for n in ("polygonAuth", "polygonSubscribe", "polygonUnsubscribe")
            ],
        },
        "sendPolygonEvents": {
            "action": "send",
            "channel": {"$ref": ref},
            "title": "Server → client Polygon-protocol frames",
            "messages": [{"$ref": f"{ref}/messages/polygonEvents"}],
        },
    }
    return channel, operations


def asyncapi_document(settings: Settings, host: str, secure: bool) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``/ws``, ``/stream/candles`` and ``/polygon/{market}`` as
    served from ``host``."""
    intervals = [iv.name for iv in settings.interval_set]
    symbol = {"type": "string", "pattern": f"^{SYMBOL_LIST_BODY}$", "examples": ["AAPL"]}
    interval = {"type": "string", "enum": intervals, "examples": ["15m"]}
    candle = _candle_schema()
    request_id = {
        "description": "optional, any JSON value: echoed as `id` in the `subscribed`, "
        "`unsubscribed` or `pong` reply, and inside `request` of an `error`",
    }
    symbols = {
        "type": "array",
        "items": {"anyOf": [symbol, {"const": "*"}]},
        "minItems": 1,
        "description": "tickers; `*` = every symbol of the intervals (for monitors: no "
        f"snapshot, at most {settings.live_max_wildcards} wildcard subscriptions per server)",
        "examples": [["AAPL", "MSFT"]],
    }
    interval_aliases = {
        "type": "array",
        "items": {"type": "string", "description": "an interval or alias (15m, 15min, 60m)"},
        "minItems": 1,
        "examples": [["1m", "15m"]],
    }
    canonical_intervals = {
        "type": "array",
        "items": interval,
        "description": "the request's intervals, canonical names",
    }
    subscriptions = {
        "type": "integer",
        "minimum": 0,
        "description": "symbol x interval pairs this connection is now subscribed to (a "
        "wildcard counts as one)",
    }
    subscribe = _object(
        {
            "action": _const("subscribe"),
            "symbols": symbols,
            "intervals": interval_aliases,
            "snapshot": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "description": "send the last N stored candles per symbol x interval (oldest "
                "first, the forming one included; capped at "
                f"{settings.live_max_snapshot}) before the live updates, with no gap and no "
                "duplicate between them",
            },
            "id": request_id,
        },
        ["action", "symbols", "intervals"],
        "Add the pairs symbols x intervals to this connection "
        f"(at most {settings.live_max_subscriptions} pairs per connection).",
    )
    unsubscribe = _object(
        {
            "action": _const("unsubscribe"),
            "symbols": symbols,
            "intervals": interval_aliases,
            "id": request_id,
        },
        ["action", "symbols", "intervals"],
        "Remove the pairs symbols x intervals from this connection.",
    )
    ping = _object({"action": _const("ping"), "id": request_id}, ["action"], "Ask for a `pong`.")
    echo_id = {"description": "the request's `id`, when it had one"}
    subscribed = _object(
        {
            "type": _const("subscribed"),
            "id": echo_id,
            "symbols": {"type": "array", "items": {"type": "string"}},
            "intervals": canonical_intervals,
            "snapshot": {"type": "integer", "description": "candles per pair that follow"},
            "subscriptions": subscriptions,
            "live": {
                "type": "boolean",
                "description": "false when the server has no candle bus (`speedlayer api` on "
                "its own): snapshots only, no live updates",
            },
            "message": {"type": "string", "description": "present when `live` is false"},
        },
        ["type", "symbols", "intervals", "snapshot", "subscriptions", "live"],
        "Acknowledges a subscribe (echoing it with canonical interval names). The snapshots, "
        "if any, follow.",
    )
    unsubscribed = _object(
        {
            "type": _const("unsubscribed"),
            "id": echo_id,
            "symbols": {"type": "array", "items": {"type": "string"}},
            "intervals": canonical_intervals,
            "subscriptions": subscriptions,
        },
        ["type", "symbols", "intervals", "subscriptions"],
        "Acknowledges an unsubscribe.",
    )
    snapshot = _object(
        {
            "type": _const("snapshot"),
            "symbol": symbol,
            "interval": interval,
            "candles": {"type": "array", "items": candle, "description": "oldest first"},
        },
        ["type", "symbol", "interval", "candles"],
        "The last stored candles of one symbol x interval (the forming one included), sent once "
        "per pair after `subscribed` when a snapshot was asked for; `candle` updates follow "
        "with no gap and no duplicate.",
    )
    candle_props = {
        k: v for k, v in candle["properties"].items() if k not in ("symbol", "interval")
    }
    candle_update = _object(
        {
            "type": _const("candle"),
            "seq": {
                "type": "integer",
                "description": "the server's event sequence number (global, increasing; the SSE "
                "event id). Starts at the hub's start time in microseconds, so ids of a new "
                "server process are larger than those of the previous one",
            },
            "symbol": symbol,
            "interval": interval,
            **candle_props,
        },
        ["type", "seq", *candle["required"]],
        "One update of a candle: forming, final, or a late correction. Candle fields at the top "
        f"level: {_CANDLE_FIELDS_DOC}. Per candle, revisions arrive strictly increasing.",
    )
    error = _object(
        {
            "type": _const("error"),
            "message": {
                "type": "string",
                "examples": ["unknown action 'jump': expected subscribe, unsubscribe or ping"],
            },
            "request": {"description": "the client message that was rejected, when it parsed"},
        },
        ["type", "message"],
        "A client message was rejected (the connection stays open; the subscriptions are "
        "unchanged), or the server is about to close the connection (`slow consumer`: the "
        "client's bounded queue overflowed; `live feed interrupted`: the server's candle bus "
        "subscription failed, so updates may have been missed: reconnect for a fresh snapshot; "
        "`server shutting down`).",
    )
    pong = _object({"type": _const("pong"), "id": echo_id}, ["type"], "Answer to `ping`.")

    sse_candle = {**candle_update, "description": "`event: candle`, `id:` = `seq`; `data:` is "
                  "this JSON object (the same as the WebSocket `candle` message)"}  # fmt: skip
    sse_snapshot = {**snapshot, "description": "`event: snapshot` (one per pair), `id:` = the "
                    "event sequence when the stream subscribed; `data:` is this JSON object "
                    "(the same as the WebSocket `snapshot` message)"}  # fmt: skip
    sse_error = {**error, "description": "`event: error`; `data:` is this JSON object. The stream "
                 "ends after it (e.g. `slow consumer`)"}  # fmt: skip

    def message(name: str, schema: dict[str, Any], summary: str) -> dict[str, Any]:
        return {
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": "application/json",
            "payload": schema,
        }

    ws_messages = {
        "subscribe": message("subscribe", subscribe, "client → server: subscribe"),
        "unsubscribe": message("unsubscribe", unsubscribe, "client → server: unsubscribe"),
        "ping": message("ping", ping, "client → server: ping"),
        "subscribed": message("subscribed", subscribed, "server → client: subscribe acknowledged"),
        "unsubscribed": message(
            "unsubscribed", unsubscribed, "server → client: unsubscribe acknowledged"
        ),
        "snapshot": message("snapshot", snapshot, "server → client: recent candles"),
        "candle": message("candle", candle_update, "server → client: a candle update"),
        "error": message("error", error, "server → client: an error"),
        "pong": message("pong", pong, "server → client: answer to ping"),
    }
    sse_messages = {
        "sseSnapshot": message("snapshot", sse_snapshot, "event: snapshot"),
        "sseCandle": message("candle", sse_candle, "event: candle"),
        "sseError": message("error", sse_error, "event: error"),
    }
    for msg in sse_messages.values():
        msg["headers"] = _object(
            {
                "event": {"type": "string", "enum": ["snapshot", "candle", "error"]},
                "id": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "the event sequence number (global to the server, "
                    "increasing); a reconnecting client sends the last one back as "
                    "`Last-Event-ID` (or `?last_event_id=`) to resume",
                },
            },
            ["event"],
            "SSE fields of the event (not JSON on the wire)",
        )

    polygon_channel, polygon_operations = _polygon_channel(intervals, message)

    auth_on = bool(settings.api_keys)
    security_refs = (
        [{"$ref": "#/components/securitySchemes/apiKeyHeader"},
         {"$ref": "#/components/securitySchemes/apiKeyQuery"}]
        if auth_on else []
    )  # fmt: skip
    ws_scheme = "wss" if secure else "ws"
    http_scheme = "https" if secure else "http"
    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "speedlayer live candles",
            "version": __version__,
            "description": (
                "Live OHLCV candle updates over a WebSocket (`/ws`: subscribe / unsubscribe / "
                "ping, JSON text frames) and Server-Sent Events (`/stream/candles`). Every "
                "candle update carries `final` and `revision`: a candle is published while it "
                "forms, once more when final, and again on a late correction; keep the highest "
                "revision per (symbol, interval, timestamp). Clients whose queue fills up "
                f"(more than {settings.live_queue_messages} pending messages) are dropped with an "
                "`error` message giving the reason; they never stall the pipeline. REST API: "
                "[/openapi.json](/openapi.json)."
                + (
                    " Auth: the key goes in header `X-API-Key` or query `api_key`; a WebSocket "
                    "handshake without a valid key is refused with HTTP 403 (close code 1008)."
                    if auth_on
                    else ""
                )
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "websocket": {
                "host": host,
                "protocol": ws_scheme,
                "description": "the WebSocket endpoint of this API",
                "security": security_refs,
            },
            "sse": {
                "host": host,
                "protocol": http_scheme,
                "description": "the SSE endpoint of this API",
                "security": security_refs,
            },
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "title": "WebSocket",
                "servers": [{"$ref": "#/servers/websocket"}],
                "description": (
                    "One JSON object per text frame; with `?batch=1` each server frame is a "
                    "JSON array of such messages instead (in order, up to 1,000 per frame: "
                    "for monitors of many symbols). Client messages have `action`, server "
                    "messages have `type`. Subscriptions are symbol x interval pairs (the "
                    "cross product of `symbols` and `intervals`). Client messages larger than "
                    f"{settings.live_max_message_bytes} bytes are answered with an `error`. "
                    "Close codes: 1008 `slow consumer` (the client's queue of "
                    f"{settings.live_queue_messages} messages overflowed), 1013 too many "
                    f"connections (limit {settings.live_max_connections}), 1011 `live feed "
                    "interrupted` (reconnect for a fresh snapshot), 1001 server shutting down. "
                    "With auth on, a handshake without a valid key is refused with HTTP 403 "
                    "(close code 1008) before it is accepted."
                ),
                "messages": ws_messages,
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": _object(
                            {
                                "api_key": {
                                    "type": "string",
                                    "description": "API key (if auth on)",
                                },
                                "batch": {
                                    "type": "string",
                                    "enum": ["0", "1", "false", "true"],
                                    "description": "1: every server frame is an array of messages",
                                },
                            },
                            [],
                        ),
                    }
                },
            },
            "sseCandles": {
                "address": "/stream/candles",
                "title": "Server-Sent Events",
                "servers": [{"$ref": "#/servers/sse"}],
                "description": (
                    "`GET /stream/candles?symbols=AAPL,MSFT&intervals=1m,5m&snapshot=100` "
                    "(`text/event-stream`; the REST OpenAPI document lists its 422/503 errors). "
                    "Each event has `event:` snapshot | candle | error, `id:` and `data:` = one "
                    "JSON object (below). A reconnecting client sends the last id as "
                    "`Last-Event-ID` (browsers' EventSource does it by itself) or "
                    "`?last_event_id=`; it gets exactly the missed candle events of its "
                    "subscription, in order, while they are all within the replay window (the "
                    f"last {settings.sse_replay_events} events of the server), else a fresh "
                    "snapshot. Comment lines (`: ping ...`) every "
                    f"{settings.sse_heartbeat_s:g} s keep idle proxies from closing the stream."
                ),
                "messages": sse_messages,
                "bindings": {
                    "http": {
                        "method": "GET",
                        "query": _object(
                            {
                                "symbols": {
                                    "type": "string",
                                    "description": "comma-separated tickers, or `*` for all",
                                    "examples": ["AAPL,MSFT"],
                                },
                                "intervals": {
                                    "type": "string",
                                    "description": "comma-separated intervals",
                                    "default": "1m",
                                    "examples": ["1m,5m"],
                                },
                                "snapshot": {
                                    "type": "integer",
                                    "minimum": 0,
                                    "default": 100,
                                    "description": "stored candles per pair sent first",
                                },
                                "last_event_id": {
                                    "type": "string",
                                    "description": "resume after this id (like Last-Event-ID)",
                                },
                                "api_key": {"type": "string"},
                            },
                            ["symbols"],
                        ),
                    }
                },
            },
            "polygon": polygon_channel,
        },
        "operations": {
            "receiveClientMessages": {
                "action": "receive",
                "channel": {"$ref": "#/channels/ws"},
                "title": "Client → server WebSocket messages",
                "messages": [
                    {"$ref": f"#/channels/ws/messages/{n}"}
                    for n in ("subscribe", "unsubscribe", "ping")
                ],
                "reply": {
                    "channel": {"$ref": "#/channels/ws"},
                    "messages": [
                        {"$ref": f"#/channels/ws/messages/{n}"}
                        for n in ("subscribed", "unsubscribed", "snapshot", "error", "pong")
                    ],
                },
            },
            "sendServerMessages": {
                "action": "send",
                "channel": {"$ref": "#/channels/ws"},
                "title": "Server → client WebSocket messages",
                "messages": [
                    {"$ref": f"#/channels/ws/messages/{n}"}
                    for n in ("subscribed", "unsubscribed", "snapshot", "candle", "error", "pong")
                ],
            },
            "sendSseEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/sseCandles"},
                "title": "SSE events",
                "messages": [
                    {"$ref": f"#/channels/sseCandles/messages/{n}"}
                    for n in ("sseSnapshot", "sseCandle", "sseError")
                ],
            },
            **polygon_operations,
        },
        "components": {
            "schemas": {"Candle": candle},
            "securitySchemes": {
                "apiKeyHeader": {
                    "type": "httpApiKey",
                    "name": security.API_KEY_HEADER,
                    "in": "header",
                },
                "apiKeyQuery": {
                    "type": "httpApiKey",
                    "name": security.API_KEY_QUERY,
                    "in": "query",
                    "description": "for browsers, which cannot set headers on WebSocket or "
                    "EventSource",
                },
            },
        },
    }
    return doc
