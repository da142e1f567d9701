"""The live dashboard at ``/`` in real headless Chromium, against `speedlayer up` on the simulator.

The browser is Debian's ``chromium`` (``make setup`` installs it), driven by Playwright for
Python through ``executable_path``; Playwright's own browser downloads are never used. The page
is driven like a person would (typing a symbol, picking intervals, dragging the chart) and
inspected through the chart library's own data (``series.data()``, exposed by
``window.speedlayer.inspect()``), the network requests and the WebSocket frames it sends.

The screenshot of the end-to-end run goes to ``test-artifacts/dashboard.png``; with
``SPEEDLAYER_UPDATE_SCREENSHOT=1`` (``make screenshot``) it also replaces ``docs/dashboard.png``,
the README's picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Playwright, sync_playwright
from playwright.sync_api import WebSocket as PageWebSocket

from api import dashboard
from api.app import create_app
from speedlayer.config import Settings
from tests.conftest import ROOT, SPEEDLAYER, free_port, require, stop_by_sigterm

CHROMIUM = Path(os.environ.get("SPEEDLAYER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
DOC_SCREENSHOT = ROOT / "docs" / "dashboard.png"
VIEWPORT = {"width": 1200, "height": 820}  # two charts per row
SPEED = 4  # simulated minutes per second: a 1-minute bar every 0.25 s
API_KEY = "dashboard-test-key"


# -- servers ----------------------------------------------------------------------------------


class UpServer:
    """`speedlayer up` (simulator, 20 symbols) as a subprocess; restartable on the same port and
    database, its output appended to one log file."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.db = workdir / "up.db"
        self.log_path = workdir / "up.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SPEEDLAYER_LOG_LEVEL": "info",
            "SPEEDLAYER_BACKFILL_LOOKBACK_MIN": "120",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [SPEEDLAYER, "up", "--db", str(self.db), "--port", str(self.port),
                 "--symbols", "20", "--speed", str(SPEED)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "speedlayer up exited:\n" + self.log()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < deadline, "speedlayer up never became ready\n" + self.log()
            time.sleep(0.1)

    def wait_for_history(self, symbol: str, interval: str, count: int, headers: Any = None) -> None:
        """Until the start-up backfill has stored ``count`` candles of the pair."""
        url = f"{self.url}/candles/{symbol}?interval={interval}&order=desc&limit={count}"
        deadline = time.monotonic() + 30
        while len(httpx.get(url, headers=headers, timeout=5).json()["candles"]) < count:
            assert time.monotonic() < deadline, f"no {count} {interval} {symbol}\n{self.log()}"
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        assert self.proc is not None
        return stop_by_sigterm(self.proc, lambda: "speedlayer up did not stop on SIGTERM")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def up_server(tmp_path: Path) -> Iterator[UpServer]:
    server = UpServer(tmp_path)
    server.start()
    yield server
    server.stop()


class ThreadServer:
    """``create_app`` in a real uvicorn server on a thread (for checks that patch the module)."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()))

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# -- the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    require(
        CHROMIUM.exists(),
        f"Debian's chromium is not installed at {CHROMIUM}: run `make setup` (it installs "
        "it with apt-get), or set SPEEDLAYER_CHROMIUM to a Chromium binary",
    )
    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def browser(playwright: Playwright, tmp_path: Path) -> Iterator[BrowserContext]:
    """Chromium with a fresh profile directory."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport=VIEWPORT,  # type: ignore[arg-type]
        timeout=30_000,
    )
    context.set_default_timeout(15_000)
    yield context
    context.close()


@dataclass
class Recorder:
    """Everything the page says and sends: console, page errors, responses, WebSocket frames."""

    console: list[tuple[str, str, str]] = field(default_factory=list)  # phase, type, text + url
    page_errors: list[str] = field(default_factory=list)
    responses: list[tuple[str, int]] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    sent: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (socket no., message)
    received: list[tuple[int, str, str, str]] = field(default_factory=list)  # no., type, pair
    phase: str = "start"

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(f"{self.phase}: {error}"))
        page.on("response", lambda response: self.responses.append((response.url, response.status)))
        page.on("websocket", self._socket)

    def _console(self, message: ConsoleMessage) -> None:
        where = message.location.get("url", "") if message.location else ""
        self.console.append((self.phase, message.type, f"{message.text} @ {where}"))

    def _socket(self, socket: PageWebSocket) -> None:
        number = len(self.sockets)
        self.sockets.append(socket.url)
        socket.on("framesent", lambda payload: self.sent.append((number, json.loads(payload))))
        socket.on("framereceived", lambda payload: self._received(number, payload))

    def _received(self, number: int, payload: str | bytes) -> None:
        message = json.loads(payload)
        pair = f"{message.get('symbol')} {message.get('interval')}"
        self.received.append((number, message.get("type", "?"), pair, message.get("message", "")))

    def errors(self) -> list[tuple[str, str, str]]:
        return [entry for entry in self.console if entry[1] == "error"]

    def history_requests(self, symbol: str, interval: str) -> list[tuple[str, int]]:
        prefix = f"/candles/{symbol}?interval={interval}&order=desc"
        return [(url, status) for url, status in self.responses if prefix in url]


def inspect(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("window.speedlayer.inspect()")
    return state


def wait_for(page: Page, condition: str, arg: Any = None, timeout_s: float = 15) -> None:
    """Wait until ``condition`` (a JS function of (state, arg)) holds for inspect()'s state."""
    page.wait_for_function(
        f"([arg]) => window.speedlayer && ({condition})(window.speedlayer.inspect(), arg)",
        arg=[arg],
        timeout=timeout_s * 1000,
    )


def wait_until(
    page: Page, predicate: Callable[[], bool], show: Callable[[], object], timeout_s: float = 15
) -> None:
    """Until ``predicate()`` holds for what the recorder saw (it records while Playwright runs)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; last seen: {show()}"
        page.wait_for_timeout(50)


def panel(page: Page, index: int) -> dict[str, Any]:
    panels: list[dict[str, Any]] = inspect(page)["panels"]
    return panels[index]


def assert_chart_consistent(state: dict[str, Any], interval_s: int) -> None:
    """The chart library holds what the page merged: every candle once, on its bucket grid."""
    assert state["loaded"], state
    assert state["chartBars"] == state["volumeBars"] == state["candles"] > 0, state
    assert state["chartLast"]["time"] % interval_s == 0, state
    assert state["chartLast"]["time"] * 1000 == state["last"]["timestamp"], state
    assert state["chartLast"]["close"] == state["last"]["close"], state
    tag = "final" if state["last"]["final"] else "forming"
    assert state["legend"].endswith(tag), state
    assert ("color" in state["chartLast"]) is (not state["last"]["final"]), state  # hollow


# Chart i's newest candle changed in place: same bucket, new values, drawn from a live update
# (polled every animation frame; the previous observation is kept on the page).
IN_PLACE = """(s, [i]) => {
    const last = s.panels[i].chartLast, live = s.panels[i].lastLive;
    if (last === null || live === null || live.timestamp !== last.time * 1000) return false;
    const seen = (window.inPlaceSeen ??= {});
    const previous = seen[i];
    seen[i] = { time: last.time, bar: JSON.stringify(last) };
    return previous !== undefined && previous.time === last.time && previous.bar !== seen[i].bar;
}"""


# Chart i got live updates since ``before`` (its inspect() state), and its newest candle differs
# from the one then and is the one the latest live update drew.
CHANGED = """(s, [i, old]) => {
    const p = s.panels[i], last = p.chartLast, live = p.lastLive, before = old.chartLast;
    if (last === null || live === null || p.liveUpdates <= old.liveUpdates) return false;
    const keys = ["time", "open", "high", "low", "close", "color"];
    const same = keys.every((k) => last[k] === before[k]);
    return !same && live.timestamp === last.time * 1000 && live.close === last.close;
}"""


# -- the end-to-end run -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dashboard_live_charts_end_to_end(up_server: UpServer, browser: BrowserContext) -> None:
    server = up_server
    server.wait_for_history("MSFT", "5m", 20)
    page = browser.new_page()
    recorder = Recorder()
    recorder.attach(page)
    # Small history pages, so that scrolling left has older pages to load.
    page.goto(f"{server.url}/?page=30")
    wait_for(page, "(s) => s.state === 'live' && s.panels.every((p) => p.loaded)")
    assert [p["interval"] for p in inspect(page)["panels"]] == ["1m", "15m", "1h"]
    assert page.locator("#symbol-list option").count() == 20

    # Pick a symbol by typing it in the search box (any case), then an interval for chart 1.
    page.fill("#symbol", "msft")
    page.press("#symbol", "Enter")
    wait_for(page, "(s) => s.panels.every((p) => p.symbol === 'MSFT' && p.loaded)")
    assert "symbol=MSFT" in page.url
    page.fill("#symbol", "not a ticker")
    page.press("#symbol", "Enter")
    page.wait_for_selector("#notice:has-text('is not a ticker')")
    assert {p["symbol"] for p in inspect(page)["panels"]} == {"MSFT"}
    page.fill("#symbol", "MSFT")
    page.press("#symbol", "Enter")
    page.wait_for_selector("#notice", state="hidden")
    first = page.locator(".panel").nth(0)
    first.locator("select.panel-interval").select_option("5m")
    wait_for(page, "(s) => s.panels[0].interval === '5m' && s.panels[0].loaded")

    # History came from REST (the newest page; 30 candles), drawn by the chart.
    assert ("/candles/MSFT?interval=5m&order=desc&limit=30", 200) in [
        (url.removeprefix(server.url), status)
        for url, status in recorder.history_requests("MSFT", "5m")
    ]
    snapshot = inspect(page)
    state, updates_before = snapshot["panels"][0], snapshot["updates"]
    assert state["historyCandles"] >= 20, state
    assert_chart_consistent(state, 300)
    assert first.locator(".panel-symbol").inner_text() == "MSFT"
    assert re.search(r"\d+ candles", first.locator(".panel-info").inner_text())

    # Live: the newest candle changes in place as updates arrive over the WebSocket.
    wait_for(page, CHANGED, [0, state])
    wait_for(page, IN_PLACE, [0])
    assert inspect(page)["updates"] > updates_before
    assert_chart_consistent(panel(page, 0), 300)
    subscribes = [m for n, m in recorder.sent if m.get("action") == "subscribe"]
    assert {"action": "subscribe", "symbols": ["MSFT"], "intervals": ["5m"], "snapshot": 50} in (
        subscribes
    )
    assert len(recorder.sockets) == 1, "every chart shares one WebSocket"
    status = page.locator("#status")
    assert status.get_attribute("data-state") == "live"
    wait_for(page, "() => /^\\d+\\.\\d s$/.test(document.querySelector('#lag').textContent)")
    assert re.fullmatch(r"\d\d:\d\d:\d\d \(\d+ s ago\)", page.inner_text("#last-update"))

    # The server restarts (same port, same database): the page reconnects, resubscribes every
    # chart with a fresh snapshot, and keeps updating.
    recorder.phase = "restart"
    # uvicorn shuts down cleanly, then ends with the signal it caught.
    assert server.stop() in (0, -signal.SIGTERM), server.log()
    assert server.log().count("Application shutdown complete") == 1, server.log()
    wait_for(page, "(s) => s.state === 'reconnecting'")
    server.start()
    wait_for(page, "(s) => s.state === 'live' && s.reconnects === 1", timeout_s=30)
    recorder.phase = "after restart"
    assert len(recorder.sockets) >= 2
    second = len(recorder.sockets) - 1
    resubscribed = [m for n, m in recorder.sent if n == second and m.get("action") == "subscribe"]
    assert len(resubscribed) == 1, resubscribed  # one message for the symbol's charts
    assert resubscribed[0]["symbols"] == ["MSFT"] and resubscribed[0]["snapshot"] == 500
    assert sorted(resubscribed[0]["intervals"]) == ["15m", "1h", "5m"]
    wait_for(page, "(s) => s.panels.every((p) => p.loaded)")

    def snapshots() -> set[str]:
        return {p for n, kind, p, _ in recorder.received if (n, kind) == (second, "snapshot")}

    wait_until(page, lambda: snapshots() == {"MSFT 5m", "MSFT 15m", "MSFT 1h"}, snapshots)
    assert page.inner_text("#reconnects") == "1"

    # Switching the interval reloads the chart: new history over REST, the feed switches pairs.
    requests_before = len(recorder.history_requests("MSFT", "30m"))
    first.locator("select.panel-interval").select_option("30m")
    wait_for(page, "(s) => s.panels[0].interval === '30m' && s.panels[0].loaded")
    assert len(recorder.history_requests("MSFT", "30m")) == requests_before + 1
    assert_chart_consistent(panel(page, 0), 1800)
    sent = [m for n, m in recorder.sent if n == second]
    assert {"action": "unsubscribe", "symbols": ["MSFT"], "intervals": ["5m"]} in sent
    assert {"action": "subscribe", "symbols": ["MSFT"], "intervals": ["30m"], "snapshot": 50} in (
        sent
    )
    assert "intervals=30m%2C15m%2C1h" in page.url

    # Another chart (1m, the first interval not shown); dragging it right loads older history
    # page by page with the REST cursor.
    page.click("#add-chart")
    wait_for(page, "(s) => s.panels.length === 4 && s.panels[3].loaded")
    assert panel(page, 3)["interval"] == "1m"
    assert len(recorder.sockets) == second + 1, "the new chart uses the same WebSocket"
    # The first pages fill the view; then the chart waits at its left edge for the user.
    wait_for(page, "(s) => !s.panels[3].loadingOlder && s.panels[3].visibleFrom >= 10")
    assert panel(page, 3)["moreHistory"], "the test needs older history to scroll to"
    loaded_before = panel(page, 3)["historyCandles"]
    cursors_before = [u for u, _ in recorder.history_requests("MSFT", "1m") if "cursor=" in u]
    box = page.locator(".panel").nth(3).locator(".chart").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 60, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 100, y, steps=12)
    page.mouse.up()
    page.mouse.move(0, 0)  # the legend shows the hovered candle; away, the newest one
    wait_for(page, "(s, before) => s.panels[3].historyCandles > before", loaded_before)
    cursors = [u for u, _ in recorder.history_requests("MSFT", "1m") if "cursor=" in u]
    assert len(cursors) > len(cursors_before)
    assert all(status == 200 for _, status in recorder.history_requests("MSFT", "1m"))

    # Still live after the restart: every chart's newest candle keeps changing.
    for index in range(4):
        wait_for(page, CHANGED, [index, panel(page, index)], timeout_s=30)
        assert_chart_consistent(panel(page, index), [1800, 900, 3600, 60][index])

    # The picture: every chart at its newest candle, while updates stream in.
    page.evaluate("window.speedlayer.panels.forEach((p) => p.chart.timeScale().scrollToRealTime())")
    wait_for(page, "(s, before) => s.updates >= before + 20", inspect(page)["updates"])
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot))
    if os.environ.get("SPEEDLAYER_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOC_SCREENSHOT)

    # No console error and no page error, except the failed connections while the server was
    # down: the WebSocket reconnects and the page's check of the key over REST.
    assert recorder.page_errors == []
    ws_failed = re.compile(
        rf"WebSocket connection to 'ws://127\.0\.0\.1:{server.port}/ws' failed: .*"
    )
    refused = re.compile(
        rf"Failed to load resource: net::ERR_CONNECTION_REFUSED "
        rf"@ {re.escape(server.url)}/(intervals|metrics)"
    )
    unexpected = [
        (phase, kind, text)
        for phase, kind, text in recorder.errors()
        if not (phase == "restart" and (ws_failed.match(text) or refused.match(text)))
    ]
    # (Whether the browser logs a failed connection depends on when its reconnect attempt falls;
    # the restart itself was seen above: the page went 'reconnecting', then live with 1 reconnect.)
    assert unexpected == [], unexpected
    assert "Traceback" not in server.log()


# -- API keys ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dashboard_asks_for_the_api_key_once_and_keeps_it(
    tmp_path: Path, browser: BrowserContext
) -> None:
    server = UpServer(tmp_path, {"SPEEDLAYER_API_KEYS": f"{API_KEY},another-key"})
    server.start()
    try:
        server.wait_for_history("AAPL", "1m", 30, headers={"X-API-Key": API_KEY})
        page = browser.new_page()
        recorder = Recorder()
        recorder.attach(page)
        page.goto(server.url)  # the page itself is public; its data is not
        page.wait_for_selector("#key-form", state="visible")
        assert page.locator("#status").get_attribute("data-state") == "unauthorized"
        assert recorder.sockets == [], "no WebSocket without a key"

        recorder.phase = "wrong key"
        page.fill("#api-key", "not-the-key")
        page.press("#api-key", "Enter")  # saves and reloads
        page.wait_for_selector("#key-form", state="visible")
        assert "not accepted" in page.inner_text("#key-message")

        recorder.phase = "key"
        page.fill("#api-key", API_KEY)
        page.press("#api-key", "Enter")
        wait_for(page, "(s) => s.state === 'live' && s.panels.every((p) => p.loaded)")
        wait_for(page, "(s) => s.updates > 0")
        state = inspect(page)
        assert state["symbol"] == "AAPL" and state["panels"][0]["historyCandles"] >= 30
        assert page.locator("#key-form").is_hidden()
        assert recorder.sockets[-1] == f"ws://127.0.0.1:{server.port}/ws?api_key={API_KEY}"

        recorder.phase = "reloaded"
        page.reload()  # the key was kept: no prompt, live at once
        wait_for(page, "(s) => s.state === 'live' && s.updates > 0")
        assert page.locator("#key-form").is_hidden()
        assert page.evaluate("localStorage.getItem('speedlayer.apiKey')") == API_KEY

        # The only errors: the refused requests before a valid key was entered.
        assert recorder.page_errors == []
        expected = {
            ("start", "401 (Unauthorized)"),
            ("wrong key", "403 (Forbidden)"),
        }
        seen = set()
        for phase, kind, text in recorder.errors():
            match = re.fullmatch(
                r"Failed to load resource: the server responded with a status of "
                rf"(\d{{3}} \(\w+\)) @ {re.escape(server.url)}/(intervals|symbols)",
                text,
            )
            assert match is not None and (phase, match[1]) in expected, (phase, kind, text)
            seen.add((phase, match[1]))
        assert seen == expected
        assert API_KEY not in server.log(), "the key must never be logged"
    finally:
        server.stop()


# -- the static files without a browser -------------------------------------------------------


def test_dashboard_files_are_public_and_not_in_the_schema(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "api.db", api_keys=[API_KEY])
    with ThreadServer(settings) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script type="module" src="/dashboard/dashboard.js">' in page.text
        for path, media_type in [
            ("/dashboard/dashboard.js", "text/javascript; charset=utf-8"),
            ("/dashboard/dashboard.css", "text/css; charset=utf-8"),
            ("/dashboard/lightweight-charts.mjs", "text/javascript; charset=utf-8"),
        ]:
            response = http.get(path)
            assert (response.status_code, response.headers["content-type"]) == (200, media_type)
            assert response.headers["cache-control"] == "no-cache"
            assert http.head(path).status_code == 200
        assert "TradingView Lightweight Charts" in http.get(dashboard.CHART_LIBRARY_URL).text
        # Only these files are public: the data and any other path still need the key.
        assert http.get("/dashboard/nope.js").status_code == 401
        assert http.get("/symbols").status_code == 401
        schema = http.get("/openapi.json", headers={"X-API-Key": API_KEY}).json()
        assert not {"/", "/dashboard/{name}"} & set(schema["paths"])


def test_dashboard_says_how_to_install_a_missing_chart_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = dashboard.FILES[dashboard.CHART_LIBRARY_URL]
    monkeypatch.setitem(
        dashboard.FILES,
        dashboard.CHART_LIBRARY_URL,
        library._replace(path=tmp_path / "node_modules" / "missing.mjs"),
    )
    with ThreadServer(Settings(db=tmp_path / "api.db")) as server:
        response = httpx.get(server.url + dashboard.CHART_LIBRARY_URL, timeout=10)
        assert response.status_code == 503
        assert response.json()["error"] == "chart_library_missing"
        assert "make setup" in response.json()["message"]
        assert httpx.get(server.url + "/", timeout=10).status_code == 200
