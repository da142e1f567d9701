"""Shared AWS client plumbing for the DynamoDB store and the Kinesis bus (aioboto3).

Retries: botocore's own ``standard`` retry mode retries transient network errors a few times
within a second or two; throttling, partial failures and an endpoint that stays unreachable for
longer (a restarting service, a network blip) are retried again by the callers, with exponential
backoff and full jitter, until a bounded deadline (:class:`speedlayer.retry.Backoff`).

Configuration errors are never retried: no credentials, no or an invalid region, an invalid
endpoint URL, credentials or permissions the service refuses, a request the SDK rejects
(ParamValidation). :func:`open_client` checks the credentials and the endpoint when it creates a
client, and :func:`call` (like every direct call of the store) turns such a failure into a
:class:`~speedlayer.errors.ConfigurationError` naming the setting to fix and the endpoint used
(or AWS itself), so every service stops at once with that message. The same classification is
registered with :mod:`speedlayer.retry`, so a backend error caused by one is not retried either.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aioboto3
from aiobotocore.config import AioConfig
from botocore import exceptions as boto
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable

from speedlayer.errors import ConfigurationError
from speedlayer.retry import Backoff, causes, register_permanent

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


# -- configuration errors: never retried ------------------------------------------------------

CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or SPEEDLAYER_AWS_ENDPOINT_URL / "
    "SPEEDLAYER_KINESIS_ENDPOINT_URL / SPEEDLAYER_DYNAMODB_ENDPOINT_URL for local emulators"
)
REGION_HINT = "set SPEEDLAYER_AWS_REGION (e.g. us-east-1)"
# The SDK cannot find or load credentials.
_NO_CREDENTIALS = (
    boto.NoCredentialsError,
    boto.PartialCredentialsError,
    boto.CredentialRetrievalError,
    boto.UnknownCredentialError,
    boto.ProfileNotFound,
    boto.ConfigNotFound,
    boto.ConfigParseError,
    boto.NoAuthTokenError,
    boto.TokenRetrievalError,
    boto.SSOError,
    boto.RefreshWithMFAUnsupportedError,
)
_NO_REGION = (boto.NoRegionError, boto.InvalidRegionError, boto.UnknownRegionError)
_BAD_ENDPOINT = (
    boto.InvalidEndpointConfigurationError,
    boto.UnknownEndpointError,
    boto.EndpointResolutionError,
    boto.InvalidDNSNameError,
)
# A request the SDK refuses to send: the same request always fails.
_BAD_REQUEST = (
    boto.ParamValidationError,
    boto.UnknownServiceError,
    boto.UnknownClientMethodError,
    boto.MissingParametersError,
)
# The service refuses the credentials themselves ...
REFUSED_CREDENTIALS_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "IncompleteSignatureException",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "AuthFailure",
        "InvalidToken",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
# ... or what they may do.
ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "NotAuthorized",
        "OptInRequired",
        "KMSAccessDeniedException",
    }
)
_SERVICES = {  # service -> (its name in messages, the setting of its endpoint)
    "dynamodb": ("DynamoDB", "SPEEDLAYER_DYNAMODB_ENDPOINT_URL"),
    "kinesis": ("Kinesis", "SPEEDLAYER_KINESIS_ENDPOINT_URL"),
}


def endpoint_name(endpoint_url: str | None) -> str:
    """``endpoint_url`` as messages name it: the URL, or "AWS itself" for AWS's own endpoints."""
    if not endpoint_url:
        return "AWS itself"
    host = urlsplit(endpoint_url).hostname or ""
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws")):
        return f"AWS itself ({endpoint_url})"
    return endpoint_url


def configuration_problem(
    exc: BaseException,
    client: Any = None,
    *,
    service: str | None = None,
    endpoint_url: str | None = None,
) -> str | None:
    """What is wrong with the configuration when ``exc`` (an AWS SDK error, or the ValueError of
    an invalid endpoint URL) cannot be cured by retrying, naming the setting to fix and the
    endpoint used; None for any other error (throttling, an endpoint away, a missing table ...).
    ``client`` (or ``service`` and ``endpoint_url``) says where the call went."""
    if isinstance(exc, ConfigurationError):
        return str(exc)
    meta = getattr(client, "meta", None)
    if meta is not None:
        service = service or meta.service_model.service_name
        endpoint_url = endpoint_url or meta.endpoint_url
    name, setting = _SERVICES.get(service or "", (service or "AWS", ""))
    where = f"{name} at {endpoint_name(endpoint_url)}"
    endpoint_settings = " or ".join(filter(None, (setting, "SPEEDLAYER_AWS_ENDPOINT_URL")))
    if isinstance(exc, _NO_CREDENTIALS):
        return f"no AWS credentials for {where} ({exc}): {CREDENTIALS_HINT}"
    if isinstance(exc, _NO_REGION):
        return f"no valid AWS region for {name} ({exc}): {REGION_HINT}"
    if isinstance(exc, _BAD_ENDPOINT) or (
        isinstance(exc, ValueError) and str(exc).startswith("Invalid endpoint")
    ):
        return f"invalid endpoint for {name} ({exc}): check {endpoint_settings}"
    if isinstance(exc, _BAD_REQUEST):
        return f"a request to {where} that can never succeed ({exc})"
    code = error_code(exc)
    if code in REFUSED_CREDENTIALS_CODES:
        return (
            f"{where} refused the AWS credentials ({exc}): check AWS_ACCESS_KEY_ID/"
            f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or set {endpoint_settings} for a local "
            "emulator"
        )
    if code in ACCESS_DENIED_CODES:
        return f"{where} denied access ({exc}): the credentials lack a permission"
    return None


def configuration_error(
    exc: BaseException,
    client: Any = None,
    *,
    service: str | None = None,
    endpoint_url: str | None = None,
) -> ConfigurationError | None:
    """The :class:`ConfigurationError` for ``exc`` or one of its causes (see
    :func:`configuration_problem`), or None when a retry may help."""
    for link in causes(exc):
        if isinstance(link, ConfigurationError):
            return link
        problem = configuration_problem(link, client, service=service, endpoint_url=endpoint_url)
        if problem is not None:
            return ConfigurationError(problem)
    return None


def _is_configuration_cause(exc: BaseException) -> bool:
    return configuration_problem(exc) is not None


register_permanent(_is_configuration_cause)


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
    for ``UNREACHABLE_S`` (within it); None when the error code is in ``ok_codes``; a
    configuration error is raised as :class:`ConfigurationError` at once; any other failure is
    raised as ``error("<op> failed: <cause>")``."""
    backoff = Backoff(timeout_s=timeout_s)
    unreachable_until: float | None = None
    while True:
        try:
            return await getattr(client, op)(**kwargs)
        except AWS_ERRORS as exc:
            if error_code(exc) in ok_codes:
                return None
            problem = configuration_error(exc, client)
            if problem is not None:
                raise problem from exc
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


def emulator_credentials(
    endpoint_url: str | None, credentials: tuple[str, str] | None
) -> tuple[str, str] | None:
    """Emulators accept any credentials, so dummy ones are used for them when none are
    configured; AWS itself uses the normal credential chain (None)."""
    if credentials is None and endpoint_url and not os.environ.get("AWS_ACCESS_KEY_ID"):
        return ("local", "local")
    return credentials


def make_session(
    region: str, endpoint_url: str | None, credentials: tuple[str, str] | None
) -> aioboto3.Session:
    """An aioboto3 session (dummy credentials for an emulator, see
    :func:`emulator_credentials`)."""
    credentials = emulator_credentials(endpoint_url, credentials)
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
    """An aiobotocore client of ``service``, closed with ``stack``. No credentials to be found
    (from the SDK's chain: environment, profile, container or instance role), an invalid region
    or endpoint URL raise :class:`ConfigurationError` here, before any request."""
    session = make_session(region, endpoint_url, credentials)
    try:
        if emulator_credentials(endpoint_url, credentials) is None:
            found = await session.get_credentials()  # cached: the client reuses them
            if found is None:
                raise boto.NoCredentialsError()
        return await stack.enter_async_context(
            session.client(service, endpoint_url=endpoint_url, config=client_config(pool))
        )
    except (*AWS_ERRORS, ValueError) as exc:
        problem = configuration_error(exc, service=service, endpoint_url=endpoint_url)
        if problem is None:
            raise
        raise problem from exc


def client_config(pool: int) -> Any:
    return AioConfig(
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=pool,
        connect_timeout=5,
        read_timeout=30,
    )
