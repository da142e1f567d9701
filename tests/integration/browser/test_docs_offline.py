"""``/docs`` (Swagger UI) in headless Chromium with no way off the machine: its script, style
sheet and icon come from this app (npm ``swagger-ui-dist``), never from a CDN."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import BrowserContext, Route

from api import dashboard
from speedlayer.config import Settings
from tests.integration.browser.test_dashboard import (  # noqa: F401 (fixtures)
    ThreadServer,
    browser,
    playwright,
)

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def test_docs_renders_swagger_ui_offline(browser: BrowserContext, tmp_path: Path) -> None:  # noqa: F811
    left: list[str] = []  # every request that would have left loopback (aborted)
    requests: list[str] = []

    def guard(route: Route) -> None:
        url = route.request.url
        requests.append(url)
        host = urlsplit(url).hostname or ""
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and host not in LOOPBACK:
            left.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    browser.route("**/*", guard)
    with ThreadServer(Settings(db=tmp_path / "api.db")) as server:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/docs")
        candles = page.locator(".swagger-ui .opblock", has_text="/candles/{symbol}")
        candles.first.wait_for(state="visible")
        assert page.locator(".swagger-ui .opblock").count() >= 5
        assert page.locator(".swagger-ui .info .title").inner_text().startswith("speedlayer")
        # the local assets were what the page loaded
        for url in (dashboard.SWAGGER_JS_URL, dashboard.SWAGGER_CSS_URL, "/openapi.json"):
            assert server.url + url in requests, requests
        assert not left, f"requests left loopback: {left}"
        assert not errors, errors
        # ReDoc would need a CDN: it is off
        assert httpx.get(server.url + "/redoc", timeout=10).status_code == 404


def test_docs_assets_are_public_and_say_how_to_install(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "api.db", api_keys=["docs-test-key"])
    with ThreadServer(settings) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        for url, media_type in [
            (dashboard.SWAGGER_JS_URL, "text/javascript; charset=utf-8"),
            (dashboard.SWAGGER_CSS_URL, "text/css; charset=utf-8"),
            (dashboard.SWAGGER_FAVICON_URL, "image/png"),
        ]:
            response = http.get(url)
            assert (response.status_code, response.headers["content-type"]) == (200, media_type)
        assert http.get("/docs/assets/index.html").status_code == 401  # not one of ours
        page = http.get("/docs", headers={"X-API-Key": "docs-test-key"})
        assert page.status_code == 200
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        schema = http.get("/openapi.json", headers={"X-API-Key": "docs-test-key"}).json()
        assert not any(path.startswith("/docs") for path in schema["paths"])
