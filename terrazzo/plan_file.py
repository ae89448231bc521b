"""The plan-file formats and reading them back: the schema names every layer writes or checks, and one
place for the checks and messages every consumer (simulator, runtime, deployment, code generation) needs,
raised as the caller's own layer's exception type.

- `terrazzo.plan/v1`: the planner's result (`terrazzo plan -o`), with its `placement` inside;
- `terrazzo.placement/v1`: bare placements, what the IR's apply-plan pass reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

PLAN_SCHEMA: Final = "terrazzo.plan/v1"
PLACEMENT_SCHEMA: Final = "terrazzo.placement/v1"


def read_plan_json(path: str | Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in `path`, or `error(message)` saying how to write one."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such plan file; write one with `terrazzo plan ... -o {p}`")
    try:
        text = p.read_text()
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{p}: cannot read it ({exc}); pass a plan written by `terrazzo plan -o`") from None
    except json.JSONDecodeError as exc:
        raise error(f"{p}:{exc.lineno}: not JSON ({exc.msg}); pass a plan written by `terrazzo plan -o`") from None
    except RecursionError:
        raise error(f"{p}: nests too deeply to be a plan; pass a plan written by `terrazzo plan -o`") from None
    if not isinstance(doc, dict):
        raise error(f"{p}: expected a JSON object, got {type(doc).__name__}; pass a plan written by `terrazzo plan -o`")
    from terrazzo.plan_checks import plan_problem

    if (problem := plan_problem(doc, text, str(p))) is not None:
        raise error(problem)
    return doc
