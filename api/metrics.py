"""Prometheus metrics: one registry per app (tests build several apps in one process).

- ``speedlayer_http_requests_total{method,route,status}`` and
  ``speedlayer_http_request_duration_seconds{route}`` come from a small pure ASGI middleware;
  ``route`` is the matched route's path template (``/candles/{symbol}``), never the raw path, so
  the label set stays bounded (``unmatched`` for paths no route knows). Event streams are counted
  but not timed (their duration is the subscription's lifetime, not a latency).
- Live-feed and pipeline numbers are read at scrape time from the app's resources by a custom
  collector (no duplicated counters): subscribers, slow consumers dropped, messages delivered and
  events from the live hub (0 without one); bars in, candles out and feed lag from the in-process
  pipeline (absent without one); ``speedlayer_ready``, 1 while no health check (the live hub,
  the pipeline, the feed) reports a problem, else 0 (/readyz also probes the store and bus);
  the page cache's hits, misses and bytes held (api/page_cache.py).
- ``speedlayer_store_errors_total`` counts store failures seen while serving requests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from api.deps import Resources

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "QUERY"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _number(obj: object, name: str) -> float:
    """``obj.name`` as a number: an attribute, a zero-argument method, or a collection's size."""
    value: Any = getattr(obj, name, 0) if obj is not None else 0
    if callable(value):
        value = value()
    if hasattr(value, "__len__"):
        return float(len(value))
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


class LiveCollector(Collector):
    """Reads the hub's and the pipeline's current values at scrape time."""

    def __init__(self, resources: Callable[[], Resources | None]) -> None:
        self._resources = resources

    def describe(self) -> Iterable[Metric]:
        families: list[Metric] = [GaugeMetricFamily(n, d) for n, d in _LIVE_GAUGES]
        families += [CounterMetricFamily(n, d) for n, d in _LIVE_COUNTERS + _PIPELINE_COUNTERS]
        families.append(GaugeMetricFamily(*_LAG))
        families.append(GaugeMetricFamily(*_READY))
        families += [CounterMetricFamily(*_PAGE_HITS), CounterMetricFamily(*_PAGE_MISSES)]
        families.append(GaugeMetricFamily(*_PAGE_BYTES))
        return families

    def collect(self) -> Iterable[Metric]:
        res = self._resources()
        hub = res.hub if res is not None else None
        families: list[Metric] = [
            GaugeMetricFamily(name, doc, value=_number(hub, attr))
            for (name, doc), attr in zip(_LIVE_GAUGES, ("clients",), strict=True)
        ]
        families += [
            CounterMetricFamily(name, doc, value=_number(hub, attr))
            for (name, doc), attr in zip(
                _LIVE_COUNTERS, ("dropped_slow", "delivered", "events"), strict=True
            )
        ]
        if res is not None:
            ready = not res.health_problems()
            families.append(GaugeMetricFamily(*_READY, value=1.0 if ready else 0.0))
            pages = res.pages
            families += [
                CounterMetricFamily(*_PAGE_HITS, value=pages.hits),
                CounterMetricFamily(*_PAGE_MISSES, value=pages.misses),
                GaugeMetricFamily(*_PAGE_BYTES, value=pages.size),
            ]
        pipeline = res.pipeline if res is not None else None
        if pipeline is not None:
            families += [
                CounterMetricFamily(name, doc, value=_number(pipeline, attr))
                for (name, doc), attr in zip(
                    _PIPELINE_COUNTERS, ("bars_in", "candles_out"), strict=True
                )
            ]
            lag = GaugeMetricFamily(*_LAG)
            lag_ms = pipeline.lag_ms()
            if lag_ms is not None:
                lag.add_metric([], lag_ms / 1000)
            families.append(lag)
        return families


_LIVE_GAUGES = [
    ("speedlayer_live_subscribers", "WebSocket and SSE clients connected to the live hub"),
]
_LIVE_COUNTERS = [
    (
        "speedlayer_live_dropped_slow_consumers",
        "live clients dropped because their queue was full",
    ),
    ("speedlayer_live_messages_delivered", "messages handed to live clients"),
    ("speedlayer_live_events", "candle updates the live hub received from the bus"),
]
_PIPELINE_COUNTERS = [
    ("speedlayer_pipeline_bars_in", "1-minute bars processed by the pipeline"),
    (
        "speedlayer_pipeline_candles_out",
        "candle updates produced by the pipeline (forming, final and corrections)",
    ),
]
_READY = (
    "speedlayer_ready",
    "1 while no health check (live hub, pipeline, feed) reports a problem, else 0",
)
_PAGE_HITS = (
    "speedlayer_page_cache_hits",
    "GET /candles/{symbol} pages served from the page cache (api/page_cache.py)",
)
_PAGE_MISSES = (
    "speedlayer_page_cache_misses",
    "GET /candles/{symbol} pages read from the store while the page cache is on",
)
_PAGE_BYTES = ("speedlayer_page_cache_bytes", "bytes of the pages the page cache holds")
_LAG = (
    "speedlayer_feed_lag_seconds",
    "now minus the end of the newest bar processed (no sample before the first bar)",
)


class Metrics:
    """The app's registry and the metrics the API updates itself."""

    def __init__(self, resources: Callable[[], Resources | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "speedlayer_http_requests",
            "HTTP requests by route template, method and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "speedlayer_http_request_duration_seconds",
            "HTTP request latency by route template (event streams excluded)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "speedlayer_store_errors",
            "store failures while serving requests (including failed readiness probes)",
            registry=self.registry,
        )
        self.registry.register(LiveCollector(resources))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (Prometheus text 0.0.4 unless ``accept`` asks for another format)."""
        try:
            encoder, content_type = choose_encoder(accept or "")
            return encoder(self.registry), content_type
        except ValueError:  # an Accept header with a malformed version
            return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


class RouteTable:
    """Path templates of an app's routes, flattened (included routers, prefixes, mounts) and
    compiled once, so any request maps to a bounded label: its route's template or
    ``unmatched``. Matching by path alone, so requests rejected before routing (401/403, CORS
    preflight, 405) get their route's template too."""

    def __init__(self, routes: Callable[[], Iterable[BaseRoute]]) -> None:
        self._routes = routes
        self._table: list[tuple[re.Pattern[str], str]] | None = None

    def template(self, path: str) -> str:
        if self._table is None:
            self._table = list(_flatten(self._routes(), ""))
        for regex, template in self._table:
            if regex.match(path):
                return template
        return UNMATCHED


def _flatten(routes: Iterable[Any], prefix: str) -> Iterator[tuple[re.Pattern[str], str]]:
    for route in routes:
        original = getattr(route, "original_router", None)  # FastAPI's included routers
        if original is not None:
            context = getattr(route, "include_context", None)
            yield from _flatten(original.routes, prefix + getattr(context, "prefix", ""))
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        if isinstance(route, Mount):
            template = f"{prefix}{path}/{{path}}"
            yield compile_path(f"{prefix}{path}/{{path:path}}")[0], template
        else:  # the template without converters: /candles/{symbol}, not {symbol:path}
            regex, template, _ = compile_path(prefix + path)
            yield regex, template


def _method(scope: Scope) -> str:
    method: str = scope["method"]
    return method if method in METHODS else "other"  # servers may pass any token


class MetricsMiddleware:
    """Pure ASGI: count and time HTTP requests, labelled by route template."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, routes: Callable[[], Iterable[BaseRoute]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.table = RouteTable(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        streaming = False
        route = ""

        async def send_wrapper(message: Message) -> None:
            nonlocal status, streaming, route
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        streaming = True
                route = self.table.template(scope["path"])
                self.metrics.requests.labels(_method(scope), route, str(status)).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if not status:
                route = self.table.template(scope["path"])
                self.metrics.requests.labels(_method(scope), route, "500").inc()
            raise
        finally:
            if route and not streaming:
                self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def install(app: FastAPI) -> Metrics:
    """Create the app's metrics (``app.state.metrics``) and its middleware; add it last so it is
    the outermost user middleware and sees auth and CORS rejections too."""
    metrics = Metrics(lambda: getattr(app.state, "resources", None))
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)
    return metrics


def record_store_error(app: Any) -> None:
    metrics: Metrics | None = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None:
        metrics.store_errors.inc()
