"""Shared AWS client plumbing for the DynamoDB store and the Kinesis bus (aioboto3).

Retries: botocore's own ``standard`` retry mode retries transient network errors a few times
within a second or two; throttling, partial failures and an endpoint that stays unreachable for
longer (a restarting service, a network blip) are retried again by the callers, with exponential
backoff and full jitter, until a bounded deadline (:class:`speedlayer.retry.Backoff`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable

from speedlayer.retry import Backoff

THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "TooManyRequestsException",
        "KMSThrottlingException",
    }
)
AWS_ERRORS = (ClientError, BotoCoreError)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_throttle(exc: BaseException) -> bool:
    return error_code(exc) in THROTTLE_CODES


# How long a call or a shard reader retries an endpoint that cannot be reached (connection refused
# or reset, timeouts: a restarting service, a network blip) before it fails and its owner reports
# it (docs/design.md#failure-policy).
UNREACHABLE_S = 10.0


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, HTTPClientError | EndpointUnreachable)


async def call(
    client: Any,
    op: str,
    *,
    timeout_s: float,
    error: Callable[[str], Exception],
    ok_codes: frozenset[str] = frozenset(),
    **kwargs: Any,
) -> Any:
    """One API call with throttling retried until ``timeout_s``, and an unreachable endpoint
    for ``UNREACHABLE_S`` (within it); None when the error code is in ``ok_codes``; any other
    failure is raised as ``error("<op> failed: <cause>")``."""
    backoff = Backoff(timeout_s=timeout_s)
    unreachable_until: float | None = None
    while True:
        try:
            return await getattr(client, op)(**kwargs)
        except AWS_ERRORS as exc:
            if error_code(exc) in ok_codes:
                return None
            if is_throttle(exc) and await backoff.sleep():
                continue
            if is_unreachable(exc):
                now = time.monotonic()
                unreachable_until = unreachable_until or now + UNREACHABLE_S
                if now < unreachable_until and await backoff.sleep():
                    continue
            raise error(f"{op} failed: {exc}") from exc


async def ensure_table(
    client: Any,
    table: str,
    hash_key: tuple[str, str],
    range_key: tuple[str, str],
    *,
    timeout_s: float,
    active_timeout_s: float,
    error: Callable[[str], Exception],
) -> None:
    """Create an on-demand DynamoDB table unless it exists, then wait until it is ACTIVE."""
    await call(
        client,
        "create_table",
        timeout_s=timeout_s,
        error=error,
        ok_codes=frozenset({"ResourceInUseException"}),
        TableName=table,
        **table_spec(hash_key, range_key),
    )
    await wait_table_active(
        client, table, timeout_s=timeout_s, active_timeout_s=active_timeout_s, error=error
    )


async def wait_table_active(
    client: Any,
    table: str,
    *,
    timeout_s: float,
    active_timeout_s: float,
    error: Callable[[str], Exception],
) -> None:
    backoff = Backoff(timeout_s=active_timeout_s, initial_s=0.1, cap_s=1.0)
    while True:
        desc = await call(
            client, "describe_table", timeout_s=timeout_s, error=error, TableName=table
        )
        if desc["Table"]["TableStatus"] == "ACTIVE":
            return
        if not await backoff.sleep():
            raise error(f"table {table} did not become ACTIVE")


def table_spec(hash_key: tuple[str, str], range_key: tuple[str, str]) -> dict[str, Any]:
    """CreateTable arguments of an on-demand table keyed by (name, type) hash and range keys."""
    return {
        "AttributeDefinitions": [
            {"AttributeName": hash_key[0], "AttributeType": hash_key[1]},
            {"AttributeName": range_key[0], "AttributeType": range_key[1]},
        ],
        "KeySchema": [
            {"AttributeName": hash_key[0], "KeyType": "HASH"},
            {"AttributeName": range_key[0], "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def make_session(
    region: str, endpoint_url: str | None, credentials: tuple[str, str] | None
) -> aioboto3.Session:
    """An aioboto3 session; emulators accept any credentials, so dummy ones are used for them
    when none are configured (AWS itself uses the normal credential chain)."""
    if credentials is None and endpoint_url and not os.environ.get("AWS_ACCESS_KEY_ID"):
        credentials = ("local", "local")
    if credentials is not None:
        return aioboto3.Session(
            aws_access_key_id=credentials[0],
            aws_secret_access_key=credentials[1],
            region_name=region,
        )
    return aioboto3.Session(region_name=region)


async def open_client(
    stack: contextlib.AsyncExitStack,
    service: str,
    region: str,
    endpoint_url: str | None,
    credentials: tuple[str, str] | None,
    pool: int,
) -> Any:
    """An aiobotocore client of ``service``, closed with ``stack``."""
    session = make_session(region, endpoint_url, credentials)
    return await stack.enter_async_context(
        session.client(service, endpoint_url=endpoint_url, config=client_config(pool))
    )


def client_config(pool: int) -> Any:
    return AioConfig(
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=pool,
        connect_timeout=5,
        read_timeout=30,
    )
