"""terrazzo's exceptions: one type per layer, each with a message a user can act on.

They live together so that a layer's error can be raised or caught anywhere without importing that layer.
The runtime's failure kinds (runtime/failures.py) and the HTTP error envelope (server/api_errors.py) carry
behaviour of their own and stay with their layers."""


class TerrazzoError(Exception):
    """Base class; the CLI turns any of these into a one-paragraph message and exit code 2 (1 for
    PlanInfeasible and PlanRejected: the answer is "no")."""


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


class SpecError(LocatedError):
    """A spec file that does not load: its file, line and field, what is wrong, and the fix."""


class CatalogError(TerrazzoError):
    """Unknown name, or a catalog file that does not validate."""


class CostError(TerrazzoError):
    """A cost query that cannot be answered: dtype unsupported, parallelism invalid, nothing fits."""


class IRError(TerrazzoError):
    """Bad IR, a pass that cannot run on its input, or a plan that does not fit: the message says what to do."""


class PlanInfeasible(TerrazzoError):
    """No choice meets the constraints; the message names what binds and by how much."""


class PlanRejected(TerrazzoError):
    """A plan file the independent checker rejects against its recorded inputs (the CLI exits 1)."""


class SimError(TerrazzoError):
    """Bad simulator input (plan, trace, rate, duration); the message names the fix."""


class ProfileError(LocatedError):
    """A profile that cannot be measured, read or applied (bad YAML, missing CUDA, unknown base device)."""


class CodegenError(TerrazzoError):
    """An operator cannot be lowered, compiled or loaded: the message names what and how to fix it."""


class DeployError(TerrazzoError):
    """A plan cannot be turned into cluster files: the message names the file, the field and the fix."""
