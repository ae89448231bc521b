"""Socket-level limits uvicorn lacks: a deadline for a request's head, and caps on open sockets (in all and
per client address) that close the idlest socket rather than refuse the newcomer.

Why evict instead of refuse: an idle or half-open socket costs an attacker nothing, so with a plain cap
(uvicorn's `limit_concurrency`) a few hundred of them lock every real client out. Here a socket that holds
no request (its head not yet complete, or idle between keep-alive requests) is evictable, oldest first;
one that is running a request never is. A real client sends its head at once, so it is never the oldest
evictable socket for long; a slowloris socket is, and also dies at `header_timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

_REFUSED_BODY = (b'{"error": {"message": "too many open connections, all running requests", '
                 b'"type": "unavailable_error", "code": "connection_limit", "fix": "retry shortly"}}')
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"retry-after: 1\r\ncontent-length: %d\r\n\r\n" % len(_REFUSED_BODY)) + _REFUSED_BODY


class ConnectionLimits:
    """Shared by every connection of one server: who is open, and which of them hold no request."""

    def __init__(self, max_connections: int, max_per_client: int, header_timeout_s: float) -> None:
        self.max_connections, self.max_per_client, self.header_timeout_s = max_connections, max_per_client, \
            header_timeout_s
        self.open: dict[Any, str] = {}                   # protocol -> client address
        self.per_client: dict[str, int] = {}
        self.idle: OrderedDict[Any, None] = OrderedDict()  # evictable, oldest first
        self.evicted = self.refused = self.timed_out = 0

    def admit(self, conn: Any, client: str) -> bool:
        """Make room for a new socket (closing the oldest idle one over a cap); False: refuse it."""
        if self.per_client.get(client, 0) >= self.max_per_client and not self._evict(client):
            self.refused += 1
            return False
        if len(self.open) >= self.max_connections and not self._evict(None):
            self.refused += 1
            return False
        self.open[conn] = client
        self.per_client[client] = self.per_client.get(client, 0) + 1
        self.idle[conn] = None
        return True

    def _evict(self, client: str | None) -> bool:
        for conn in self.idle:
            if client is None or self.open.get(conn) == client:
                self.evicted += 1
                conn.close_idle()  # drops it from the tables at once
                return True
        return False

    def drop(self, conn: Any) -> None:
        client = self.open.pop(conn, None)
        self.idle.pop(conn, None)
        if client is not None:
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]


def limited_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the limits above (pass as `http=` to uvicorn.Config)."""

    class LimitedH11Protocol(H11Protocol):
        _limits = limits

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            client = self.client[0] if self.client else "?"
            if not self._limits.admit(self, client):
                transport.write(_REFUSED)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            if self in self._limits.idle and not self.transport.is_closing():
                self._limits.timed_out += 1
                self.close_idle()

        def close_idle(self) -> None:
            self._limits.drop(self)
            self._disarm()
            self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete and self in self._limits.idle:
                self._limits.idle.pop(self, None)  # a request's head arrived: it runs, not evictable
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self in self._limits.open and not self.transport.is_closing() and \
                    (self.cycle is None or self.cycle.response_complete):
                self._limits.idle[self] = None  # idle between keep-alive requests: the newest evictable
                self._disarm()
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._limits.drop(self)
            self._disarm()
            super().connection_lost(exc)

    return LimitedH11Protocol
