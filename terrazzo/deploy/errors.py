"""The deployment layer's one exception type."""

from __future__ import annotations

from terrazzo.errors import TerrazzoError


class DeployError(TerrazzoError):
    """A plan cannot be turned into cluster files: the message names the file, the field and the fix."""
