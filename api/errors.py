"""Every error leaves the API as JSON ``{"error": code, "message": text}`` with the right status."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.metrics import record_store_error
from speedlayer.errors import ConfigError, ConfigurationError, StoreError

log = logging.getLogger(__name__)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = msgspec.json.encode({"error": code, "message": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_parameter", _describe(exc))

    @app.exception_handler(ConfigError)
    async def _config(_: Request, exc: ConfigError) -> Response:
        return error_response(422, "invalid_parameter", str(exc))

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> Response:
        log.error("store error: %s", exc)
        record_store_error(request.app)
        return error_response(503, "store_unavailable", "the candle store is unavailable")

    @app.exception_handler(ConfigurationError)
    async def _configuration(request: Request, exc: ConfigurationError) -> Response:
        # The message names a setting and an endpoint: for the operator's log, not the client.
        log.error("backend configuration error: %s", exc)
        record_store_error(request.app)
        return error_response(503, "store_unavailable", "the candle store is unavailable")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the server log")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # keep the exception's headers (405 must say Allow: ...); GET routes answer HEAD too
        headers = dict(exc.headers or {})
        allow = headers.get("Allow", "")
        if "GET" in allow.split(", ") and "HEAD" not in allow:
            headers["Allow"] = f"{allow}, HEAD"
        return error_response(exc.status_code, code, str(exc.detail), headers or None)
