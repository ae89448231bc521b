"""The outermost ASGI layer: auth before anything reads the body, then the body-size limit, enforced
while the body streams in (a chunked body without Content-Length is counted too), so an oversize
request costs at most the limit in memory. Errors use the app's JSON envelope."""

from __future__ import annotations

import json
from typing import Any

from terrazzo.server.api_errors import ApiError
from terrazzo.server.auth import PUBLIC_PATHS, check_bearer


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, seen: int | None = None) -> None:
        size = f"is {seen} bytes, over" if seen is not None else "is over"
        super().__init__(413, f"request body {size} the limit of {limit} bytes", type="invalid_request_error",
                         code="body_too_large", fix="send a smaller body (limits.max_body_bytes in the serve config)",
                         headers={"Connection": "close"})


async def send_error(send: Any, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: Any, token: str | None, max_body_bytes: int) -> None:
        self.app, self.token, self.limit = app, token, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if scope["path"] not in PUBLIC_PATHS:
                check_bearer(headers.get("authorization"), self.token)
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                raise BodyTooLarge(self.limit, int(length))
        except ApiError as err:
            return await send_error(send, err)

        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge as err:  # raised from receive() while the app read the body
            if not started:
                await send_error(send, err)
