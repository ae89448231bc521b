"""A real `terrazzo serve` server on 127.0.0.1 in a background thread, for tests and benchmarks: the same
app, uvicorn server and graceful drain as the CLI, with several agents if wanted."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from terrazzo.server.api_errors import ServeError
from terrazzo.server.app import create_app
from terrazzo.server.serve_command import DrainingServer, uvicorn_config
from terrazzo.server.service import AgentService
from terrazzo.server.settings import ServeSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, services: list[AgentService], settings: ServeSettings, token: str | dict[str, str] | None,
                 log_level: str = "warning") -> None:
        self.services = {s.name: s for s in services}
        self.app = create_app(services, settings, token, on_fatal=lambda msg: None)
        self.port = free_port()
        cfg = uvicorn_config(self.app, settings, "127.0.0.1", self.port, log_level)
        self.limits = cfg.connection_limits  # type: ignore[attr-defined]
        self.server = DrainingServer(cfg, self.app.state.lifecycle)
        self.thread = threading.Thread(target=self.server.run, name=f"serve-{self.port}", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 300.0) -> ServerThread:
        """Start and wait (bounded) until /readyz answers 200; raise with the agents' states otherwise."""
        self.thread.start()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.server.started:
                try:
                    r = httpx.get(self.url + "/readyz", timeout=5)
                except httpx.TimeoutException:  # start-up (ray.init) may hold the loop for a while
                    continue
                if r.status_code == 200:
                    return self
                if r.json().get("status") == "failed":
                    break
            time.sleep(0.1)
        states = {n: (s.state, s.error) for n, s in self.services.items()}
        self.stop()
        raise ServeError(f"server on {self.url} not ready: {states}", fix="see the log above")

    def drain(self) -> None:
        """What SIGTERM does: stop admitting, finish in-flight requests, then exit."""
        self.server.handle_exit(signal.SIGTERM, None)

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """Parse Server-Sent Events: (event name, JSON data) per message."""
    event, data = "message", []
    for line in lines:
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
