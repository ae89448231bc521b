"""How every `terrazzo` command prints: one console whose tables never truncate when piped, JSON that
scripts can parse, and the documented exit codes.

Commands call these helpers instead of formatting output themselves, so the conventions hold for
commands added later without touching their bodies:
- `console.print(table)` on a pipe or file widens the console to the table's natural width (a terminal
  keeps rich's wrapping), so `terrazzo hw list | cat` shows every name and price in full;
- `emit_json(doc)` prints strict JSON (NaN and ±inf as null, paths and dataclasses as plain values);
- `exit_code(exc)` maps an error to 0 ok, 1 "the answer is no" (SLA missed, infeasible, checker
  rejects), 2 usage or input error.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from terrazzo.errors import PlanInfeasible, PlanRejected, TerrazzoError

EXIT_OK, EXIT_NO, EXIT_USAGE = 0, 1, 2
_WIDE = 100_000  # measuring width: wide enough for any table's natural size

JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")]


class CliConsole(Console):
    """A rich console that, when not writing to a terminal, prints each table at its natural width."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.is_terminal or "width" in kwargs:
            super().print(*objects, **kwargs)
            return
        tables = [o for o in objects if isinstance(o, Table)]
        need = max((Measurement.get(self, self.options.update_width(_WIDE), t).maximum for t in tables), default=0)
        if not tables:
            kwargs.setdefault("soft_wrap", True)  # plain lines: no hard breaks inserted at column 80
        if need <= self.width:
            super().print(*objects, **kwargs)
            return
        width = self.width
        self.width = need
        try:
            super().print(*objects, **kwargs)
        finally:
            self.width = width


def make_console(stderr: bool = False) -> CliConsole:
    return CliConsole(stderr=stderr)


console = make_console()
err_console = make_console(stderr=True)


def plain(value: Any) -> Any:
    """`value` as strict-JSON data: dataclasses and pydantic models as dicts, paths as strings, enums by
    value, NaN and infinities as None (json.dumps would write NaN, which JSON parsers reject)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if hasattr(value, "model_dump"):
        return plain(value.model_dump(mode="json", exclude_none=True))
    if hasattr(value, "to_json") and callable(value.to_json):
        return plain(value.to_json())
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return plain(value.item())
    return value


def emit_json(doc: Any) -> None:
    """Print `doc` as indented strict JSON on stdout (nothing else goes to stdout under --json)."""
    sys.stdout.write(json.dumps(plain(doc), indent=2) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A remark for the person at the terminal: stderr, so that --json stdout stays parseable."""
    err_console.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def print_answers(requests: Iterable[Any]) -> None:
    """Each request's input and the agent's answer (or its error), after the timing table."""
    for r in requests:
        answer = escape(r.text) if r.ok else f"[red]failed[/]: {escape(r.error or 'unknown error')}"
        console.print(f"[bold]{escape(r.input)}[/]\n  → {answer}", highlight=False)


def verdict(ok: bool | None) -> None:
    """End a command that answered "no" (SLA missed, infeasible) with exit code 1, after its output."""
    if ok is False:
        raise typer.Exit(EXIT_NO)


def exit_code(exc: BaseException) -> int:
    """1 when the answer is "no" (infeasible, SLA missed); 2 for any other usage or input error."""
    return EXIT_NO if isinstance(exc, PlanInfeasible | PlanRejected) else EXIT_USAGE


def fail(exc: TerrazzoError) -> int:
    """Print a terrazzo error as one paragraph on stderr; returns its exit code."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return exit_code(exc)


def version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version  # the installed distribution's; terrazzo.__version__ matches it

        sys.stdout.write(f"terrazzo {version('terrazzo')}\n")
        raise typer.Exit(EXIT_OK)


VersionOpt = Annotated[
    bool | None,
    typer.Option("--version", callback=version_callback, is_eager=True, help="print the version and exit"),
]

EXIT_CODES_HELP = ("Exit codes: 0 ok; 1 the answer is no (SLA missed, infeasible, plan rejected); "
                   "2 usage or input error.")
