"""Range and type checks on a plan file's fields, shared by every reader (plan_file.read_plan_json), so a
hand-edited or truncated plan fails as `file:line: field: what is wrong` before the simulator, the
runtime or `deploy` index into it. Only fields that are present are checked; each reader still says
which fields it needs."""

from __future__ import annotations

import math
from typing import Any

import yaml

from terrazzo.limits import MAX_DEVICES, MAX_RATE_PER_S

_COUNTS = ("tp", "pp", "batch", "replicas", "devices")                   # whole numbers >= 1
_AMOUNTS = ("latency_s", "finish_s", "visits", "usd_h", "share")          # finite, >= 0
_NAMES = ("name", "kind", "node", "device", "pool", "engine", "engine_version")
_TOP_AMOUNTS = ("rate_per_s", "deadline_s", "tco_usd_h", "usd_per_request", "usd_per_m_output_tokens",
                "e2e_latency_s")
MAX_COUNT = MAX_DEVICES


def _lines(text: str) -> dict[tuple[Any, ...], int]:
    """1-based line of each key and item (JSON is YAML, so the YAML composer can locate it); {} on failure."""
    out: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, loc: tuple[Any, ...]) -> None:
        out.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    out[(*loc, key.value)] = key.start_mark.line + 1
                    walk(value, (*loc, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            walk(node, ())
    except (yaml.YAMLError, RecursionError):
        return {}
    return out


def plan_problem(doc: dict[str, Any], text: str, path: str) -> str | None:
    """The first problem as `path:line: field: what. Fix: ...`, or None when the fields are in range."""
    found = _first(doc)
    if found is None:
        return None
    loc, what = found
    lines = _lines(text)
    line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
    where = f"{path}:{line}" if line is not None else path
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return f"{where}: {field}: {what}. Fix: re-plan with `terrazzo plan ... -o {path}`, or correct the value"


def _first(doc: dict[str, Any]) -> tuple[tuple[Any, ...], str] | None:
    for key in ("schema", "agent", "solver_status"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            return (key,), f"expected a string, got {doc[key]!r:.40}"
    for key in ("inputs", "placement"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            return (key,), f"expected a mapping, got {type(doc[key]).__name__}"
    for key, value in (doc.get("inputs") or {}).items():
        if value is not None and not isinstance(value, str | list):
            return ("inputs", key), f"expected a file path, got {value!r:.40}"
    for key in _TOP_AMOUNTS:
        if key in doc and (bad := _amount(doc[key], MAX_RATE_PER_S if key == "rate_per_s" else None)):
            return (key,), bad
    ops = doc.get("ops")
    if ops is not None:
        if not isinstance(ops, list):
            return ("ops",), f"expected a list of ops, got {type(ops).__name__}"
        for i, op in enumerate(ops):
            if (found := _entry(op)) is not None:
                return ("ops", i, *found[0]), found[1]
    placed = doc.get("placement", {}).get("placements") if isinstance(doc.get("placement"), dict) else None
    for loc, table in ((("placements",), doc.get("placements")), (("placement", "placements"), placed)):
        if table is None:
            continue
        if not isinstance(table, dict):
            return loc, f"expected a mapping of op: placement, got {type(table).__name__}"
        for name, entry in table.items():
            if (found := _entry(entry, named=False)) is not None:
                return (*loc, name, *found[0]), found[1]
    return None


def _entry(op: Any, named: bool = True) -> tuple[tuple[Any, ...], str] | None:
    if not isinstance(op, dict):
        return (), f"expected an object with name, device, pool, ..., got {type(op).__name__} {op!r:.40}"
    if named and not isinstance(op.get("name"), str):
        return ("name",), "missing, or not a string"
    for key in _NAMES:
        if key in op and op[key] is not None and (not isinstance(op[key], str) or not op[key].strip()):
            return (key,), f"expected a non-empty string, got {op[key]!r:.40}"
    for key in _COUNTS:
        if key in op:
            v = op[key]
            if isinstance(v, bool) or not isinstance(v, int):
                return (key,), f"expected a whole number, got {v!r:.40}"
            if not 1 <= v <= MAX_COUNT:
                return (key,), f"{v} is out of range: it must be between 1 and {MAX_COUNT}"
    for key in _AMOUNTS:
        if key in op and op[key] is not None and (bad := _amount(op[key], None)):
            return (key,), bad
    return None


def _amount(v: Any, limit: float | None) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"expected a number, got {v!r:.40}"
    if not math.isfinite(v) or v < 0:
        return f"{v} is not a finite number at least 0"
    if limit is not None and v > limit:
        return f"{v:g} is over the limit of {limit:g}"
    return None
