"""The profile layer's one exception: which file, line and field is wrong, what is wrong, and the fix."""

from __future__ import annotations

from terrazzo.errors import LocatedError


class ProfileError(LocatedError):
    """A profile that cannot be measured, read or applied (bad YAML, missing CUDA, unknown base device)."""
