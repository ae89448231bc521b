"""`terrazzo serve`: build the agent service and the app, run uvicorn, and shut down gracefully — on
SIGTERM (or Ctrl-C) stop admitting (503, /readyz fails), let in-flight requests finish within the grace
period, then stop uvicorn and the pools. A second signal stops at once."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn

from terrazzo.server.app import Lifecycle, create_app
from terrazzo.server.auth import resolve_tokens
from terrazzo.server.connections import ConnectionLimits, limited_protocol
from terrazzo.server.service import AgentService
from terrazzo.server.settings import ServeSettings, load_settings

log = logging.getLogger("terrazzo.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """First signal: drain (safe to call from a signal handler or another thread). Later: uvicorn's own."""
        if self._draining or self._loop is None or self.should_exit:
            return super().handle_exit(sig, frame)
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        left = await self.lifecycle.drain()
        if left:
            log.warning("grace period over with %d requests still in flight; stopping anyway", left)
        self.should_exit = True

    def reclaim_signals(self) -> None:
        """Ray's init installs its own SIGTERM handler (exit at once); put the draining one back."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self.handle_exit)

    def fatal(self, message: str) -> None:
        log.error("%s; exiting", message)
        self.exit_code = 2
        self.should_exit = True


def _logging(level: str) -> None:
    logger = logging.getLogger("terrazzo.server")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:  [terrazzo] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


def uvicorn_config(app: Any, settings: ServeSettings, host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn with the socket limits of connections.py in place of its own `limit_concurrency` (which counts
    idle sockets, so half-open ones lock real clients out): a head deadline, caps that evict the idlest."""
    lim = settings.limits
    limits = ConnectionLimits(lim.max_connections, lim.max_connections_per_client, lim.header_timeout_s)
    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                         http=limited_protocol(limits), timeout_keep_alive=5,
                         timeout_graceful_shutdown=int(lim.shutdown_grace_s) + 10)
    cfg.connection_limits = limits  # type: ignore[attr-defined]  # for tests and the benchmark to read
    return cfg


def build_server(agent: str | Path, plan: str | Path | None, config: str | Path | None, settings: ServeSettings,
                 backend: str = "local", host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                 **config_overrides: Any) -> DrainingServer:
    """The uvicorn server for one agent, not yet running (tests run it in a thread)."""
    tokens = resolve_tokens(settings, host)
    service = AgentService(agent, plan, config, backend, settings, **config_overrides)
    holder: list[DrainingServer] = []
    app = create_app([service], settings, tokens, on_fatal=lambda msg: holder[0].fatal(msg),
                     on_ready=lambda: holder[0].reclaim_signals())
    server = DrainingServer(uvicorn_config(app, settings, host, port, log_level), app.state.lifecycle)
    holder.append(server)
    return server


def serve_command(agent: str | Path, plan: str | Path | None, config: str | Path | None = None, backend: str = "local",
                  host: str = "127.0.0.1", port: int = 8000, advisory: bool = False, token_env: str | None = None,
                  serve_config: str | Path | None = None, no_auth: bool = False, log_level: str = "info") -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (2 if an agent failed to start)."""
    _logging(log_level)
    settings = load_settings(serve_config, auth={"token_env": token_env, "disabled": True if no_auth else None},
                             controller={"advisory": True if advisory else None})
    server = build_server(agent, plan, config, settings, backend, host, port, log_level)
    svc = next(iter(server.lifecycle.services.values()))
    auth = "off (loopback only)" if settings.auth.disabled else "bearer token"
    log.info("serving agent '%s' on http://%s:%d (%s backend, auth: %s, controller: %s; re-planning %s)", svc.name,
             host, port, backend, auth, svc.controller.mode,
             "available" if svc.controller.replanner else f"off: {svc.controller.replan_off}")
    server.run()
    return server.exit_code
