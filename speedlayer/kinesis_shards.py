"""Reading a Kinesis stream shard by shard with durable checkpoints, shared by the Kinesis bus's
consumers and the local Lambda runner.

Checkpoints live in a DynamoDB table (key: ``lease`` (S), ``shard`` (S)), one item per lease and
shard holding the last sequence number done, or ``SHARD_END`` once a closed shard was read to its
end. A shard resumes ``AFTER_SEQUENCE_NUMBER`` its checkpoint; without one, a child shard starts at
its oldest record (its parents were read to their end first) and any other shard at the reader's
initial position (LATEST or TRIM_HORIZON). A child shard is read only after the parents that are
still listed are finished, so per-key order holds across resharding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from speedlayer.aws import call, ensure_table

SHARD_END = "SHARD_END"

Shard = dict[str, Any]


class CheckpointTable:
    """The checkpoint table through one DynamoDB client; failures are raised as ``error``."""

    def __init__(
        self, client: Any, name: str, *, timeout_s: float, error: Callable[[str], Exception]
    ) -> None:
        self.client = client
        self.name = name
        self.timeout_s = timeout_s
        self.error = error

    async def ensure(self, active_timeout_s: float) -> None:
        """Create the table unless it exists; wait until it is ACTIVE."""
        await ensure_table(
            self.client,
            self.name,
            ("lease", "S"),
            ("shard", "S"),
            timeout_s=self.timeout_s,
            active_timeout_s=active_timeout_s,
            error=self.error,
        )

    async def read(self, lease: str) -> dict[str, str]:
        """Shard id -> the last sequence number done (or ``SHARD_END``) of ``lease``."""
        found: dict[str, str] = {}
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "#l = :l",
            "ExpressionAttributeNames": {"#l": "lease"},
            "ExpressionAttributeValues": {":l": {"S": lease}},
            "ConsistentRead": True,
        }
        while True:
            page = await self._call("query", **kwargs)
            for item in page.get("Items", []):
                found[item["shard"]["S"]] = item["sequence"]["S"]
            if not page.get("LastEvaluatedKey"):
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def write(self, lease: str, shard_id: str, sequence: str) -> None:
        await self._call(
            "put_item",
            TableName=self.name,
            Item={
                "lease": {"S": lease},
                "shard": {"S": shard_id},
                "sequence": {"S": sequence},
                "updated_ms": {"N": str(time.time_ns() // 1_000_000)},
            },
        )

    async def _call(self, op: str, **kwargs: Any) -> Any:
        return await call(self.client, op, timeout_s=self.timeout_s, error=self.error, **kwargs)


async def list_shards(
    client: Any, stream: str, *, timeout_s: float, error: Callable[[str], Exception]
) -> list[Shard]:
    """Every shard of ``stream`` (ListShards, all pages)."""
    shards: list[Shard] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        resp = await call(client, "list_shards", timeout_s=timeout_s, error=error, **kwargs)
        shards.extend(resp.get("Shards", []))
        token = resp.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}  # AWS: NextToken alone on the following pages


def has_parent(shard: Shard) -> bool:
    """Whether the shard was split or merged from another: it then starts at its beginning (its
    parents were read to their end, or have expired), never at ``LATEST``."""
    return bool(shard.get("ParentShardId"))


def start_position(sequence: str | None, has_parent: bool, initial: str) -> dict[str, str]:
    """GetShardIterator arguments for a shard with checkpoint ``sequence`` (or None)."""
    if sequence is not None:
        return {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": sequence}
    if has_parent:
        return {"ShardIteratorType": "TRIM_HORIZON"}  # the parent was read to its end
    return {"ShardIteratorType": initial}


async def follow_shards(
    list_stream: Callable[[], Awaitable[list[Shard]]],
    start: Callable[[Shard, list[str]], Awaitable[asyncio.Task[None]]],
    checkpoints: Mapping[str, str],
    refresh_s: float,
    *,
    on_listed: Callable[[], None] | None = None,
    on_finished: Callable[[str], None] | None = None,
) -> None:
    """Read every shard of a stream, one task each from ``start(shard, listed parents)``, a
    child only once its listed parents are finished (``SHARD_END`` in ``checkpoints``, or their
    task ended); the shards are listed again every ``refresh_s`` or when a task ends. Runs until
    cancelled; the error of a shard task is raised here. ``on_listed`` runs after each round of
    starting tasks, ``on_finished(shard id)`` when a shard's task ended."""
    running: dict[str, asyncio.Task[None]] = {}
    finished = {sid for sid, seq in checkpoints.items() if seq == SHARD_END}
    try:
        while True:
            shards = await list_stream()
            ids = {shard["ShardId"] for shard in shards}
            for shard in shards:
                sid = shard["ShardId"]
                if sid in running or sid in finished:
                    continue
                parents = [
                    p
                    for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
                    if p and p in ids
                ]
                if all(p in finished for p in parents):
                    running[sid] = await start(shard, parents)
            if on_listed is not None:
                on_listed()
            if running:
                await asyncio.wait(
                    running.values(), timeout=refresh_s, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                await asyncio.sleep(refresh_s)
            for sid, task in list(running.items()):
                if task.done():
                    del running[sid]
                    task.result()  # a failed shard fails the whole reader
                    finished.add(sid)
                    if on_finished is not None:
                        on_finished(sid)
    finally:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
