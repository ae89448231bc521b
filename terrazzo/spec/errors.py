"""The spec layer's one exception: where the problem is (file, line, field), what it is, and the fix."""

from __future__ import annotations

from terrazzo.errors import LocatedError


class SpecError(LocatedError):
    """A spec file that does not load: its file, line and field, what is wrong, and the fix."""
