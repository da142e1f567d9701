"""Polygon's REST aggregates endpoint: the client, and the gap backfill the WebSocket feed runs.

``AggsClient`` fetches the 1-minute bars of one ticker for a time range:
``GET {rest_url}/v2/aggs/ticker/{ticker}/range/1/minute/{from_ms}/{to_ms}?adjusted=true&sort=asc
&limit=50000`` with ``Authorization: Bearer <key>`` (never ``apiKey=``, so no URL ever carries the
key), following ``next_url`` by re-issuing its path and query against ``rest_url`` (as the official
client does; ``next_url`` may name another host). Errors:

* 429 and 5xx (and transport errors: refused, reset, timeouts) are retried a bounded number of
  times with exponential backoff and full jitter (``speedlayer.retry.Backoff``), or after
  ``Retry-After`` when the server sends it;
* 401/403 raise ``RestAuthError`` (a bad key or a plan without that data);
* other 4xx raise ``RestError`` carrying the response body.

``Backfiller`` is the scheduler used by the WebSocket feed: ``request(symbol, from_ms)`` is cheap
and synchronous (pending requests for one symbol merge into the earliest start), a fixed number of
worker tasks fetch up to "now", parse each result with ``protocol.from_rest_result`` and
publish the bars through a callback (the feed's, which retries a failing bus). A failed fetch is
logged and counted, never raised: backfill must not stop the live feed. A publish that failed for
good (``ServiceFailed``: the feed has failed) ends that fetch, counted as ``publish``.

WebSocket and REST tickers differ for crypto and forex (``protocol.rest_ticker``); published bars
keep the WebSocket form as their symbol, so live and backfilled bars of one instrument share a key.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import orjson

from ingest.polygon.protocol import from_rest_result, redact, rest_ticker
from speedlayer.clock import Clock
from speedlayer.errors import RestAuthError, RestError, ServiceFailed
from speedlayer.models import MINUTE_MS, Bar
from speedlayer.retry import Backoff

log = logging.getLogger("ingest.backfill")

PAGE_LIMIT = 50_000  # the largest page the aggregates endpoint serves
MAX_ATTEMPTS = 5  # per HTTP request, for 429 / 5xx / transport errors
RETRY_AFTER_MAX_S = 120.0  # a larger Retry-After is capped (and logged)
MAX_PAGES = 10_000  # a guard against a server whose next_url never ends
BODY_SNIPPET = 500  # characters of an error body kept in messages
AUTH_LOG_EVERY_S = 60.0  # 401/403 are logged once per status per minute (with a count)


class BackfillCounters(Protocol):
    """The counters the backfill updates (``ingest.polygon.FeedStats`` has them)."""

    backfill_requests: int
    backfill_bars: int
    backfill_errors: Counter[str]
    backfill_symbols_requested: int
    backfill_symbols_done: int
    backfill_rate_limited: int
    backfill_wait_s: float
    rejected: Counter[str]


class AggsClient:
    """Minute aggregates of one ticker over REST, with retries and pagination."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        rest_url: str,
        api_key: str,
        clock: Clock,
        stats: BackfillCounters,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_attempts: int = MAX_ATTEMPTS,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._base = rest_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._key = api_key
        self._clock = clock
        self._stats = stats
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._max_attempts = max_attempts
        self._rng = rng or random.Random()

    def __repr__(self) -> str:  # the headers hold the key; never show them
        return f"AggsClient(rest_url={self._base!r})"

    async def pages(self, ticker: str, from_ms: int, to_ms: int) -> AsyncIterator[list[Any]]:
        """Yield the ``results`` list of every page (``[]`` for a page without results)."""
        target = (
            f"/v2/aggs/ticker/{quote(ticker, safe=':.')}/range/1/minute/{from_ms}/{to_ms}"
            f"?adjusted=true&sort=asc&limit={PAGE_LIMIT}"
        )
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            seen.add(target)
            document = await self._get(target)
            results = document.get("results")
            yield results if isinstance(results, list) else []
            next_url = document.get("next_url")
            if not next_url or not isinstance(next_url, str):
                return
            target = _path_and_query(next_url)
            if target in seen:
                log.warning("REST pagination for %s repeats %s; stopping", ticker, target)
                return
        log.warning("REST pagination for %s exceeded %d pages; stopping", ticker, MAX_PAGES)

    async def _get(self, target: str) -> dict[str, Any]:
        url = self._base + target
        backoff = Backoff(
            initial_s=self._backoff_initial_s,
            cap_s=self._backoff_max_s,
            attempts=self._max_attempts,
            rng=self._rng,
        )
        while True:
            self._stats.backfill_requests += 1
            log.debug("GET %s", target)
            try:
                response = await self._http.get(url, headers=self._headers)
            except httpx.TransportError as exc:  # refused, reset, timeouts, protocol errors
                reason = f"{type(exc).__name__}: {redact(str(exc), self._key)}"
                delay = self._retry_delay(backoff, None, target, reason)
                if delay is None:
                    raise RestError(f"GET {target} failed: {reason}") from exc
                self._stats.backfill_wait_s += delay
                await asyncio.sleep(delay)
                continue
            except httpx.HTTPError as exc:  # decoding errors, redirects: not worth a retry
                raise RestError(f"GET {target} failed: {type(exc).__name__}: {exc}") from exc
            status = response.status_code
            if status == 200:
                try:
                    document = orjson.loads(response.content)
                except orjson.JSONDecodeError as exc:
                    raise RestError(
                        f"GET {target}: response is not JSON", status, self._snippet(response)
                    ) from exc
                if not isinstance(document, dict):
                    raise RestError(f"GET {target}: response is not a JSON object", status)
                return document
            body = self._snippet(response)
            if status in (401, 403):
                raise RestAuthError(
                    f"GET {target} refused with {status}: {body or response.reason_phrase} "
                    "(check the API key and that the plan includes this data)",
                    status,
                    body,
                )
            if status == 429 or status >= 500:
                retry_after = _retry_after_s(response.headers.get("retry-after"), self._clock)
                delay = self._retry_delay(backoff, retry_after, target, f"{status} {body}")
                if delay is None:
                    raise RestError(
                        f"GET {target} still failing with {status} after "
                        f"{self._max_attempts} attempts: {body}",
                        status,
                        body,
                    )
                self._stats.backfill_rate_limited += status == 429
                self._stats.backfill_wait_s += delay
                await asyncio.sleep(delay)
                continue
            raise RestError(f"GET {target} failed with {status}: {body}", status, body)

    def _retry_delay(
        self, backoff: Backoff, retry_after: float | None, target: str, reason: str
    ) -> float | None:
        """Count a failure; the seconds to wait before the next attempt (the server's
        ``Retry-After`` when it sent one, else the backoff's), or None once attempts are used up."""
        delay = backoff.next_delay()
        if delay is None:
            return None
        if retry_after is not None:
            delay = min(retry_after, RETRY_AFTER_MAX_S)
        log.warning(
            "GET %s: %s; retry %d/%d in %.2fs%s",
            target,
            reason,
            backoff.failures,
            self._max_attempts - 1,
            delay,
            " (Retry-After)" if retry_after is not None else "",
        )
        return delay

    def _snippet(self, response: httpx.Response) -> str:
        text = response.content[:BODY_SNIPPET].decode("utf-8", "replace")
        return redact(text, self._key).strip()


def _path_and_query(url: str) -> str:
    """Path and query of ``next_url``, without any ``apiKey`` parameter (the header carries it)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "apiKey"]
    path = parts.path or "/"
    return f"{path}?{urlencode(query)}" if query else path


def _retry_after_s(value: str | None, clock: Clock) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - clock.now_ms() / 1000)


PublishBars = Callable[[list[Bar]], Awaitable[None]]


class LiveRegister:
    """When each recent minute of each symbol last arrived live, as a sequence number.

    A REST answer can be older than a live correction that arrived while the request was in
    flight (last write wins downstream), so the backfill drops REST bars whose minute arrived live
    after the request was issued. Only the last ``horizon_ms`` of minutes are remembered.
    """

    def __init__(self, horizon_ms: int = 30 * MINUTE_MS) -> None:
        self.horizon_ms = horizon_ms
        self.superseded = 0
        self._seq = 0
        self._by_minute: dict[int, dict[str, int]] = {}
        self._newest_ms = 0

    def mark(self) -> int:
        return self._seq

    def record(self, bars: list[Bar]) -> None:
        by_minute = self._by_minute
        newest = self._newest_ms
        for bar in bars:
            self._seq += 1
            minute = by_minute.get(bar.t)
            if minute is None:
                minute = by_minute[bar.t] = {}
                if bar.t > newest:
                    newest = bar.t
            minute[bar.symbol] = self._seq
        if newest > self._newest_ms:
            self._newest_ms = newest
            horizon = newest - self.horizon_ms
            for t in [t for t in by_minute if t < horizon]:
                del by_minute[t]

    def drop_superseded(self, bars: list[Bar], issued: int) -> list[Bar]:
        by_minute = self._by_minute
        kept = [b for b in bars if by_minute.get(b.t, {}).get(b.symbol, 0) <= issued]
        self.superseded += len(bars) - len(kept)
        return kept


class Backfiller:
    """Background REST backfill: merged per-symbol requests, bounded concurrency.

    ``request`` never blocks; ``start`` spawns ``concurrency`` workers; ``join`` waits until no
    fetch is pending or running; ``stop`` cancels the workers.
    """

    def __init__(
        self,
        client: AggsClient,
        market: str,
        clock: Clock,
        stats: BackfillCounters,
        publish: PublishBars,
        *,
        concurrency: int = 8,
        batch_max: int = 5000,
        live: LiveRegister | None = None,
    ) -> None:
        self._live = live
        self._client = client
        self._market = market
        self._clock = clock
        self._stats = stats
        self._publish = publish
        self._concurrency = concurrency
        self._batch_max = batch_max
        self._pending: dict[str, int] = {}  # symbol -> earliest from_ms asked for
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._auth_log_at: dict[int, float] = {}
        self._auth_suppressed: Counter[int] = Counter()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def request(self, symbol: str, from_ms: int) -> None:
        """Ask for ``symbol``'s bars from ``from_ms`` to "now" (evaluated when the fetch starts)."""
        from_ms -= from_ms % MINUTE_MS
        previous = self._pending.get(symbol)
        if previous is None:
            self._pending[symbol] = from_ms
            self._queue.put_nowait(symbol)
            self._stats.backfill_symbols_requested += 1
        elif from_ms < previous:
            self._pending[symbol] = from_ms

    async def start(self) -> None:
        for index in range(self._concurrency):
            self._workers.append(
                asyncio.create_task(self._worker(), name=f"polygon-backfill-{index}")
            )

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def join(self) -> None:
        await self._queue.join()

    async def _worker(self) -> None:
        while True:
            symbol = await self._queue.get()
            try:
                from_ms = self._pending.pop(symbol, None)
                if from_ms is not None:
                    await self.backfill(symbol, from_ms, self._clock.now_ms())
            except Exception:  # a bug must not kill the worker (and silently halve concurrency)
                log.exception("backfill of %s failed unexpectedly", symbol)
            finally:
                self._stats.backfill_symbols_done += 1
                self._queue.task_done()

    async def backfill(self, symbol: str, from_ms: int, to_ms: int) -> int:
        """Fetch and publish ``symbol``'s bars in [from_ms, to_ms]; the number published.

        Errors are logged and counted in ``backfill_errors``, never raised.
        """
        ticker = rest_ticker(self._market, symbol)
        where = f"rest:{ticker}"
        published = 0
        log.debug("backfill %s (%s) from %d to %d", symbol, ticker, from_ms, to_ms)
        issued = self._live.mark() if self._live is not None else 0
        try:
            async for results in self._client.pages(ticker, from_ms, to_ms):
                bars: list[Bar] = []
                rejected = self._stats.rejected
                for item in results:
                    if not isinstance(item, dict):
                        rejected["result_not_object"] += 1
                        continue
                    record = from_rest_result(symbol, item, where)
                    if isinstance(record, Bar):
                        bars.append(record)
                    else:
                        rejected[record.reason] += 1
                if self._live is not None:
                    bars = self._live.drop_superseded(bars, issued)
                for start in range(0, len(bars), self._batch_max):
                    chunk = bars[start : start + self._batch_max]
                    await self._publish(chunk)
                    self._stats.backfill_bars += len(chunk)
                    published += len(chunk)
        except RestAuthError as exc:
            self._stats.backfill_errors[f"http_{exc.status}"] += 1
            self._log_auth_error(symbol, exc)
        except RestError as exc:
            key = f"http_{exc.status}" if exc.status is not None else "transport"
            self._stats.backfill_errors[key] += 1
            log.warning("backfill of %s skipped: %s", symbol, exc)
        except ServiceFailed as exc:  # the publish failed for good: the feed has failed
            self._stats.backfill_errors["publish"] += 1
            log.warning("backfill of %s stopped: %s", symbol, exc)
        return published

    def _log_auth_error(self, symbol: str, exc: RestAuthError) -> None:
        """401/403 repeat for every symbol; log the first, then at most once a minute per status."""
        status = exc.status or 0
        now = asyncio.get_running_loop().time()
        last = self._auth_log_at.get(status)
        if last is not None and now - last < AUTH_LOG_EVERY_S:
            self._auth_suppressed[status] += 1
            return
        self._auth_log_at[status] = now
        suppressed = self._auth_suppressed.pop(status, 0)
        log.error(
            "backfill of %s refused: Polygon REST answered %d%s; %s",
            symbol,
            status,
            " (unauthorized: unknown or missing API key)"
            if status == 401
            else " (forbidden: the plan does not include this data)",
            f"{exc} [+{suppressed} similar refusals not logged]" if suppressed else str(exc),
        )
