"""Servers with one FIFO queue (SimPy's `Resource`), with the busy-time integral that utilisation needs.

Two interfaces to one queue: `acquire(fn, arg)` calls back when a server is free (the simulator's
pools use it: no event objects), and `request()` returns an event for generator processes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from terrazzo.sim.engine import Callback, Environment, Event


class Resource:
    """`capacity` identical servers; whoever asks first is served first."""

    __slots__ = ("_busy_s", "_last_s", "capacity", "env", "queue", "users")

    def __init__(self, env: Environment, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a resource needs at least one server, got {capacity}")
        self.env, self.capacity = env, capacity
        self.users = 0
        self.queue: deque[tuple[Callback, Any]] = deque()
        self._busy_s = 0.0  # ∫ users dt, server-seconds
        self._last_s = env.now

    def _account(self) -> None:
        now = self.env.now
        self._busy_s += self.users * (now - self._last_s)
        self._last_s = now

    def acquire(self, fn: Callback, arg: Any = None) -> None:
        """Call `fn(arg)` as soon as a server is free (now, if one is)."""
        if self.users < self.capacity:
            self._account()
            self.users += 1
            fn(arg)
        else:
            self.queue.append((fn, arg))

    def release(self) -> None:
        """Free a server; the head of the queue, if any, takes it at once."""
        if self.queue:
            fn, arg = self.queue.popleft()
            fn(arg)
        else:
            self._account()
            self.users -= 1

    def request(self) -> Event:
        """An event that fires when a server is granted (release it with `release()`)."""
        ev = Event(self.env)
        self.acquire(Event.succeed, ev)
        return ev

    def busy_s(self) -> float:
        """Server-seconds of service so far (divide by capacity × time for utilisation)."""
        return self._busy_s + self.users * (self.env.now - self._last_s)
