"""A real uvicorn server for an ASGI app on 127.0.0.1, in a background thread, for the tests that
need an HTTP peer on loopback."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def serve(app: Any, start_timeout_s: float = 10.0) -> Iterator[str]:
    """Yield the server's base URL (`http://127.0.0.1:PORT`); stop it on exit."""
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not srv.started and time.monotonic() < deadline:  # bounded wait for start-up
        time.sleep(0.02)
    if not srv.started:
        raise RuntimeError(f"uvicorn did not start within {start_timeout_s:g} s")
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
