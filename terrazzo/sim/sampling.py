"""Random streams: one generator per named quantity, drawn in numpy blocks and handed out one at a time.

A stream's seed is (run seed, CRC of its name), so adding a node or a pool never shifts the draws of
another: two runs differ only where their models differ, and a run is a function of its seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from terrazzo.spec.distributions import Dist

BLOCK = 4096


def stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


class Draws:
    """Callable that returns the next value of a stream; numpy fills `BLOCK` values at a time."""

    __slots__ = ("_buf", "_fill", "_i")

    def __init__(self, fill: Callable[[int], np.ndarray]) -> None:
        self._fill = fill
        self._buf: list[float] = []
        self._i = 0

    def __call__(self) -> float:
        i = self._i
        if i >= len(self._buf):
            self._buf = self._fill(BLOCK).tolist()
            i = 0
        self._i = i + 1
        return self._buf[i]


def dist_draws(dist: Dist, seed: int, name: str) -> Draws:
    if dist.dist == "fixed":
        value = dist.expected
        return Draws(lambda n: np.full(n, value))
    rng = stream(seed, name)
    return Draws(lambda n: dist.sample(rng, n))


def token_draws(dist: Dist, seed: int, name: str) -> Draws:
    """Token counts: whole numbers, at least one."""
    if dist.dist == "fixed":
        value = float(max(1, round(dist.expected)))
        return Draws(lambda n: np.full(n, value))
    rng = stream(seed, name)
    return Draws(lambda n: np.maximum(np.rint(dist.sample(rng, n)), 1.0))


def uniform_draws(seed: int, name: str) -> Draws:
    rng = stream(seed, name)
    return Draws(rng.random)
