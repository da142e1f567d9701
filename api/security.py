"""API-key authentication and CORS.

When ``settings.api_keys`` is non-empty, every HTTP route and WebSocket except the health probes
(``/healthz``, ``/readyz``) needs one of the keys, sent as header ``X-API-Key`` or as query
parameter ``api_key`` (browsers cannot set headers on ``WebSocket`` / ``EventSource``), or the way
Polygon clients send theirs (the Polygon-compatible endpoint, api/polygon_compat.py): header
``Authorization: Bearer <key>`` or query parameter ``apiKey``. The check is
one pure ASGI middleware, so it covers routes mounted anywhere (REST, ``/ws``, ``/stream/*``,
``/docs``, ``/openapi.json``, ``/asyncapi.json``, ``/metrics``) before any of them runs:

- HTTP: 401 JSON ``{"error": "unauthorized", ...}`` without a key, 403 JSON
  ``{"error": "forbidden", ...}`` with a wrong one; paths with a rejection of their own
  (``rejections``: the Polygon-compatible ``/v2/aggs/`` answers Polygon's 401 bodies) get it.
- WebSocket: the handshake is refused before ``accept`` with close code 1008 (policy violation),
  which the server turns into an HTTP 403 response.

Keys are compared in constant time (SHA-256 digests compared with ``hmac.compare_digest``, over
every configured key). The key is never logged: the middleware removes ``api_key`` and ``apiKey``
from the request's query string (in place, before routing), so neither the routes nor uvicorn's
access log (which prints path and query of the same scope) ever see it. Lower down, uvicorn logs
what it receives before the app runs: at DEBUG, the ``websockets`` handshake log (through the logger
``uvicorn.error``) prints the request line with its query and every header, ``X-API-Key``
included; at TRACE, uvicorn's ASGI message log (``uvicorn.asgi``) prints whole scopes. So the app
also puts :class:`RedactKeys` on every log handler when it starts
(:func:`install_log_redaction`): it rewrites any ``api_key=``/``apiKey=`` value, ``X-API-Key``
and ``Authorization`` header value and configured key in a record before it is written, whatever
the logger and level.

With auth on, ``/docs`` and ``/openapi.json`` need the key too: fetch the schema with the header
(``curl -H 'X-API-Key: ...' /openapi.json``); Swagger UI at ``/docs`` can only be used through a
client that adds the header (a proxy or a browser extension), since the page fetches
``/openapi.json`` without query parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any
from urllib.parse import unquote_plus

import msgspec
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from speedlayer.config import Settings

API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY = "api_key"
POLYGON_KEY_QUERY = "apiKey"  # Polygon's query parameter, accepted like api_key
_KEY_QUERIES = (API_KEY_QUERY, POLYGON_KEY_QUERY)
CORS_METHODS = ("GET", "HEAD", "OPTIONS")
CORS_HEADERS = (API_KEY_HEADER, "Last-Event-ID")
EXEMPT_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})
WS_POLICY_VIOLATION = 1008

_HEADER_BYTES = API_KEY_HEADER.lower().encode("latin-1")
_QUERY_BYTES = API_KEY_QUERY.encode("ascii")
_POLYGON_QUERY_BYTES = POLYGON_KEY_QUERY.encode("ascii")
_AUTHORIZATION = b"authorization"
_BEARER = b"bearer "


class KeyCheck(Enum):
    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKeys:
    """The configured keys (as digests) and the constant-time check against them."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k.encode("utf-8")) for k in keys if k)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        return cls(k.get_secret_value() for k in settings.api_keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: bytes | str | None) -> KeyCheck:
        """OK if ``presented`` equals one of the keys; MISSING if it is absent or empty."""
        if presented is None or presented in (b"", ""):
            return KeyCheck.MISSING
        raw = presented.encode("utf-8") if isinstance(presented, str) else presented
        digest = _digest(raw)
        matched = False
        for candidate in self._digests:  # no early exit: the time does not depend on which key
            matched |= hmac.compare_digest(digest, candidate)
        return KeyCheck.OK if matched else KeyCheck.INVALID


def split_api_key(query_string: bytes) -> tuple[bytes | None, bytes]:
    """Return (the first ``api_key`` or ``apiKey`` value, URL-decoded; the query string without
    any ``api_key`` or ``apiKey`` pair). Other pairs are kept byte for byte."""
    if (
        _QUERY_BYTES not in query_string
        and _POLYGON_QUERY_BYTES not in query_string
        and b"%" not in query_string
    ):  # the common case
        return None, query_string
    key: bytes | None = None
    kept: list[bytes] = []
    for pair in query_string.split(b"&"):
        name, _, value = pair.partition(b"=")
        if unquote_plus(name.decode("latin-1")) in _KEY_QUERIES:
            if key is None:
                key = unquote_plus(value.decode("latin-1"), encoding="utf-8").encode("utf-8")
            continue
        kept.append(pair)
    return key, b"&".join(kept)


def scope_api_key(scope: Scope) -> bytes | None:
    """The key a request presents: header ``X-API-Key``, else ``Authorization: Bearer``, else
    query ``api_key`` (or ``apiKey``).

    Also removes ``api_key`` and ``apiKey`` from ``scope["query_string"]`` in place (see the
    module docstring).
    """
    from_query, rest = split_api_key(scope.get("query_string", b""))
    if from_query is not None:
        scope["query_string"] = rest
    bearer: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name == _HEADER_BYTES:
            return bytes(value)
        if name == _AUTHORIZATION and bytes(value[:7]).lower() == _BEARER and bearer is None:
            bearer = bytes(value[7:]).strip()
    return bearer if bearer is not None else from_query


# -- keys in logs --------------------------------------------------------------------------------

REDACTED = "[redacted]"
_LOG_SECRETS = re.compile(
    r"(?i)(?:"
    r"(?P<query>\bapi(?:_|%5f)?key(?:=|%3d))[^&\s'\"#]*"  # ?api_key= / ?apiKey= in a URL or query
    r"|(?P<line>\bx-api-key\s*:\s*|\bauthorization\s*:\s*(?:\w+\s+)?)\S+"  # a header line
    r"|(?P<pair>\b(?:x-api-key|authorization)['\"]\s*,\s*b?['\"])[^'\"]*"  # (b'x-api-key', b'..')
    r")"
)


def redact(text: str, keys: Sequence[str] = ()) -> str:
    """``text`` without API keys: ``api_key``/``apiKey`` query values, ``X-API-Key`` and
    ``Authorization`` header values and any of ``keys`` replaced by ``[redacted]``."""
    text = _LOG_SECRETS.sub(
        lambda m: (m.group("query") or m.group("line") or m.group("pair")) + REDACTED, text
    )
    for key in keys:
        if key in text:
            text = text.replace(key, REDACTED)
    return text


class RedactKeys(logging.Filter):
    """A handler filter that removes API keys from every record it passes (see the module
    docstring): the message and each argument are redacted, keeping their positions, since
    formatters such as uvicorn's access formatter read the arguments one by one."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        super().__init__()
        self.keys = tuple(sorted({k for k in keys if k}, key=len, reverse=True))

    def _clean(self, value: object) -> object:
        if isinstance(value, (int, float)) or value is None:
            return value
        text = value if isinstance(value, str) else str(value)
        cleaned = redact(text, self.keys)
        return value if cleaned == text else cleaned

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            if redact(message, self.keys) != message:
                if isinstance(record.msg, str):
                    record.msg = redact(record.msg, self.keys)
                args = record.args
                if isinstance(args, tuple):
                    record.args = tuple(self._clean(a) for a in args)
                elif isinstance(args, Mapping):
                    record.args = {k: self._clean(v) for k, v in args.items()}
                message = record.getMessage()
                cleaned = redact(message, self.keys)
                if cleaned != message:  # a key split over arguments ("< %s: %s"): the whole line
                    record.msg, record.args = cleaned, None
            if record.exc_text:
                record.exc_text = redact(record.exc_text, self.keys)
        except Exception:  # a filter must never lose a record
            return True
        return True


def install_log_redaction(keys: Iterable[str] = ()) -> None:
    """Put one :class:`RedactKeys` (with ``keys``) on every handler of every logger that exists
    now (uvicorn configures its own before the app starts), replacing an earlier one."""
    redactor = RedactKeys(keys)
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            for old in [f for f in handler.filters if isinstance(f, RedactKeys)]:
                handler.removeFilter(old)
            handler.addFilter(redactor)


def _error_body(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": code, "message": message})


MISSING_MESSAGE = (
    f"an API key is required: send header {API_KEY_HEADER} (or query parameter {API_KEY_QUERY}, "
    "or header Authorization: Bearer)"
)
# A path prefix's own answer to a request without a valid key: (status, JSON body) per outcome.
Rejection = Callable[[KeyCheck], tuple[int, bytes]]
INVALID_MESSAGE = "the API key is not valid"


class ApiKeyMiddleware:
    """Pure ASGI: enforce the API key on HTTP and WebSocket scopes (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys,
        exempt: Iterable[str] = EXEMPT_PATHS,
        rejections: Mapping[str, Rejection] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.exempt = frozenset(exempt)
        self.rejections = tuple((rejections or {}).items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        presented = scope_api_key(scope)  # always: strips api_key from the logged query string
        if not self.keys.enabled or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        outcome = self.keys.check(presented)
        if outcome is KeyCheck.OK:
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            # Refuse the handshake before accept: the server answers HTTP 403.
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": ""})
            return
        own = next((r for prefix, r in self.rejections if scope["path"].startswith(prefix)), None)
        if own is not None:
            status, body = own(outcome)
        elif outcome is KeyCheck.MISSING:
            status, body = 401, _error_body("unauthorized", MISSING_MESSAGE)
        else:
            status, body = 403, _error_body("forbidden", INVALID_MESSAGE)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 401:
            challenge = "Bearer" if own is not None else f'ApiKey header="{API_KEY_HEADER}"'
            headers.append((b"www-authenticate", challenge.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the API's error shape (400
    ``{"error": "cors_rejected", "message": ...}``) instead of plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        what = bytes(response.body).decode("utf-8", "replace")  # "Disallowed CORS origin, ..."
        message = (
            f"{what}: allowed are the origins of SPEEDLAYER_CORS_ORIGINS, the methods "
            f"{', '.join(CORS_METHODS)} and the headers {', '.join(CORS_HEADERS)}"
        )
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-type", "content-length")
        }
        return Response(
            _error_body("cors_rejected", message),
            status_code=400,
            media_type="application/json",
            headers=headers,
        )


# -- WebSocket origins ---------------------------------------------------------------------------


def _own_origins(scope: Scope) -> set[str]:
    """The origins a page served by this server has: http(s)://<Host header>."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = bytes(value).decode("latin-1").strip().lower()
            return {f"http://{host}", f"https://{host}"}
    return set()


class WebSocketOriginMiddleware:
    """Pure ASGI: a WebSocket handshake whose ``Origin`` (sent by every browser) is neither the
    server's own (the dashboard) nor in the CORS allow-list (``settings.cors_origins``; ``*``
    allows all) is refused before the app runs, with HTTP 403 and the JSON error body
    (``forbidden_origin``), or close code 1008 where the server cannot send a response body.
    Browsers do not apply CORS to WebSockets, so without this any site could open ``/ws`` in a
    visitor's browser. A handshake without ``Origin`` (not a browser) is let through."""

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)
        self.any = "*" in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or self.any:
            await self.app(scope, receive, send)
            return
        origin = None
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = bytes(value).decode("latin-1").strip()
                break
        if origin is None or (
            (key := origin.rstrip("/").lower()) in self.origins or key in _own_origins(scope)
        ):
            await self.app(scope, receive, send)
            return
        message = (
            f"origin {origin!r} may not open a WebSocket here: it is not this server's and not "
            "in SPEEDLAYER_CORS_ORIGINS"
        )
        if "websocket.http.response" in scope.get("extensions", {}):
            body = _error_body("forbidden_origin", message)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "websocket.http.response.start", "status": 403,
                        "headers": headers})  # fmt: skip
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": ""})


def install(
    app: FastAPI,
    settings: Settings,
    public_paths: Iterable[str] = (),
    rejections: Mapping[str, Rejection] | None = None,
) -> None:
    """Add the WebSocket origin check, the API-key check outside it (which strips ``api_key``
    from the query first), then CORS outside both (so 401/403 carry CORS headers and preflight
    requests, which never carry the key, are answered by CORS). ``public_paths`` are exempt
    like the health probes (the dashboard's static files, which carry no data); ``rejections``
    maps path prefixes to their own answer to a missing or wrong key (Polygon's bodies)."""
    exempt = EXEMPT_PATHS | frozenset(public_paths)
    app.add_middleware(WebSocketOriginMiddleware, origins=settings.cors_origins)
    app.add_middleware(
        ApiKeyMiddleware,
        keys=ApiKeys.from_settings(settings),
        exempt=exempt,
        rejections=rejections,
    )
    if settings.cors_origins:
        app.add_middleware(
            JsonCORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_HEADERS),
            allow_credentials=False,
            max_age=600,
        )


# -- OpenAPI -------------------------------------------------------------------------------------

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
        "description": "one of the keys configured in SPEEDLAYER_API_KEYS",
    },
    "ApiKeyQuery": {
        "type": "apiKey",
        "in": "query",
        "name": API_KEY_QUERY,
        "description": "the same key as a query parameter, for browsers' WebSocket and "
        "EventSource, which cannot set headers; never logged",
    },
}


def document_security(
    spec: dict[str, Any], settings: Settings, error_schema: Mapping[str, Any]
) -> None:
    """Add the security schemes and 401/403 responses to ``spec`` when auth is on."""
    if not settings.api_keys:
        return
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    spec["security"] = [{name: []} for name in SECURITY_SCHEMES]
    unauthorized = {
        "description": "no API key was sent",
        "content": {"application/json": {"schema": dict(error_schema)}},
        "headers": {
            "WWW-Authenticate": {
                "description": f'ApiKey header="{API_KEY_HEADER}"',
                "schema": {"type": "string"},
            }
        },
    }
    forbidden = {
        "description": "the API key is not valid",
        "content": {"application/json": {"schema": dict(error_schema)}},
    }
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete", "patch", "head", "options"):
                continue
            if path in EXEMPT_PATHS:
                op["security"] = []
                continue
            responses = op.setdefault("responses", {})
            responses.setdefault("401", unauthorized)
            responses.setdefault("403", forbidden)


def protected_paths_note(settings: Settings, paths: Sequence[str]) -> str:
    """A line for the API description saying what auth covers."""
    if not settings.api_keys:
        return "Authentication is off (no SPEEDLAYER_API_KEYS configured)."
    listed = ", ".join(paths)
    return (
        f"Every route except {listed} needs an API key: header `{API_KEY_HEADER}` or query "
        f"parameter `{API_KEY_QUERY}` (or, as Polygon clients send it, `Authorization: Bearer` "
        f"or `{POLYGON_KEY_QUERY}`); missing → 401, wrong → 403 (WebSocket: handshake refused "
        "with 403 / close code 1008; `/v2/aggs/`: Polygon's 401 bodies). /docs, /openapi.json "
        "and /asyncapi.json too."
    )
