"""api.security.RedactKeys: no log record leaves a handler with an API key in it, whatever shape
the logger gave it (uvicorn's access-log arguments, the websockets handshake's header lines, an
ASGI scope printed whole)."""

from __future__ import annotations

import logging

import pytest
from uvicorn.logging import AccessFormatter

from api.security import RedactKeys, redact, scope_api_key
from speedlayer.config import Settings

KEY = "k3y-0f-the-day"


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("< GET %s HTTP/1.1", ("/ws?batch=1&api_key=" + KEY,)),
        ("< %s: %s", ("x-api-key", KEY)),
        ("< %s: %s", ("X-API-Key", "not-configured-key")),
        ("ASGI [1] Started scope=%s", ({"query_string": b"api_key=" + KEY.encode()},)),
        ("ASGI [1] Started scope=%s", ({"headers": [(b"x-api-key", b"not-configured-key")]},)),
        ("GET /symbols?api%5Fkey=not-configured-key&x=1", ()),
        ("GET /v2/aggs/ticker/AAPL/range/1/minute/1/2?apiKey=not-configured-key&limit=2", ()),
        ("< %s: %s", ("authorization", "Bearer not-configured-key")),
        ("< authorization: Bearer not-configured-key", ()),
        (
            "ASGI [1] Started scope=%s",
            ({"headers": [(b"authorization", b"Bearer not-configured-key")]},),
        ),
        ("the key is %s", (KEY,)),
    ],
)
def test_records_lose_their_keys(msg: str, args: tuple[object, ...]) -> None:
    rec = record(msg, *args)
    assert RedactKeys([KEY]).filter(rec)
    text = rec.getMessage()
    assert KEY not in text and "not-configured-key" not in text, text
    assert "[redacted]" in text


def test_the_access_log_keeps_its_arguments() -> None:
    rec = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/candles/AAPL?api_key={KEY}&limit=2", "1.1", 200), None,
    )  # fmt: skip
    RedactKeys([KEY]).filter(rec)
    line = AccessFormatter("%(client_addr)s - %(request_line)s %(status_code)s").format(rec)
    assert line == "127.0.0.1:5000 - GET /candles/AAPL?api_key=[redacted]&limit=2 HTTP/1.1 200 OK"


def test_other_lines_are_untouched() -> None:
    text = "GET /candles/AAPL?interval=5m&limit=2 x-api-version: 3"
    assert redact(text, [KEY]) == text
    rec = record("%s %d", "plain", 7)
    RedactKeys([KEY]).filter(rec)
    assert rec.args == ("plain", 7)


def test_log_level_is_validated() -> None:
    assert Settings(log_level="DEBUG").log_level == "debug"
    with pytest.raises(ValueError, match="log level 'trace'"):
        Settings(log_level="trace")


@pytest.mark.parametrize(
    ("query", "headers", "presented", "left"),
    [
        (b"apiKey=k1&limit=2", [], b"k1", b"limit=2"),
        (b"limit=2&api_key=k1&apiKey=k2", [], b"k1", b"limit=2"),
        (b"limit=2", [(b"authorization", b"Bearer k3")], b"k3", b"limit=2"),
        (b"apiKey=k1", [(b"authorization", b"bearer  k3 ")], b"k3", b""),
        (b"apiKey=k1", [(b"authorization", b"Bearer k3"), (b"x-api-key", b"k4")], b"k4", b""),
        (b"apiKey=k1", [(b"authorization", b"Basic k3")], b"k1", b""),
        (b"apikey=k1&limit=2", [], None, b"apikey=k1&limit=2"),  # only Polygon's spelling
    ],
)
def test_the_presented_key_and_what_the_routes_see(
    query: bytes, headers: list[tuple[bytes, bytes]], presented: bytes | None, left: bytes
) -> None:
    """Header X-API-Key, else Authorization: Bearer, else query api_key or apiKey (Polygon's);
    both query forms are removed before routing and logging."""
    scope = {"type": "http", "query_string": query, "headers": headers}
    assert scope_api_key(scope) == presented
    assert scope["query_string"] == left
