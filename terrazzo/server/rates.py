"""Sliding-window measurements with the clock passed in, so admission and the controller measure the
same way and their arithmetic can be tested without waiting."""

from __future__ import annotations

from collections import deque


class RateMeter:
    """Events per second over the last `window_s` (or since `start_s`, if that is shorter)."""

    def __init__(self, window_s: float, start_s: float) -> None:
        self.window_s, self.start_s = window_s, start_s
        self._times: deque[float] = deque()

    def add(self, now_s: float, n: int = 1) -> None:
        self._times.extend([now_s] * n)
        self._trim(now_s)

    def _trim(self, now_s: float) -> None:
        while self._times and self._times[0] <= now_s - self.window_s:
            self._times.popleft()

    def observed_s(self, now_s: float) -> float:
        return max(min(self.window_s, now_s - self.start_s), 0.0)

    def count(self, now_s: float) -> int:
        self._trim(now_s)
        return len(self._times)

    def rate(self, now_s: float) -> float:
        span = self.observed_s(now_s)
        return self.count(now_s) / span if span > 0 else 0.0


class Window:
    """Values seen in the last `window_s` seconds (latencies), with quantiles over them."""

    def __init__(self, window_s: float, max_values: int = 10_000) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque(maxlen=max_values)

    def add(self, now_s: float, value: float) -> None:
        self._items.append((now_s, value))

    def values(self, now_s: float) -> list[float]:
        while self._items and self._items[0][0] <= now_s - self.window_s:
            self._items.popleft()
        return [v for _, v in self._items]

    def quantile(self, now_s: float, q: float) -> float | None:
        xs = sorted(self.values(now_s))
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else None

    def mean(self, now_s: float) -> float | None:
        xs = self.values(now_s)
        return sum(xs) / len(xs) if xs else None


class BusyTime:
    """Seconds within the last `window_s` during which something was in flight: the denominator of a drain
    rate, so an idle spell before a burst does not dilute how fast the burst drains."""

    def __init__(self, window_s: float, max_spells: int = 10_000) -> None:
        self.window_s = window_s
        self._spells: deque[tuple[float, float]] = deque(maxlen=max_spells)
        self._since: float | None = None

    def start(self, now_s: float) -> None:
        if self._since is None:
            self._since = now_s

    def stop(self, now_s: float) -> None:
        if self._since is not None:
            self._spells.append((self._since, now_s))
            self._since = None

    def seconds(self, now_s: float) -> float:
        cut = now_s - self.window_s
        while self._spells and self._spells[0][1] <= cut:
            self._spells.popleft()
        total = sum(end - max(start, cut) for start, end in self._spells)
        return total + (now_s - max(self._since, cut) if self._since is not None else 0.0)
