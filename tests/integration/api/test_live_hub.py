"""The live hub's supervision of its bus subscription, and readiness from health checks.

The hub runs on the in-process bus (``FlakyBus``: a MemoryBus that can refuse new
subscriptions, like a broker that is away). A consumer failure is simulated the way the Kafka
and Kinesis buses report one: the hub's subscription is closed with an ``error``. End-to-end tests
serve the app with a real uvicorn server and use real WebSocket and SSE clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.live.client import LIVE_FEED_INTERRUPTED, SHUTTING_DOWN
from api.live.hub import CandleHub
from api.live.messages import CandleEvent
from speedlayer.bus.base import Subscription, candle_topic
from speedlayer.bus.memory import MemoryBus
from speedlayer.clock import SystemClock
from speedlayer.config import Settings
from speedlayer.errors import BusError
from speedlayer.models import Candle
from speedlayer.store.sqlite import SQLiteStore
from tests.integration.api.test_live_api import SseEvent, WsClient, sse_events, sub
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

T0 = 1_704_205_800_000  # a 1m bucket start
MINUTE_MS = 60_000
FAR_TTL = 4_000_000_000  # epoch seconds: never expires in these tests


class FlakyBus(MemoryBus):
    """A MemoryBus whose new subscriptions fail while ``refuse`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False
        self.refused = 0

    def _open(self, subscription: Subscription, consumer: str | None) -> None:
        if self.refuse:
            self.refused += 1
            raise BusError("broker away")
        super()._open(subscription, consumer)


def candle(symbol: str, ts: int, revision: int = 1, close: float = 10.0) -> Candle:
    return Candle(symbol, "1m", ts, 10.0, 11.0, 9.0, close, 100.0, None, None, 5, False,
                  revision, FAR_TTL)  # fmt: skip


def hub_subscription(hub: CandleHub) -> Subscription:
    subscription = hub._subscription
    assert subscription is not None and subscription.closed_reason is None
    return subscription


def fail(hub: CandleHub) -> Subscription:
    """Close the hub's subscription the way a dying Kafka/Kinesis consumer does."""
    subscription = hub_subscription(hub)
    subscription.close("consumer failed", RuntimeError("boom"))
    return subscription


def events_of(items: list[Any]) -> list[CandleEvent]:
    return [item for item in items if isinstance(item, CandleEvent)]


# -- the hub on its own ---------------------------------------------------------------------------


async def test_hub_interrupts_its_clients_and_resubscribes_after_a_consumer_failure(
    tmp_path: Path,
) -> None:
    settings = Settings(db=tmp_path / "hub.db")
    bus = FlakyBus()
    hub = CandleHub(settings, SQLiteStore(settings.db, settings.interval_set, SystemClock()), bus)
    await hub.start()
    try:
        assert hub.problem() is None
        ws = hub.connect("ws")
        sse = hub.connect("sse")
        assert ws is not None and sse is not None
        hub.subscribe(ws, [("AAPL", "1m")], [], mode="live")
        hub.subscribe(sse, [("AAPL", "1m")], ["1m"], mode="pending")
        await bus.publish(candle_topic("1m"), [candle("AAPL", T0)])
        received = events_of(await ws.take())
        assert [e.candle.revision for e in received] == [1]
        last_seq = received[0].seq

        bus.refuse = True
        failed = fail(hub)
        await until(lambda: hub.interruptions == 1, 5, "the hub to notice the failure")
        for client in (ws, sse):
            assert client.closed_reason == LIVE_FEED_INTERRUPTED
            assert await client.take() == []
            assert not client.pairs and not client.wildcards
            hub.disconnect(client)
        assert hub.wildcards == 0 and hub.clients == 0
        await until(lambda: bus.refused >= 1, 5, "a resubscribe attempt")
        problem = hub.problem()
        assert problem is not None and problem.startswith("live feed: candle bus subscription")
        assert "consumer failed: boom" in problem and "resubscribing" in problem
        assert "broker away" in problem
        # Updates published now are lost for the hub: no earlier event id may be resumed.
        await bus.publish(candle_topic("1m"), [candle("AAPL", T0, revision=2)])
        waiting = hub.connect("sse")
        assert waiting is not None
        assert hub.resume(waiting, [("AAPL", "1m")], [], last_seq) is None
        hub.subscribe(waiting, [("AAPL", "1m")], [], mode="live")

        bus.refuse = False
        await until(lambda: hub.problem() is None, 10, "the hub to resubscribe")
        assert hub_subscription(hub) is not failed
        # A client that subscribed during the outage may have missed updates: closed as well.
        assert waiting.closed_reason == LIVE_FEED_INTERRUPTED and hub.interruptions == 2
        hub.disconnect(waiting)

        fresh = hub.connect("ws")
        assert fresh is not None
        hub.subscribe(fresh, [("AAPL", "1m")], [], mode="live")
        await bus.publish(candle_topic("1m"), [candle("AAPL", T0, revision=3)])
        received = events_of(await asyncio.wait_for(fresh.take(), 5))
        assert [e.candle.revision for e in received] == [3]
        assert received[0].seq > last_seq + 1  # the ids skipped at the interruptions
        assert hub.resume(fresh, [("AAPL", "1m")], [], last_seq) is None
    finally:
        await hub.stop()
    # Stopping closes the subscription, which is no failure: nothing is reported or retried.
    assert hub.problem() is None
    assert hub_subscription_reason(hub) == "hub stopped"
    assert fresh.closed_reason == SHUTTING_DOWN
    assert not any(bus._subscriptions.values())


def hub_subscription_reason(hub: CandleHub) -> str | None:
    assert hub._subscription is not None
    return hub._subscription.closed_reason


async def test_hub_reports_a_subscription_the_bus_closed_under_it(tmp_path: Path) -> None:
    """The bus stopping under a running hub is no consumer failure, but the feed is over."""
    settings = Settings(db=tmp_path / "hub.db")
    bus = FlakyBus()
    hub = CandleHub(settings, SQLiteStore(settings.db, settings.interval_set, SystemClock()), bus)
    await hub.start()
    try:
        await bus.stop()
        await until(lambda: hub.problem() is not None, 5, "the hub to notice")
        assert hub.problem() == "live feed: candle bus subscription closed (bus stopped)"
        assert hub.interruptions == 0
    finally:
        await hub.stop()


# -- through a real server ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not task.done(), "uvicorn exited"
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        listener.close()


def metric(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


async def read_stream(http: httpx.AsyncClient, url: str, into: list[SseEvent]) -> None:
    """Read an SSE stream to its end, appending every event."""
    async with http.stream("GET", url) as response:
        assert response.status_code == 200
        async for event in sse_events(response):
            into.append(event)


async def test_live_clients_are_interrupted_and_the_feed_recovers(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "api.db")
    clock = SystemClock()
    async with (
        FlakyBus() as bus,
        SQLiteStore(settings.db, settings.interval_set, clock) as store,
    ):
        await store.upsert([candle("AAPL", T0 + i * MINUTE_MS, close=10.0 + i) for i in range(3)])
        app = create_app(settings, store=store, clock=clock, bus=bus)
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            hub: CandleHub = app.state.resources.hub
            ws_url = url.replace("http", "ws", 1) + "/ws"
            assert (await http.get("/readyz")).json() == {"status": "ready"}
            assert metric((await http.get("/metrics")).text, "speedlayer_ready") == 1

            ws = await WsClient.open(ws_url)
            await ws.reply(sub(["AAPL"], ["1m"], snapshot=2), "snapshot")
            stream: list[SseEvent] = []
            reader = asyncio.create_task(
                read_stream(http, "/stream/candles?symbols=AAPL&intervals=1m&snapshot=1", stream)
            )
            await until(lambda: any(e.event == "snapshot" for e in stream), 5, "the SSE snapshot")
            update = candle("AAPL", T0 + 3 * MINUTE_MS)
            await bus.publish(candle_topic("1m"), [update])
            before = await ws.wait_for(lambda ms: next(iter(ws.of_type("candle")), None))
            await until(lambda: any(e.event == "candle" for e in stream), 5, "the SSE update")

            bus.refuse = True
            fail(hub)
            # Both clients are told why and closed; they must reconnect for a fresh snapshot.
            await asyncio.wait_for(ws.task, 5)
            assert ws.ws.close_code == 1011 and ws.ws.close_reason == LIVE_FEED_INTERRUPTED
            assert ws.messages[-1] == {"type": "error", "message": LIVE_FEED_INTERRUPTED}
            await asyncio.wait_for(reader, 5)
            assert stream[-1].event == "error"
            assert stream[-1].json == {"type": "error", "message": LIVE_FEED_INTERRUPTED}

            await until(lambda: bus.refused >= 1, 5, "a resubscribe attempt")
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            body = answer.json()
            assert body["error"] == "not_ready"
            failure = "live feed: candle bus subscription failed: consumer failed: boom"
            assert failure in body["message"]
            assert "store" not in body["message"] and "bus:" not in body["message"]
            assert metric((await http.get("/metrics")).text, "speedlayer_ready") == 0

            bus.refuse = False
            await until(lambda: hub.problem() is None, 10, "the hub to resubscribe")
            assert (await http.get("/readyz")).json() == {"status": "ready"}
            assert metric((await http.get("/metrics")).text, "speedlayer_ready") == 1

            again = await WsClient.open(ws_url)
            try:
                snapshot = await again.reply(sub(["AAPL"], ["1m"], snapshot=5), "snapshot")
                # what the store holds (no pipeline here: bus updates are not stored)
                assert [c["timestamp"] for c in snapshot["candles"]] == [
                    T0 + i * MINUTE_MS for i in range(3)
                ]
                resumed: list[SseEvent] = []
                reader = asyncio.create_task(
                    read_stream(
                        http, "/stream/candles?symbols=AAPL&intervals=1m&snapshot=0", resumed
                    )
                )
                await until(lambda: hub.clients == 2, 5, "the new SSE stream")
                newer = candle("AAPL", T0 + 4 * MINUTE_MS, close=12.5)
                await bus.publish(candle_topic("1m"), [newer])
                after = await again.wait_for(lambda ms: next(iter(again.of_type("candle")), None))
                assert after["timestamp"] == newer.timestamp and after["close"] == 12.5
                assert after["seq"] > before["seq"]
                await until(lambda: any(e.event == "candle" for e in resumed), 5, "SSE update")
                assert [e.json["timestamp"] for e in resumed if e.event == "candle"] == [
                    newer.timestamp
                ]
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            finally:
                await again.close()


# -- readiness from health checks -----------------------------------------------------------------


class Check:
    """A health check whose answer the test sets."""

    def __init__(self, problem: str | None = None) -> None:
        self.answer = problem

    def problem(self) -> str | None:
        return self.answer


class Pipeline(Check):
    """A PipelineView: counters for /metrics and a problem for /readyz."""

    bars_in = 7
    candles_out = 21

    def lag_ms(self) -> int | None:
        return 1500


async def test_readyz_lists_every_problem_the_health_checks_report(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "ready.db")
    clock = SystemClock()
    feed = Check("feed: the Polygon WebSocket refused the API key")
    other = Check()
    pipeline = Pipeline("pipeline stopped: disk full")
    async with SQLiteStore(settings.db, settings.interval_set, clock) as store:
        app = create_app(settings, store=store, clock=clock, pipeline=pipeline,
                         health=[feed, other])  # fmt: skip
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json() == {
                "error": "not_ready",
                "message": "pipeline stopped: disk full; "
                "feed: the Polygon WebSocket refused the API key",
            }
            text = (await http.get("/metrics")).text
            assert metric(text, "speedlayer_ready") == 0
            assert metric(text, "speedlayer_pipeline_bars_in_total") == 7
            assert metric(text, "speedlayer_pipeline_candles_out_total") == 21
            assert metric(text, "speedlayer_feed_lag_seconds") == 1.5

            pipeline.answer = None
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["message"] == "feed: the Polygon WebSocket refused the API key"

            feed.answer = None
            assert (await http.get("/readyz")).json() == {"status": "ready"}
            assert metric((await http.get("/metrics")).text, "speedlayer_ready") == 1

            other.answer = "something else broke"
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["message"] == "something else broke"
