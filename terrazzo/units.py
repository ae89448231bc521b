"""Quantities with units at the edges: specs may say "300 ms" or "2 KiB"; inside, everything is SI.

A field's name carries its unit (`latency_s`, `data_bytes`, `bw_gbit_s`): a bare number is read in
that unit, a string must carry a unit of the same dimension or it is refused.
"""

from __future__ import annotations

import re

_SCALES: dict[str, dict[str, float]] = {
    "time": {"s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0},
    "bytes": {
        "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
        "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30, "tib": 2.0**40,
    },
    "bits_per_s": {"bit/s": 1.0, "kbit/s": 1e3, "mbit/s": 1e6, "gbit/s": 1e9, "gb/s": 1e9, "gbps": 1e9, "tbit/s": 1e12},
    "bytes_per_s": {"byte/s": 1.0, "kbyte/s": 1e3, "mbyte/s": 1e6, "gbyte/s": 1e9, "gib/s": 2.0**30, "tbyte/s": 1e12},
    "rate": {"/s": 1.0, "rps": 1.0, "/min": 1 / 60.0, "rpm": 1 / 60.0, "/h": 1 / 3600.0},
    "tokens": {"tok": 1.0, "tokens": 1.0, "k": 1e3, "ktok": 1e3},
}

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\d\s].*?)?\s*$")


class UnitError(ValueError):
    """A quantity whose unit is missing, unknown or of the wrong dimension (the spec layer wraps it)."""


def parse_quantity(raw: object, dimension: str, field_unit: str) -> float:
    """Value of `raw` in the field's own unit `field_unit` (one of `_SCALES[dimension]`)."""
    if isinstance(raw, bool):
        raise UnitError(f"expected a number of {field_unit} or a string such as '10 {field_unit}', got {raw!r}")
    if isinstance(raw, int | float):
        return float(raw)
    if not isinstance(raw, str):
        raise UnitError(f"expected a number of {field_unit}, got {type(raw).__name__} {raw!r}")
    match = _QUANTITY.match(raw)
    if not match:
        raise UnitError(f"cannot read {raw!r} as a quantity; write a number of {field_unit}, e.g. '12 {field_unit}'")
    number, unit = float(match.group(1)), (match.group(2) or field_unit).strip()
    scales = _SCALES[dimension]
    key = re.sub(r"(?<=[kKmMgGtT])B/s$", "byte/s", unit).lower()  # GB/s is bytes, Gb/s bits
    if key not in scales:
        other = next((d for d, s in _SCALES.items() if key in s), None)
        hint = f"{unit!r} is a unit of {other}" if other else f"unknown unit {unit!r}"
        raise UnitError(f"{hint}; this field takes {dimension} (units: {', '.join(scales)})")
    return number * scales[key] / scales[field_unit.lower()]
