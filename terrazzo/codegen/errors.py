"""The code-generation layer's one exception type."""

from __future__ import annotations

from terrazzo.errors import TerrazzoError


class CodegenError(TerrazzoError):
    """An operator cannot be lowered, compiled or loaded: the message names what and how to fix it."""
