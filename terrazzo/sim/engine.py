"""A small event core in the manner of SimPy: a clock, a heap of timed callbacks, and on top of it
events, timeouts and generator processes.

The hot paths of the simulator use `schedule(delay, fn, arg)` directly (one heap entry, no objects);
the SimPy-style layer (`event`, `timeout`, `process`) is for models written as processes, such as
the queueing-theory checks. Ties break in scheduling order, so a run is a function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from heapq import heapify, heappop, heappush
from typing import Any

Callback = Callable[[Any], object]  # what it returns is ignored


class Environment:
    """Simulated clock `now` (seconds) and the pending callbacks, earliest first."""

    __slots__ = ("_cancelled", "_queue", "_seq", "events", "now")

    def __init__(self, start_s: float = 0.0) -> None:
        self.now = start_s
        self._queue: list[tuple[float, int, Callback, Any]] = []
        self._seq = 0
        self._cancelled = 0  # cancelled timers still on the heap
        self.events = 0  # callbacks run so far, for progress and benchmarks

    def schedule(self, delay_s: float, fn: Callback, arg: Any = None) -> None:
        """Run `fn(arg)` `delay_s` from now."""
        self._seq += 1
        heappush(self._queue, (self.now + delay_s, self._seq, fn, arg))

    def at(self, time_s: float, fn: Callback, arg: Any = None) -> None:
        self._seq += 1
        heappush(self._queue, (max(time_s, self.now), self._seq, fn, arg))

    def timer(self, delay_s: float, fn: Callback, arg: Any = None) -> Timer:
        """Like `schedule`, but cancellable: a batch's planned end that a newcomer moves earlier."""
        t = Timer(self, fn, arg)
        self.schedule(delay_s, _fire, t)
        return t

    def _compact(self) -> None:
        """Drop cancelled timers once they are half the heap, so the heap stays the size of what is live."""
        q = self._queue
        q[:] = [e for e in q if not (e[2] is _fire and e[3].alive is False)]
        heapify(q)
        self._cancelled = 0

    def peek(self) -> float:
        return self._queue[0][0] if self._queue else float("inf")

    def run(self, until_s: float | None = None, on_tick: Callable[[], None] | None = None,
            tick_events: int = 65536) -> None:
        """Process callbacks in time order until none remain or the next is after `until_s`;
        `on_tick` runs every `tick_events` callbacks (progress bars)."""
        queue, pop = self._queue, heappop
        limit = float("inf") if until_s is None else until_s
        n = 0
        while queue and queue[0][0] <= limit:
            t, _, fn, arg = pop(queue)
            self.now = t
            fn(arg)
            n += 1
            if n == tick_events:
                self.events += n
                n = 0
                if on_tick is not None:
                    on_tick()
        self.events += n
        if until_s is not None and self.now < until_s and not queue:
            self.now = until_s

    # SimPy-style layer --------------------------------------------------------------------------

    def event(self) -> Event:
        return Event(self)

    def timeout(self, delay_s: float, value: Any = None) -> Event:
        ev = Event(self)
        ev.value, ev.triggered = value, True
        self.schedule(delay_s, ev._fire)
        return ev

    def process(self, generator: Generator[Event, Any, Any]) -> Process:
        return Process(self, generator)


class Timer:
    """A cancellable callback; `alive` is True while pending, False once cancelled, None once fired."""

    __slots__ = ("alive", "arg", "env", "fn")
    alive: bool | None

    def __init__(self, env: Environment, fn: Callback, arg: Any) -> None:
        self.env, self.fn, self.arg, self.alive = env, fn, arg, True

    def cancel(self) -> None:
        if self.alive:
            self.alive = False
            env = self.env
            env._cancelled += 1
            if env._cancelled > 1024 and 2 * env._cancelled > len(env._queue):
                env._compact()


def _fire(timer: Timer) -> None:
    if timer.alive:
        timer.alive = None
        timer.fn(timer.arg)
    else:
        timer.env._cancelled -= 1


class Event:
    """Something that happens once; callbacks run when it is processed (at its trigger time)."""

    __slots__ = ("callbacks", "env", "triggered", "value")

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.callbacks: list[Callable[[Event], None]] | None = []
        self.value: Any = None
        self.triggered = False

    @property
    def processed(self) -> bool:
        return self.callbacks is None

    def succeed(self, value: Any = None) -> Event:
        if self.triggered:
            raise RuntimeError("an event can be triggered only once")
        self.value, self.triggered = value, True
        self.env.schedule(0.0, self._fire)
        return self

    def add_callback(self, fn: Callable[[Event], None]) -> None:
        if self.callbacks is None:  # already processed: run at once, in order
            self.env.schedule(0.0, fn, self)
        else:
            self.callbacks.append(fn)

    def _fire(self, _: Any = None) -> None:
        callbacks, self.callbacks = self.callbacks, None
        for fn in callbacks or ():
            fn(self)


class Process(Event):
    """Drives a generator that yields events; the process is itself an event that fires with the
    generator's return value."""

    __slots__ = ("_gen",)

    def __init__(self, env: Environment, generator: Generator[Event, Any, Any]) -> None:
        super().__init__(env)
        self._gen = generator
        env.schedule(0.0, self._resume, None)

    def _resume(self, event: Event | None) -> None:
        try:
            target = self._gen.send(None if event is None else event.value)
        except StopIteration as stop:
            self.succeed(stop.value)
            return
        if not isinstance(target, Event):
            raise TypeError(f"a process must yield events, got {type(target).__name__}")
        target.add_callback(self._resume)
