"""Server-Sent Events: framing, and a pump that forwards a running request's events in order, with a
comment line when the stream is idle so proxies keep it open."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any


def frame(event: str | None, data: Any) -> str:
    """One SSE message; `event` None gives a bare `data:` line (what OpenAI clients read)."""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), default=str)
    head = f"event: {event}\n" if event else ""
    return head + "".join(f"data: {line}\n" for line in body.split("\n")) + "\n"


async def pump(queue: asyncio.Queue, task: asyncio.Task, keepalive_s: float) -> AsyncIterator[dict[str, Any] | None]:
    """Yield the events put on `queue` until `task` ends, in order; None means "idle for keepalive_s".
    One getter lives across idle periods, so no event is ever taken and dropped."""
    getter: asyncio.Future | None = None
    try:
        while True:
            getter = getter or asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                item, getter = getter.result(), None
                yield item
            elif task.done():
                while not queue.empty():
                    yield queue.get_nowait()
                return
            else:
                yield None
    finally:
        if getter is not None:
            getter.cancel()
