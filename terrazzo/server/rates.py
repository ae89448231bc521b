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
