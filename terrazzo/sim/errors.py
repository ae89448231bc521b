"""The simulator's one exception: what went wrong with a plan, trace or run, and what to do about it."""

from __future__ import annotations

from terrazzo.errors import TerrazzoError


class SimError(TerrazzoError):
    """Bad simulator input (plan, trace, rate, duration); the message names the fix."""
