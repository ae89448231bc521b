"""Checks on what an OpenAI-compatible server answers, under the `openai` client (openai_client.py), so a
broken answer is an upstream error (HTTP 502 at the server) and never a success:

- the body is bounded while it streams in (`max_body_bytes`), so a 40 MB answer costs the limit, not 40 MB;
- a stream must end with `data: [DONE]`: one that just stops was cut (a proxy, a crashed server) and may
  be missing its end, whatever it delivered before;
- an answer must carry a choice: `{"choices": []}` is no answer;
- a body that is not JSON (or an undecodable stream event) is an error, with the client's own type.

The first two sit in the HTTP transport the `openai` client is given (`http_clients`), so they hold for
every call it makes, streamed or not; the last two are `check_reply` and `INVALID_ANSWER`, which the
client applies to what it parsed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2  # the HTTP library the `openai` client runs on (its transports and streams)

MAX_BODY_BYTES = 8 * 1024 * 1024  # an answer of max_new_tokens <= 4096 tokens is far below this
_DONE = b"data: [DONE]"


class UpstreamInvalid(httpx2.TransportError):
    """The server's answer is not a valid completion (cut, oversized, empty or not JSON). A transport
    error, so the client reports it as the endpoint failing, with the tokens already delivered."""


# Parse failures the `openai` library lets through as they are: treat them as an invalid answer.
INVALID_ANSWER: tuple[type[Exception], ...] = (UpstreamInvalid, ValueError)  # JSONDecodeError, UnicodeDecodeError


class _Watch:
    """Counts a response's bytes and, for an event stream, whether `[DONE]` went by."""

    def __init__(self, response: httpx2.Response, limit: int) -> None:
        self.limit, self.seen, self.tail, self.done = limit, 0, b"", False
        self.sse = response.headers.get("content-type", "").startswith("text/event-stream")

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > self.limit:
            raise UpstreamInvalid(f"the answer is over {self.limit} bytes; not read further")
        if self.sse and not self.done:
            window = self.tail + chunk
            self.done = _DONE in window
            self.tail = window[-len(_DONE):]

    def end(self) -> None:
        if self.sse and not self.done:
            raise UpstreamInvalid("the stream ended without 'data: [DONE]' (cut off before its end)")


class _SyncBody(httpx2.SyncByteStream):
    def __init__(self, inner: Any, watch: _Watch) -> None:
        self.inner, self.watch = inner, watch

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.watch.feed(chunk)
            yield chunk
        self.watch.end()

    def close(self) -> None:
        self.inner.close()


class _AsyncBody(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, watch: _Watch) -> None:
        self.inner, self.watch = inner, watch

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.watch.feed(chunk)
            yield chunk
        self.watch.end()

    async def aclose(self) -> None:
        await self.inner.aclose()


class CheckedTransport(httpx2.BaseTransport):
    def __init__(self, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.inner, self.limit = httpx2.HTTPTransport(), max_body_bytes

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        response.stream = _SyncBody(response.stream, _Watch(response, self.limit))
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncCheckedTransport(httpx2.AsyncBaseTransport):
    def __init__(self, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.inner, self.limit = httpx2.AsyncHTTPTransport(), max_body_bytes

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        response.stream = _AsyncBody(response.stream, _Watch(response, self.limit))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def sync_http_client(max_body_bytes: int = MAX_BODY_BYTES) -> httpx2.Client:
    """The HTTP client to hand `openai.OpenAI(http_client=...)` (timeouts stay the `openai` client's)."""
    import openai

    return openai.DefaultHttpxClient(transport=CheckedTransport(max_body_bytes))


def async_http_client(max_body_bytes: int = MAX_BODY_BYTES) -> httpx2.AsyncClient:
    """The HTTP client to hand `openai.AsyncOpenAI(http_client=...)`."""
    import openai

    return openai.DefaultAsyncHttpxClient(transport=AsyncCheckedTransport(max_body_bytes))


def check_reply(choices_seen: int, finish_reason: str | None) -> None:
    """After the whole answer was read: it must have carried a choice (text, or at least a finish reason)."""
    if choices_seen == 0 and finish_reason is None:
        raise UpstreamInvalid("the answer has no choices (no text and no finish_reason)")


def invalid_cause(exc: Exception) -> Exception:
    """The check that failed, when the `openai` client wrapped it in its connection error (it does for a
    body read inside its own send, e.g. an oversized non-streamed answer)."""
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, UpstreamInvalid) and not isinstance(exc, UpstreamInvalid) else exc
