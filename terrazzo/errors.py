"""Root of terrazzo's exceptions: each layer raises one subclass with an actionable message."""


class TerrazzoError(Exception):
    """Base class; the CLI turns any of these into a one-paragraph message and exit code 2."""


class LocatedError(TerrazzoError):
    """An error in a file the user wrote: `file:line: field: what. Fix: how` (spec and profile layers)."""

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
