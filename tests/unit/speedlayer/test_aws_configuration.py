"""Which AWS failures are configuration errors (never retried) and what their message says.

Missing credentials or region, an invalid endpoint, credentials or permissions the service
refuses and requests the SDK rejects fail the same way on every attempt: ``speedlayer.aws`` turns
them into a ``ConfigurationError`` naming the setting to fix and the endpoint used, and
``speedlayer.retry`` does not retry them, also when a backend wrapped them in its own error.
No server is involved: the clients are fakes, or fail before sending anything.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from botocore.exceptions import ClientError as BotoClientError
from botocore.exceptions import (
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from speedlayer.aws import (
    call,
    configuration_error,
    configuration_problem,
    error_code,
    open_client,
)
from speedlayer.errors import BusError, ConfigurationError, RunnerError, StoreError
from speedlayer.retry import Backoff, is_permanent, is_retriable, retry

HINT = (
    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or SPEEDLAYER_AWS_ENDPOINT_URL / "
    "SPEEDLAYER_KINESIS_ENDPOINT_URL / SPEEDLAYER_DYNAMODB_ENDPOINT_URL for local emulators"
)


def client_error(code: str, op: str = "PutRecords") -> BotoClientError:
    return BotoClientError({"Error": {"Code": code, "Message": "m"}}, op)


@pytest.mark.parametrize(
    "exc",
    [
        NoCredentialsError(),
        PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
        NoRegionError(),
        ValueError("Invalid endpoint: not a url"),
        ParamValidationError(report="Invalid length for parameter StreamName"),
        client_error("AccessDeniedException"),
        client_error("AccessDenied"),
        client_error("UnrecognizedClientException"),
        client_error("InvalidSignatureException"),
        client_error("ExpiredTokenException"),
    ],
    ids=lambda e: error_code(e) or type(e).__name__,
)
def test_configuration_errors_are_recognised_and_never_retried(exc: Exception) -> None:
    assert configuration_problem(exc, service="kinesis") is not None
    wrapped = BusError(f"PutRecords to market-data-raw failed: {exc}")
    wrapped.__cause__ = exc
    assert not is_retriable(wrapped)  # the bus's own, otherwise retriable, error
    assert is_permanent(wrapped)
    error = configuration_error(wrapped, service="kinesis")
    assert isinstance(error, ConfigurationError) and not error.retriable


@pytest.mark.parametrize(
    "exc",
    [
        client_error("ProvisionedThroughputExceededException"),
        client_error("ThrottlingException"),
        client_error("ValidationException", "BatchWriteItem"),  # the request's data, not setup
        client_error("ResourceNotFoundException"),
        client_error("InternalServerError"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ValueError("some other value error"),
    ],
    ids=lambda e: error_code(e) or type(e).__name__,
)
def test_other_failures_stay_as_they_were(exc: Exception) -> None:
    assert configuration_problem(exc) is None
    wrapped = StoreError(f"DynamoDB failed: {exc}")
    wrapped.__cause__ = exc
    assert is_retriable(wrapped)
    assert configuration_error(wrapped) is None


def test_messages_name_the_setting_and_the_endpoint() -> None:
    text = configuration_problem(NoCredentialsError(), service="dynamodb")
    assert text == (
        "no AWS credentials for DynamoDB at AWS itself (Unable to locate credentials): " + HINT
    )
    aws = "https://kinesis.eu-west-1.amazonaws.com"
    text = configuration_problem(client_error("AccessDeniedException"), service="kinesis",
                                 endpoint_url=aws)  # fmt: skip
    assert text is not None and f"Kinesis at AWS itself ({aws}) denied access" in text
    text = configuration_problem(
        client_error("UnrecognizedClientException"),
        service="dynamodb",
        endpoint_url="http://10.0.0.5:4567",
    )
    assert text is not None and "DynamoDB at http://10.0.0.5:4567 refused" in text
    assert "SPEEDLAYER_DYNAMODB_ENDPOINT_URL or SPEEDLAYER_AWS_ENDPOINT_URL" in text
    text = configuration_problem(ValueError("Invalid endpoint: x y"), service="kinesis")
    assert text is not None and "SPEEDLAYER_KINESIS_ENDPOINT_URL" in text and "x y" in text
    text = configuration_problem(NoRegionError())
    assert text is not None and "SPEEDLAYER_AWS_REGION" in text


def test_the_error_tree_says_configuration_errors_are_not_retriable() -> None:
    assert not ConfigurationError("x").retriable and not is_retriable(ConfigurationError("x"))
    runner = RunnerError("query failed")
    runner.__cause__ = ConfigurationError("no AWS credentials ...")
    assert not is_retriable(runner)
    assert configuration_error(runner) is runner.__cause__
    assert is_retriable(StoreError("plain")) and not is_permanent(StoreError("plain"))


class FakeClient:
    """An aiobotocore client stand-in whose one operation fails ``failures`` times."""

    def __init__(self, exc: Exception, failures: int = 1_000) -> None:
        self.exc = exc
        self.failures = failures
        self.calls = 0

    async def put_records(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return {"ok": True}


async def test_call_raises_a_configuration_error_at_the_first_attempt() -> None:
    client = FakeClient(NoCredentialsError())
    with pytest.raises(ConfigurationError, match="no AWS credentials") as raised:
        await call(client, "put_records", timeout_s=30, error=BusError)
    assert client.calls == 1
    assert isinstance(raised.value.__cause__, NoCredentialsError)
    denied = FakeClient(client_error("AccessDeniedException"))
    with pytest.raises(ConfigurationError, match="denied access"):
        await call(denied, "put_records", timeout_s=30, error=BusError)
    assert denied.calls == 1
    throttled = FakeClient(client_error("ThrottlingException"), failures=2)
    assert await call(throttled, "put_records", timeout_s=30, error=BusError) == {"ok": True}
    assert throttled.calls == 3


async def test_retry_gives_up_at_once_on_a_wrapped_configuration_error() -> None:
    attempts = [0]

    async def publish() -> None:
        attempts[0] += 1
        try:
            raise client_error("AccessDeniedException")
        except BotoClientError as exc:
            raise BusError(f"PutRecords failed: {exc}") from exc

    with pytest.raises(BusError):
        await retry(publish, what="publish", backoff=Backoff(initial_s=0.001, timeout_s=30))
    assert attempts[0] == 1


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("no_credentials")
async def test_open_client_checks_credentials_region_and_endpoint() -> None:
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(ConfigurationError) as raised:
            await open_client(stack, "kinesis", "us-east-1", None, None, 4)
        assert str(raised.value) == (
            "no AWS credentials for Kinesis at AWS itself (Unable to locate credentials): " + HINT
        )
        with pytest.raises(ConfigurationError, match="SPEEDLAYER_DYNAMODB_ENDPOINT_URL"):
            await open_client(stack, "dynamodb", "us-east-1", "not a url", ("k", "s"), 4)
        with pytest.raises(ConfigurationError, match="SPEEDLAYER_AWS_REGION"):
            await open_client(stack, "dynamodb", "not a region!", None, ("k", "s"), 4)
        # An emulator needs no credentials: dummy ones are used, nothing is sent here.
        client = await open_client(stack, "dynamodb", "us-east-1", "http://127.0.0.1:9", None, 4)
        assert client.meta.endpoint_url == "http://127.0.0.1:9"
