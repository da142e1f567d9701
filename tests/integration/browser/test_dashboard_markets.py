"""The dashboard on a forex market (`speedlayer up` with SPEEDLAYER_POLYGON_MARKET=forex): pairs
with a slash in the URL hash, the REST path and the WebSocket subscription, typed in any form
(docs/design.md#symbols), in real headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext

from tests.integration.browser.test_dashboard import (
    Recorder,
    UpServer,
    browser,  # noqa: F401  (fixture)
    inspect,
    playwright,  # noqa: F401  (fixture)
    wait_for,
    wait_until,
)


@pytest.fixture
def forex_server(tmp_path: Path) -> Iterator[UpServer]:
    server = UpServer(tmp_path, env={"SPEEDLAYER_POLYGON_MARKET": "forex"})
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dashboard_follows_forex_pairs_in_any_form(
    forex_server: UpServer,
    browser: BrowserContext,  # noqa: F811  (the fixture imported above)
) -> None:
    server = forex_server
    server.wait_for_history("EUR/USD", "1m", 10)
    page = browser.new_page()
    recorder = Recorder()
    recorder.attach(page)

    # Polygon's REST ticker in the URL hash names the stored pair.
    page.goto(f"{server.url}/#symbol=C%3AEURUSD&intervals=1m,5m")
    wait_for(page, "(s) => s.state === 'live' && s.panels.every((p) => p.loaded)")
    assert {p["symbol"] for p in inspect(page)["panels"]} == {"EUR/USD"}
    assert "symbol=EUR%2FUSD" in page.url
    assert "EUR/USD" in page.locator("#symbol-list").inner_html()
    history = recorder.history_requests("EUR%2FUSD", "1m")
    assert history and all(status == 200 for _, status in history), recorder.responses
    subscribed = [m for _, m in recorder.sent if m.get("action") == "subscribe"]
    assert subscribed and all(m["symbols"] == ["EUR/USD"] for m in subscribed), subscribed
    wait_until(
        page,
        lambda: ("candle", "EUR/USD 1m") in {(k, p) for _, k, p, _ in recorder.received},
        lambda: recorder.received[-5:],
    )

    # Typed with the other separator in lower case: the server says which pair it is.
    page.fill("#symbol", "usd-jpy")
    page.press("#symbol", "Enter")
    wait_for(page, "(s) => s.panels.every((p) => p.symbol === 'USD/JPY' && p.loaded)")
    assert "symbol=USD%2FJPY" in page.url
    assert page.locator("#symbol").input_value() == "USD/JPY"
    assert recorder.history_requests("USD%2FJPY", "5m")

    # A REST ticker that is no pair: the notice says why it has no candles.
    page.fill("#symbol", "X:FOOBAR")
    page.press("#symbol", "Enter")
    page.wait_for_function("() => !document.querySelector('#notice').hidden")
    assert "FOOBAR is not read as a pair" in page.locator("#notice").inner_text()

    assert recorder.page_errors == [] and recorder.errors() == [], recorder.console
