"""The profile layer's one exception: which file, line and field is wrong, what is wrong, and the fix."""

from __future__ import annotations

from terrazzo.errors import TerrazzoError


class ProfileError(TerrazzoError):
    """A profile that cannot be measured, read or applied (bad YAML, missing CUDA, unknown base device)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.message, self.file, self.line, self.field, self.fix = message, file, line, field, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        head = f"{where}: " if where else ""
        field = f"{self.field}: " if self.field else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{head}{field}{self.message.rstrip('.')}.{fix}"
