"""Every error speedlayer raises on purpose, in one tree.

Backend errors (botocore, aiokafka, sqlite3, httpx) are mapped to these at the boundary, so the
callers above the backends catch only this tree. ``retriable`` says whether trying the same
operation again may succeed (a full disk, a broker away, a throttled stream) or cannot
(a bad setting, a refused key, a malformed file): :func:`speedlayer.retry.retry` retries exactly
the retriable ones.

    SpeedlayerError
    ├── ConfigError                a setting, flag or parameter is invalid
    ├── ConfigurationError         a backend cannot be used as configured: no credentials, no
    │                              region, a bad endpoint, refused credentials or permissions
    ├── InputError                 input data is not in a supported format
    │   └── ReplayFormatError      a replay file as a whole
    ├── RequestError               a live-feed request (WebSocket/SSE) is invalid
    ├── StoreError                 the candle store failed (retriable)
    │   └── TableMissing           a table does not exist and may not be created (not retriable)
    ├── BusError                   the bus failed, or a record is not in the wire format (retriable)
    │   └── SubscriptionClosed     a subscription ended (not retriable: subscribe again)
    ├── PolygonError               the Polygon feed (WebSocket and REST)
    │   ├── AuthError              the feed refused the API key
    │   └── RestError              a REST aggregates request failed for good
    │       └── RestAuthError      401/403
    ├── RunnerError                the Lambda runner cannot read a stream or keep checkpoints
    └── ServiceFailed              a long-lived task of a service died; the service stops
"""

from __future__ import annotations


class SpeedlayerError(Exception):
    """Root of every error raised on purpose by speedlayer."""

    retriable: bool = False


class ConfigError(SpeedlayerError, ValueError):
    """A setting, flag or parameter is invalid."""


class ConfigurationError(SpeedlayerError):
    """A backend cannot be used as configured: credentials, region or endpoint are missing or
    invalid, the backend refuses the credentials or the permission, or it rejects the request
    itself. Never retriable: the same call fails the same way until the configuration changes,
    so services stop at once with this message instead of retrying (see
    :func:`speedlayer.aws.configuration_error`)."""

    retriable = False


class InputError(SpeedlayerError):
    """Input data is not in a supported format."""


class ReplayFormatError(InputError):
    """A file is not in any replay format (as a whole, not a single bad record)."""


class RequestError(SpeedlayerError):
    """A live-feed request is invalid: the client gets ``status``/``code`` and the message."""

    def __init__(self, message: str, *, status: int = 422, code: str = "invalid_parameter"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class StoreError(SpeedlayerError):
    """The candle store failed (I/O, a full disk, throttling, closed). Writes are idempotent
    upserts, so the same write may be tried again."""

    retriable = True


class TableMissing(StoreError):
    """A table the store reads or writes does not exist, and this process may not create it
    (``aws_create_resources`` off, or a read-only command): trying again cannot help."""

    retriable = False


class BusError(SpeedlayerError):
    """The bus backend failed (a stream/topic is missing, a write could not be completed), or a
    record is not in the wire format."""

    retriable = True


class SubscriptionClosed(BusError):
    """The subscription ended: the bus stopped, a slow consumer was dropped, or the consumer
    feeding it failed (``reason``; the failure, if any, is the subscription's ``error``)."""

    retriable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PolygonError(SpeedlayerError):
    """Root of the Polygon feed's errors (WebSocket and REST)."""


class AuthError(PolygonError):
    """The server refused the API key (``auth_failed``): fatal, the feed does not reconnect."""


class RestError(PolygonError):
    """A REST aggregates request failed for good (after retries, or a non-retryable status)."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RestAuthError(RestError):
    """401/403: the key is unknown or the plan does not include this data."""


class RunnerError(SpeedlayerError):
    """The Lambda runner cannot read the stream or keep its checkpoints."""

    retriable = True


class ServiceFailed(SpeedlayerError):
    """A long-lived task of a service died or a failure outlasted its deadline: the service
    stops with an error (a supervisor restarts it, resuming from the committed position)."""
