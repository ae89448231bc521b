"""Request arrival times: Poisson, bursty gamma renewal (coefficient of variation > 1), or a trace.

Each process yields arrival times in blocks (numpy), so a ten-minute run at 1,000 requests/s never
holds more than one block, and the heap holds one pending arrival at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from terrazzo.errors import SimError
from terrazzo.sim.sampling import stream
from terrazzo.sim.traces import Trace

BLOCK = 8192


def renewal_times(rate_per_s: float, cv: float, duration_s: float, seed: int,
                  ) -> Iterator[tuple[float, tuple[int, int] | None]]:
    """Arrivals of a renewal process with mean rate `rate_per_s` and inter-arrival CV `cv`: exponential
    gaps for cv = 1 (Poisson), gamma gaps with shape 1/cv² otherwise."""
    if rate_per_s <= 0:
        raise SimError(f"arrival rate must be positive, got {rate_per_s:g} requests/s; pass --rate")
    if cv <= 0:
        raise SimError(f"arrival cv must be positive, got {cv:g}")
    rng = stream(seed, "arrivals")
    shape = 1.0 / (cv * cv)
    t = 0.0
    while True:
        gaps = rng.exponential(1.0 / rate_per_s, BLOCK) if cv == 1.0 else rng.gamma(shape, 1.0 / (rate_per_s * shape),
                                                                                        BLOCK)
        for at in (t + np.cumsum(gaps)).tolist():
            if at >= duration_s:
                return
            yield at, None
        t = at


def trace_times(trace: Trace, duration_s: float) -> Iterator[tuple[float, tuple[int, int] | None]]:
    """Replay: each row's time, with its (input, output) tokens for the request's LLM calls."""
    times, isl, osl = trace.arrival_s.tolist(), trace.input_tokens.tolist(), trace.output_tokens.tolist()
    for t, i, o in zip(times, isl, osl, strict=True):
        if t >= duration_s:
            return
        yield t, (int(i), int(o))
