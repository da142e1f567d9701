"""Run a Kinesis Lambda handler locally, fed the way an event source mapping feeds it.

Per shard of the stream: GetRecords (``batch_size`` records at most), build the event exactly as
AWS does (``Records[].kinesis.{kinesisSchemaVersion, partitionKey, sequenceNumber, data (base64),
approximateArrivalTimestamp}``, ``eventSource: aws:kinesis``, ``eventID: shardId:sequence``,
``eventSourceARN``, ...), invoke the handler, then, as with ``FunctionResponseTypes:
ReportBatchItemFailures``:

* an empty ``batchItemFailures`` (or no answer): the batch is done; checkpoint its last record;
* failures reported: checkpoint the record before the lowest reported sequence number and read
  again from that one (``AT_SEQUENCE_NUMBER``) after a backoff; an identifier that is not in the
  batch fails the whole batch, as on AWS;
* the handler raised (a function error): retry the whole batch after a backoff; with
  ``bisect_on_error`` the batch is halved on every consecutive error (BisectBatchOnFunctionError).
  After ``max_retries`` attempts (None: until the records expire, AWS's default) the batch is
  logged and skipped.

Shards are processed concurrently, one batch in flight each; a child shard starts only once its
parents are read to their end, so each key keeps its order across resharding. Checkpoints live in
the Kinesis bus's DynamoDB table (``speedlayer_checkpoints``, or
``SPEEDLAYER_KINESIS_CHECKPOINT_TABLE``), one item per shard under the lease
``lambda:CONSUMER/STREAM``: the consumer is the mapping's identity, by default the whole handler
(``processors.kinesis_to_kafka:handler``), so two handlers on one stream never share checkpoints.
A runner that is killed resumes after the last batch that was done: records of a batch in flight
are delivered again (at least once, as on AWS), never lost. A shard with no checkpoint starts at
``starting_position`` (TRIM_HORIZON or LATEST).

How the handler is called: an entry point with an async twin (:func:`processors.kinesis_events
.attach_async_entry`, as both of speedlayer's handlers have) is invoked through the twin on the
runner's loop, every shard and stream concurrently on the same clients, which :func:`serve`
closes at the end; any other plain ``handler(event, context)`` runs in one worker thread shared
by every stream, one call at a time, like one execution environment; an ``async`` handler runs on
the runner's loop, called with ``(event)`` (``(event, context)`` with ``with_context``, as twins
are).
A function error is retried, except a configuration error (no credentials, a refused permission,
see :func:`speedlayer.aws.configuration_error`): retrying cannot cure it, so the runner stops
with its message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib
import inspect
import logging
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from processors.kinesis_events import async_entry
from speedlayer.aws import (
    AWS_ERRORS,
    call,
    configuration_error,
    error_code,
    is_throttle,
    open_client,
    wait_table_active,
)
from speedlayer.backends import dynamodb_endpoint, kinesis_endpoint
from speedlayer.config import Settings
from speedlayer.errors import ConfigurationError, RunnerError
from speedlayer.kinesis_shards import (
    SHARD_END,
    CheckpointTable,
    Shard,
    follow_shards,
    has_parent,
    list_shards,
    start_position,
)
from speedlayer.retry import Backoff

log = logging.getLogger(__name__)

AsyncHandler = Callable[[dict[str, Any]], Awaitable[Any]]
AsyncContextHandler = Callable[[dict[str, Any], Any], Awaitable[Any]]
SyncHandler = Callable[[dict[str, Any], Any], Any]
StartingPosition = Literal["TRIM_HORIZON", "LATEST"]
ACCOUNT = "000000000000"


@dataclass
class LocalContext:
    """The parts of the Lambda context object that handlers use."""

    function_name: str
    timeout_s: float
    region: str
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    aws_request_id: str = ""
    started: float = 0.0

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_s - time.monotonic()) * 1000))


def build_event(
    records: Sequence[Mapping[str, Any]], *, shard_id: str, stream_arn: str, region: str
) -> dict[str, Any]:
    """A Kinesis event as Lambda delivers it, from GetRecords records (boto3 shapes)."""
    out = []
    for record in records:
        arrival: Any = record.get("ApproximateArrivalTimestamp")
        stamp = arrival.timestamp() if isinstance(arrival, datetime) else float(arrival or 0)
        sequence = str(record["SequenceNumber"])
        out.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": record["PartitionKey"],
                    "sequenceNumber": sequence,
                    "data": base64.b64encode(record["Data"]).decode("ascii"),
                    "approximateArrivalTimestamp": round(stamp, 3),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{sequence}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT}:role/lambda-kinesis-role",
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
        )
    return {"Records": out}


def first_failure(response: Any, sequences: Sequence[str]) -> int | None:
    """Index of the lowest reported failure; 0 (the whole batch) for an answer Lambda rejects."""
    if not isinstance(response, Mapping):
        return None  # no answer, or something else: success, as on AWS
    failures = response.get("batchItemFailures")
    if failures is None:
        return None
    if not isinstance(failures, list):
        return 0
    positions = {seq: i for i, seq in enumerate(sequences)}
    lowest: int | None = None
    for failure in failures:
        ident = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
        if not isinstance(ident, str) or ident not in positions:
            return 0  # null, empty or unknown identifier: the whole batch is retried
        index = positions[ident]
        lowest = index if lowest is None else min(lowest, index)
    return lowest


@dataclass
class RunnerStats:
    invocations: int = 0
    records: int = 0
    batches_done: int = 0
    partial_failures: int = 0
    function_errors: int = 0
    records_retried: int = 0
    records_discarded: int = 0
    checkpoints: int = 0


class LambdaRunner:
    """Feeds ``handler`` from ``stream`` like an event source mapping; ``start``/``stop``.

    ``consumer`` names the checkpoints (lease ``lambda:CONSUMER/STREAM``; default
    ``function_name``); ``with_context``: an async handler takes ``(event, context)``;
    ``executor``: the worker thread of a plain handler, shared with other runners (else one of
    its own); ``create_checkpoint_table`` off: the table must exist (infrastructure code)."""

    def __init__(
        self,
        handler: AsyncHandler | AsyncContextHandler | SyncHandler,
        stream: str,
        *,
        function_name: str = "handler",
        consumer: str | None = None,
        with_context: bool = False,
        executor: ThreadPoolExecutor | None = None,
        create_checkpoint_table: bool = True,
        kinesis_endpoint_url: str | None = None,
        dynamodb_endpoint_url: str | None = None,
        region: str = "us-east-1",
        credentials: tuple[str, str] | None = None,
        checkpoint_table: str = "speedlayer_checkpoints",
        batch_size: int = 100,
        starting_position: StartingPosition = "TRIM_HORIZON",
        max_retries: int | None = None,
        bisect_on_error: bool = False,
        timeout_s: float = 60.0,
        poll_interval_s: float = 0.2,
        shard_refresh_s: float = 10.0,
        retry_initial_s: float = 0.1,
        retry_cap_s: float = 5.0,
        aws_retry_timeout_s: float = 60.0,
    ) -> None:
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size must be within 1..10000")
        self.handler = handler
        self.stream = stream
        self.function_name = function_name
        self.kinesis_endpoint_url = kinesis_endpoint_url
        self.dynamodb_endpoint_url = dynamodb_endpoint_url
        self.region = region
        self.credentials = credentials
        self.checkpoint_table = checkpoint_table
        self.batch_size = batch_size
        self.starting_position = starting_position
        self.max_retries = max_retries
        self.bisect_on_error = bisect_on_error
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.shard_refresh_s = shard_refresh_s
        self.retry_initial_s = retry_initial_s
        self.retry_cap_s = retry_cap_s
        self.aws_retry_timeout_s = aws_retry_timeout_s
        self.create_checkpoint_table = create_checkpoint_table
        self.consumer = consumer or function_name
        self.lease = f"lambda:{self.consumer}/{stream}"
        self.stream_arn = f"arn:aws:kinesis:{region}:{ACCOUNT}:stream/{stream}"
        self.stats = RunnerStats()
        self._is_async = inspect.iscoroutinefunction(handler)
        self._with_context = self._is_async and with_context
        self._shared_executor = executor
        self._executor: ThreadPoolExecutor | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._kinesis: Any = None
        self._checkpoints: CheckpointTable | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: dict[str, bool] = {}
        self._idle_changed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            self._kinesis = await open_client(
                stack, "kinesis", self.region, self.kinesis_endpoint_url, self.credentials, 16
            )
            dynamodb = await open_client(
                stack, "dynamodb", self.region, self.dynamodb_endpoint_url, self.credentials, 16
            )
            self._checkpoints = CheckpointTable(
                dynamodb,
                self.checkpoint_table,
                timeout_s=self.aws_retry_timeout_s,
                error=RunnerError,
            )
            if self.create_checkpoint_table:
                await self._checkpoints.ensure(60)
            else:  # infrastructure code owns it: it must exist
                await wait_table_active(
                    dynamodb,
                    self.checkpoint_table,
                    timeout_s=self.aws_retry_timeout_s,
                    active_timeout_s=60,
                    error=RunnerError,
                )
        except BaseException as exc:
            self._checkpoints = None
            await stack.aclose()
            if isinstance(exc, AWS_ERRORS):
                raise RunnerError(f"cannot start the Lambda runner: {exc}") from exc
            raise
        self._stack = stack
        if not self._is_async:
            self._executor = self._shared_executor or ThreadPoolExecutor(
                1, thread_name_prefix=self.function_name
            )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        executor, self._executor = self._executor, None
        if executor is not None and executor is not self._shared_executor:
            await asyncio.to_thread(executor.shutdown, wait=True)

    async def __aenter__(self) -> LambdaRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait(self) -> None:
        """Until the runner stops by itself (an unrecoverable error is raised here)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    @property
    def idle(self) -> bool:
        """Every known shard has been read up to its current end."""
        return bool(self._idle) and all(self._idle.values())

    async def wait_idle(self) -> None:
        """Until every known shard has been read up to its current end."""
        while not self.idle:
            if self._task is None or self._task.done():
                if self._task is not None:
                    self._task.result()  # the runner failed: raise its error
                raise RunnerError("the runner is not running")
            self._idle_changed.clear()
            waiter = asyncio.ensure_future(self._idle_changed.wait())
            try:
                await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def _set_idle(self, shard_id: str, idle: bool) -> None:
        self._idle[shard_id] = idle
        if idle:
            self._idle_changed.set()

    # -- AWS calls ------------------------------------------------------------------------------

    @property
    def _checkpoint_table(self) -> CheckpointTable:
        if self._checkpoints is None:
            raise RunnerError("the runner is not started")
        return self._checkpoints

    async def checkpoints(self) -> dict[str, str]:
        """Shard id -> the last sequence number done (or SHARD_END)."""
        return await self._checkpoint_table.read(self.lease)

    async def _checkpoint(self, shard_id: str, sequence: str) -> None:
        await self._checkpoint_table.write(self.lease, shard_id, sequence)
        self.stats.checkpoints += 1

    async def _iterator(self, shard_id: str, position: Mapping[str, Any]) -> str:
        """GetShardIterator at ``position`` (``ShardIteratorType``, ``StartingSequenceNumber``)."""
        resp = await call(
            self._kinesis,
            "get_shard_iterator",
            timeout_s=self.aws_retry_timeout_s,
            error=RunnerError,
            StreamName=self.stream,
            ShardId=shard_id,
            **position,
        )
        return str(resp["ShardIterator"])

    # -- the mapping ----------------------------------------------------------------------------

    async def _run(self) -> None:
        checkpoints = await self.checkpoints()

        async def start(shard: Shard, parents: list[str]) -> asyncio.Task[None]:
            sid = shard["ShardId"]
            self._idle[sid] = False
            return asyncio.create_task(self._shard(sid, checkpoints.get(sid), has_parent(shard)))

        await follow_shards(
            lambda: list_shards(
                self._kinesis, self.stream, timeout_s=self.aws_retry_timeout_s, error=RunnerError
            ),
            start,
            checkpoints,
            self.shard_refresh_s,
            on_finished=lambda sid: self._set_idle(sid, True),
        )

    async def _shard(self, shard_id: str, checkpoint: str | None, has_parent: bool) -> None:
        iterator = await self._resume_iterator(shard_id, checkpoint, has_parent)
        limit = self.batch_size
        attempts = 0
        backoff = Backoff(initial_s=self.retry_initial_s, cap_s=self.retry_cap_s)
        next_iterator: str | None = iterator
        while next_iterator is not None:
            try:
                resp = await self._kinesis.get_records(ShardIterator=next_iterator, Limit=limit)
            except AWS_ERRORS as exc:
                if (problem := configuration_error(exc, self._kinesis)) is not None:
                    raise problem from exc
                if error_code(exc) == "ExpiredIteratorException":
                    next_iterator = await self._resume_iterator(shard_id, checkpoint, has_parent)
                    continue
                if is_throttle(exc):
                    await backoff.sleep()
                    continue
                raise RunnerError(f"GetRecords on {self.stream}/{shard_id}: {exc}") from exc
            records = resp.get("Records", [])
            if not records:
                self._set_idle(shard_id, True)
                next_iterator = resp.get("NextShardIterator")
                if next_iterator is None:
                    await self._checkpoint(shard_id, SHARD_END)
                else:
                    await asyncio.sleep(self.poll_interval_s)
                continue
            self._idle[shard_id] = False
            sequences = [str(r["SequenceNumber"]) for r in records]
            failed_at, function_error = await self._invoke(shard_id, records, sequences)
            if failed_at is None:  # the batch is done
                checkpoint = sequences[-1]
                await self._checkpoint(shard_id, checkpoint)
                self.stats.batches_done += 1
                attempts, limit = 0, self.batch_size
                backoff.reset()
                next_iterator = resp.get("NextShardIterator")
                continue
            attempts += 1
            if failed_at > 0:  # keep what was done: resume at the first failed record
                checkpoint = sequences[failed_at - 1]
                await self._checkpoint(shard_id, checkpoint)
                attempts = 1  # progress was made
            elif self.bisect_on_error and function_error:
                limit = max(1, min(limit, len(records)) // 2)
            if self.max_retries is not None and attempts > self.max_retries:
                skipped = sequences[failed_at:]
                self.stats.records_discarded += len(skipped)
                log.error("%s/%s: giving up on %d records %s..%s after %d retries",
                          self.stream, shard_id, len(skipped), skipped[0], skipped[-1],
                          self.max_retries)  # fmt: skip
                checkpoint = sequences[-1]
                await self._checkpoint(shard_id, checkpoint)
                attempts, limit = 0, self.batch_size
                next_iterator = resp.get("NextShardIterator")
                continue
            self.stats.records_retried += len(records) - failed_at
            await backoff.sleep()
            retry_at = {
                "ShardIteratorType": "AT_SEQUENCE_NUMBER",
                "StartingSequenceNumber": sequences[failed_at],
            }
            next_iterator = await self._iterator(shard_id, retry_at)

    async def _resume_iterator(
        self, shard_id: str, checkpoint: str | None, has_parent: bool
    ) -> str:
        position = start_position(checkpoint, has_parent, self.starting_position)
        return await self._iterator(shard_id, position)

    async def _invoke(
        self, shard_id: str, records: list[dict[str, Any]], sequences: list[str]
    ) -> tuple[int | None, bool]:
        """Invoke the handler once: (None when the batch is done, else the first index to
        retry; whether it was a function error)."""
        event = build_event(
            records, shard_id=shard_id, stream_arn=self.stream_arn, region=self.region
        )
        context = LocalContext(
            self.function_name,
            self.timeout_s,
            self.region,
            aws_request_id=str(uuid.uuid4()),
            started=time.monotonic(),
        )
        self.stats.invocations += 1
        self.stats.records += len(records)
        try:
            if self._with_context:
                call = cast(AsyncContextHandler, self.handler)(event, context)
                response = await asyncio.wait_for(call, self.timeout_s)
            elif self._is_async:
                call = cast(AsyncHandler, self.handler)(event)
                response = await asyncio.wait_for(call, self.timeout_s)
            else:
                loop = asyncio.get_running_loop()
                sync = functools.partial(cast(SyncHandler, self.handler), event, context)
                response = await asyncio.wait_for(
                    loop.run_in_executor(self._executor, sync), self.timeout_s
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a function error (or a timeout): retry the whole batch
            self.stats.function_errors += 1
            problem = configuration_error(exc)
            if problem is not None:  # no retry can cure it: stop with its message
                raise ConfigurationError(
                    f"{self.function_name} on {self.stream}: {problem}"
                ) from exc
            log.warning("%s on %s/%s: function error %r; the batch is retried",
                        self.function_name, self.stream, shard_id, exc)  # fmt: skip
            return 0, True
        failed_at = first_failure(response, sequences)
        if failed_at is not None:
            self.stats.partial_failures += 1
            log.info("%s on %s/%s: %d of %d records reported failed; resuming at %s",
                     self.function_name, self.stream, shard_id, len(records) - failed_at,
                     len(records), sequences[failed_at])  # fmt: skip
        return failed_at, False


# -- the `speedlayer lambda-run` command ------------------------------------------------------

HANDLERS = {
    "kinesis_to_dynamodb": "processors.kinesis_to_dynamodb:handler",
    "kinesis_to_kafka": "processors.kinesis_to_kafka:handler",
}


@dataclass
class LambdaFunction:
    """A handler as the runner invokes it."""

    target: str  # ``package.module:function``: the default consumer (checkpoint lease)
    name: str  # the function name (Lambda context, logs)
    handler: SyncHandler | AsyncHandler | AsyncContextHandler  # the async twin if there is one
    aclose: Callable[[], Awaitable[None]] | None = None  # closes the handler's clients

    @property
    def with_context(self) -> bool:
        """An async twin takes ``(event, context)``; another async handler ``(event)``."""
        return self.aclose is not None


def load_handler(name: str) -> LambdaFunction:
    """``kinesis_to_dynamodb``, ``kinesis_to_kafka`` or any ``package.module:function`` (or
    ``package.module.function``)."""
    target = HANDLERS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise RunnerError(f"no Lambda handler {name!r}: {exc}") from exc
    if not callable(found):
        raise RunnerError(f"{target} is not callable")
    target = f"{module_name}:{attr}"
    aliases = {full: short for short, full in HANDLERS.items()}
    function_name = aliases.get(target) or re.sub(r"[^A-Za-z0-9_-]+", "-", target)
    twin = async_entry(found)
    if twin is not None:
        return LambdaFunction(target, function_name, twin[0], twin[1])
    return LambdaFunction(target, function_name, cast(SyncHandler | AsyncHandler, found))


def stream_name(stream: str, prefix: str) -> str:
    """``stream`` with the services' stream prefix (``SPEEDLAYER_KINESIS_STREAM_PREFIX``), unless
    it already carries it: ``--stream market-data-15m`` names the stream the services use."""
    return stream if stream.startswith(prefix) else prefix + stream


async def serve(
    function: str,
    streams: Sequence[str],
    *,
    settings: Settings | None = None,
    consumer: str | None = None,
    kinesis_endpoint_url: str | None = None,
    dynamodb_endpoint_url: str | None = None,
    until_idle: bool = False,
    stats_every_s: float = 10.0,
    **options: Any,
) -> list[RunnerStats]:
    """Run one mapping per stream until SIGINT/SIGTERM (or, with ``until_idle``, until every
    shard has been read to its end); return each mapping's counters.

    The runner reads the services' settings (``settings``, default from the environment):
    the Kinesis and DynamoDB endpoints (``kinesis_endpoint_url`` / ``dynamodb_endpoint_url``
    override them), the region, the stream prefix, the checkpoint table and whether to create
    it. ``consumer`` names the checkpoint lease (default: the handler's ``module:function``).
    The handler's clients are closed at the end."""
    settings = settings or Settings()
    function_ = load_handler(function)
    name = function_.name
    executor = None
    if not inspect.iscoroutinefunction(function_.handler):  # one environment for all streams
        executor = ThreadPoolExecutor(1, thread_name_prefix=name)
    runners = [
        LambdaRunner(
            function_.handler,
            stream_name(stream, settings.kinesis_stream_prefix),
            function_name=name,
            consumer=consumer or function_.target,
            with_context=function_.with_context,
            executor=executor,
            kinesis_endpoint_url=kinesis_endpoint_url or kinesis_endpoint(settings),
            dynamodb_endpoint_url=dynamodb_endpoint_url or dynamodb_endpoint(settings),
            region=settings.aws_region,
            checkpoint_table=settings.kinesis_checkpoint_table,
            create_checkpoint_table=settings.aws_create_resources,
            **options,
        )
        for stream in streams
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if executor is not None:  # closed last: after the runners stopped calling into it
            stack.push_async_callback(asyncio.to_thread, executor.shutdown, wait=True)
        if function_.aclose is not None:
            stack.push_async_callback(function_.aclose)
        for runner in runners:
            await stack.enter_async_context(runner)
        log.info("%s: mapping %s as consumer %s (batch size %d, from %s)", name,
                 ", ".join(r.stream for r in runners), runners[0].consumer,
                 runners[0].batch_size, runners[0].starting_position)  # fmt: skip
        waiters = [asyncio.create_task(runner.wait()) for runner in runners]
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                done, _ = await asyncio.wait(
                    [*waiters, stopper],
                    timeout=0.2 if until_idle else stats_every_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    if task is not stopper:
                        task.result()  # a runner that ended by itself failed: raise it
                if until_idle and all(r.idle for r in runners):
                    break
                if not until_idle:
                    for runner in runners:
                        log.info("%s <- %s: %s", name, runner.stream, runner.stats)
        finally:
            stopper.cancel()
            for task in waiters:
                task.cancel()
            await asyncio.gather(stopper, *waiters, return_exceptions=True)
    for runner in runners:
        log.info("%s <- %s: %s", name, runner.stream, runner.stats)
    return [runner.stats for runner in runners]
