"""``HEAD`` on every ``GET`` route: FastAPI routes declare GET only, so HEAD would be 405 (while
the CORS preflight advertises it, and health checkers use it). This pure ASGI middleware runs a
HEAD request as a GET and ends the response after its headers: the status, content type and
content length are the GET's, and the server sends no body (uvicorn drops the body of a HEAD
response itself; ending early also stops a stream such as ``/stream/candles``, whose live client
is released when the server reports the request done)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        done = False

        async def send_headers_only(message: Message) -> None:
            nonlocal done
            if done:
                return
            if message["type"] == "http.response.body":
                done = True  # the first body part ends the response, empty
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        async def receive_until_done() -> Message:
            if done:
                return {"type": "http.disconnect"}
            return await receive()

        # a copy: the server keeps seeing HEAD (and so sends no body), the routes see GET
        await self.app({**scope, "method": "GET"}, receive_until_done, send_headers_only)
