"""The live candle dashboard: static files served at ``/`` and under ``/dashboard/``.

The page (``api/static/index.html``, ``dashboard.js``, ``dashboard.css``) draws candlestick
charts with TradingView's lightweight-charts, loads history from ``GET /candles/{symbol}`` and
follows the WebSocket feed ``/ws``. The chart library is the npm package ``lightweight-charts``
(pinned in package.json, installed by ``make setup``), served from ``node_modules`` as it ships;
without it the page says how to install it and the library's URL answers 503 with the same
message.

The same mechanism serves Swagger UI's assets for ``/docs`` (``api/docs.py``) under
``/docs/assets/``: the npm package ``swagger-ui-dist`` (pinned in package.json), so the API's
documentation page works without internet access.

These files carry no data, so they are public even when API keys are on (``PUBLIC_PATHS``): the
page asks for the key, keeps it in the browser and sends it with every request it makes. None of
these routes is part of the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from api.errors import error_response

STATIC_DIR = Path(__file__).resolve().parent / "static"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHART_LIBRARY = (
    PROJECT_ROOT
    / "node_modules"
    / "lightweight-charts"
    / "dist"
    / "lightweight-charts.standalone.production.mjs"
)
CHART_LIBRARY_URL = "/dashboard/lightweight-charts.mjs"
MISSING_LIBRARY_MESSAGE = (
    f"the chart library is not installed ({CHART_LIBRARY} is missing): "
    "run `make setup` (or `npm ci`) in the project directory, then reload"
)

SWAGGER_UI_DIR = PROJECT_ROOT / "node_modules" / "swagger-ui-dist"
SWAGGER_UI_PREFIX = "/docs/assets/"
SWAGGER_JS_URL = SWAGGER_UI_PREFIX + "swagger-ui-bundle.js"
SWAGGER_CSS_URL = SWAGGER_UI_PREFIX + "swagger-ui.css"
SWAGGER_FAVICON_URL = SWAGGER_UI_PREFIX + "favicon-32x32.png"
MISSING_SWAGGER_MESSAGE = (
    f"Swagger UI is not installed ({SWAGGER_UI_DIR} is missing): "
    "run `make setup` (or `npm ci`) in the project directory, then reload"
)

JS = "text/javascript; charset=utf-8"


class StaticFile(NamedTuple):
    path: Path
    media_type: str
    missing: tuple[int, str, str]  # status, error code, message when the file is not there


def _part_of_the_page(name: str) -> tuple[int, str, str]:
    return 404, "not_found", f"dashboard file {name} is missing from {STATIC_DIR}"


# URL path -> the file served there
FILES: dict[str, StaticFile] = {
    "/": StaticFile(
        STATIC_DIR / "index.html", "text/html; charset=utf-8", _part_of_the_page("index.html")
    ),
    "/dashboard/dashboard.js": StaticFile(
        STATIC_DIR / "dashboard.js", JS, _part_of_the_page("dashboard.js")
    ),
    "/dashboard/dashboard.css": StaticFile(
        STATIC_DIR / "dashboard.css", "text/css; charset=utf-8", _part_of_the_page("dashboard.css")
    ),
    CHART_LIBRARY_URL: StaticFile(
        CHART_LIBRARY, JS, (503, "chart_library_missing", MISSING_LIBRARY_MESSAGE)
    ),
}
for _name, _type in (
    ("swagger-ui-bundle.js", JS),
    ("swagger-ui.css", "text/css; charset=utf-8"),
    ("favicon-32x32.png", "image/png"),
):
    FILES[SWAGGER_UI_PREFIX + _name] = StaticFile(
        SWAGGER_UI_DIR / _name, _type, (503, "swagger_ui_missing", MISSING_SWAGGER_MESSAGE)
    )
PUBLIC_PATHS: frozenset[str] = frozenset(FILES)
# Browsers revalidate on every load (ETag / Last-Modified), so an upgrade shows at once.
CACHE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _serve(path: str) -> Response:
    file = FILES[path]
    if not file.path.is_file():
        return error_response(*file.missing)
    return FileResponse(file.path, media_type=file.media_type, headers=CACHE_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def dashboard_page() -> Response:
    return _serve("/")


@router.api_route("/dashboard/{name}", methods=["GET", "HEAD"])
async def dashboard_file(name: str) -> Response:
    path = f"/dashboard/{name}"
    if path not in FILES:
        return error_response(404, "not_found", f"no dashboard file {name!r}")
    return _serve(path)


@router.api_route(SWAGGER_UI_PREFIX + "{name}", methods=["GET", "HEAD"])
async def swagger_ui_file(name: str) -> Response:
    path = SWAGGER_UI_PREFIX + name
    if path not in FILES:
        return error_response(404, "not_found", f"no documentation file {name!r}")
    return _serve(path)
