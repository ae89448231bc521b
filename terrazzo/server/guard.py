"""The outermost ASGI layer: auth before anything reads the body (the token names the tenant, put in the
request's state), then the body-size limit and a read deadline, enforced while the body streams in (a
chunked body without Content-Length is counted too), so an oversize or stalled request costs at most the
limit in memory and the deadline in time. Errors use the app's JSON envelope."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from terrazzo.server.api_errors import ApiError
from terrazzo.server.auth import PUBLIC_PATHS, TokenMap, check_bearer


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


class BodyStalled(ApiError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the request body paused for more than {timeout_s:g} s", type="invalid_request_error",
                         code="body_timeout", fix="send the whole body promptly (limits.read_timeout_s)",
                         headers={"Connection": "close"})


class Guard:
    def __init__(self, app: Any, tokens: TokenMap | None, max_body_bytes: int, read_timeout_s: float = 30.0) -> None:
        self.app, self.tokens, self.limit, self.read_timeout_s = app, tokens, max_body_bytes, read_timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if scope["path"] not in PUBLIC_PATHS:
                scope.setdefault("state", {})["tenant"] = check_bearer(headers.get("authorization"), self.tokens)
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                raise BodyTooLarge(self.limit, int(length))
        except ApiError as err:
            return await send_error(send, err)

        seen = 0
        started = body_done = False

        async def limited_receive() -> dict:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() waits for the client to leave: no deadline on that
                return await receive()
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyStalled(self.read_timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
                body_done = not message.get("more_body", False)
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except (BodyTooLarge, BodyStalled) as err:  # raised from receive() while the app read the body
            if not started:
                await send_error(send, err)
