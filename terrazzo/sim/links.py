"""A network link whose bandwidth concurrent transfers share equally (egalitarian processor sharing).

Each transfer takes `latency_s` (propagation, not shared) plus its bytes at bw/n while n transfers
are in flight. The link keeps a virtual clock V, the bytes each active transfer has received so far,
which advances at bw/n; a transfer of b bytes that started at V0 ends when V reaches V0 + b. So a
start or an end costs O(log n) and only the earliest end is ever on the event heap.

Most transfers find the link idle and finish before the next one starts. Such a transfer costs one
event (its delivery, bytes/bw + latency later); should another start while it is still sending, it
joins the shared set with the bytes it has left and its delivery is cancelled.
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Any

from terrazzo.sim.engine import Callback, Environment, Timer

_EPS_BYTES = 1e-6
FN, ARG, TIMER, END, START = range(5)  # fields of a lone transfer's record


class Link:
    __slots__ = ("_active", "_busy_s", "_last_s", "_seq", "_solo", "_timer", "_vbytes", "bw_bytes_s", "bytes_total",
                 "env", "latency_s", "name", "transfers")

    def __init__(self, env: Environment, name: str, bw_bytes_s: float, latency_s: float) -> None:
        if bw_bytes_s <= 0:
            raise ValueError(f"link {name}: bandwidth must be positive, got {bw_bytes_s}")
        self.env, self.name, self.bw_bytes_s, self.latency_s = env, name, bw_bytes_s, latency_s
        self._active: list[tuple[float, int, Callback, Any]] = []  # shared set: (virtual end, seq, fn, arg)
        self._solo: list | None = None  # a transfer sending alone: [fn, arg, delivery timer, end, start]
        self._timer: Timer | None = None  # the shared set's next end
        self._vbytes = 0.0
        self._last_s = env.now
        self._busy_s = 0.0
        self._seq = 0
        self.transfers = 0
        self.bytes_total = 0.0

    def send(self, n_bytes: float, fn: Callback, arg: Any = None) -> None:
        """Deliver `n_bytes`, then call `fn(arg)` at the far end."""
        self.transfers += 1
        self.bytes_total += n_bytes
        env = self.env
        if n_bytes <= 0:
            env.schedule(self.latency_s, fn, arg)
            return
        now = env.now
        solo = self._solo
        if solo is not None:
            self._solo = None
            if solo[END] > now:  # still sending: from now on it shares the link with the newcomer
                solo[TIMER].cancel()
                solo[TIMER] = None  # no cycle record ↔ timer: reference counting frees both
                self._busy_s += now - solo[START]
                self._last_s = now
                self._seq += 1
                heappush(self._active, (self._vbytes + (solo[END] - now) * self.bw_bytes_s, self._seq, solo[FN],
                                        solo[ARG]))
            else:  # its bytes are through; its delivery stays on the heap
                self._busy_s += solo[END] - solo[START]
        if not self._active:
            dt = n_bytes / self.bw_bytes_s
            record = [fn, arg, None, now + dt, now]
            record[TIMER] = env.timer(dt + self.latency_s, self._deliver, record)
            self._solo = record
            return
        self._advance()
        self._seq += 1
        heappush(self._active, (self._vbytes + n_bytes, self._seq, fn, arg))
        self._reschedule()

    def _deliver(self, record: list) -> None:
        record[TIMER] = None
        if self._solo is record:
            self._solo = None
            self._busy_s += record[END] - record[START]
        record[FN](record[ARG])

    def _advance(self) -> None:
        now = self.env.now
        n = len(self._active)
        if n:
            dt = now - self._last_s
            self._vbytes += dt * self.bw_bytes_s / n
            self._busy_s += dt
        self._last_s = now

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()  # superseded by this start or end
            self._timer = None
        if self._active:
            left = self._active[0][0] - self._vbytes
            self._timer = self.env.timer((left if left > 0 else 0.0) * len(self._active) / self.bw_bytes_s,
                                         self._complete)

    def _complete(self, _: Any = None) -> None:
        self._timer = None
        self._advance()
        active, env, latency = self._active, self.env, self.latency_s
        if active[0][0] > self._vbytes:
            self._vbytes = active[0][0]  # this event is the head's end, whatever the rounding
        limit = self._vbytes * (1 + 1e-12) + _EPS_BYTES
        while active and active[0][0] <= limit:
            _, _, fn, arg = heappop(active)
            env.schedule(latency, fn, arg)
        if not active:
            self._vbytes = 0.0  # restart the virtual clock when idle, so it never grows large
        self._reschedule()

    @property
    def in_flight(self) -> int:
        return len(self._active) + (self._solo is not None and self._solo[END] > self.env.now)

    def busy_s(self) -> float:
        """Seconds with at least one transfer sending."""
        now = self.env.now
        busy = self._busy_s + (now - self._last_s if self._active else 0.0)
        if self._solo is not None:
            busy += min(now, self._solo[END]) - self._solo[START]
        return busy
