"""Step times from the shipped AIConfigurator tables (catalog/data/aiconfigurator/, made once by
terrazzo/cost/aiconfigurator_tables.py): measured kernels of a (system, backend, version), interpolated
in log space inside the tabulated grid, plus the engine's fitted per-step overhead.

Outside the grid, for another model, dtype or engine version range, there is no table and the fitted
model answers. The estimate's source names both parts:
`measured:aiconfigurator/h100_sxm/trtllm/1.3.0rc20 + fitted:serving_fit.yaml#nvidia/trtllm/>=1.0/dense`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from terrazzo.catalog.catalog_loader import DATA_DIR
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.roofline import Estimate, join_sources
from terrazzo.cost.serving_model import ServingParams, version_range

TABLE_DIR = DATA_DIR / "aiconfigurator"
# catalog device → AIConfigurator system
SYSTEMS = {"a100-80gb-sxm": "a100_sxm", "h100-sxm": "h100_sxm", "h200-sxm": "h200_sxm", "b200": "b200_sxm"}


@dataclass(frozen=True)
class Table:
    source: str
    engine: Engine
    version: str
    tables: dict[str, Any]


@lru_cache(maxsize=1)
def _tables(directory: Path = TABLE_DIR) -> dict[str, list[Table]]:
    out: dict[str, list[Table]] = {}
    for path in sorted(directory.glob("*.yaml")) if directory.exists() else []:
        d = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 5x faster
        out.setdefault(d["system"], []).append(Table(d["source"], Engine(d["backend"]), d["version"], d["tables"]))
    return out


def table_for(device: str, engine: EngineVersion | None) -> Table | None:
    """The table of this device's system for the engine, when its version range matches the table's."""
    system = SYSTEMS.get(device)
    if system is None or engine is None:
        return None
    for t in _tables().get(system, []):
        if t.engine is engine.engine and version_range(t.engine, t.version) == version_range(engine.engine,
                                                                                             engine.version):
            return t
    return None


_ARRAYS: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}  # per table field: (values, logs), made once


def _arrays(grid: dict[str, Any], field: str) -> tuple[np.ndarray, np.ndarray]:
    key = (id(grid), field)  # the tables live for the process (`_tables` is cached), so their ids are stable
    got = _ARRAYS.get(key)
    if got is None:
        vals = np.array(grid[field], dtype=float)
        got = _ARRAYS[key] = (vals, np.log(vals.clip(min=1e-12)))
    return got


def _interp(grid: dict[str, Any], axes: tuple[str, str], at: tuple[float, float], field: str) -> float | None:
    (xs, lx), (ys, ly) = _arrays(grid, axes[0]), _arrays(grid, axes[1])
    x, y = at
    if not (xs[0] <= x <= xs[-1] and ys[0] <= y <= ys[-1]):
        return None
    vals = _arrays(grid, field)[1]
    i = min(int(np.searchsorted(lx, math.log(x), side="right")) - 1, len(xs) - 2)
    j = min(int(np.searchsorted(ly, math.log(y), side="right")) - 1, len(ys) - 2)
    i, j = max(i, 0), max(j, 0)
    wx = (math.log(x) - lx[i]) / (lx[i + 1] - lx[i])
    wy = (math.log(y) - ly[j]) / (ly[j + 1] - ly[j])
    v = ((1 - wx) * (1 - wy) * vals[i, j] + wx * (1 - wy) * vals[i + 1, j] + (1 - wx) * wy * vals[i, j + 1]
         + wx * wy * vals[i + 1, j + 1])
    return float(math.exp(v))


def _chunk(grid: dict[str, Any], tokens: float, sum_sq: float) -> tuple[float, float] | None:
    """(kernels, all-reduce) of prefill chunks of `tokens` tokens in all whose attention spans Σ c² + 2·c·prefix =
    `sum_sq` (chunks behind earlier chunks or a cached prefix: cost.llm prices them as a fraction of a prompt
    of length sum_sq / tokens). The GEMMs and all-reduces are those of a prompt of `tokens` tokens; the
    attention is the measured attention of a prompt with as many causal pairs (√sum_sq tokens): attention
    work is its pairs. None when either prompt is outside the tabulated lengths."""
    at_tokens = (1.0, tokens)
    kernels = _interp(grid, ("batch", "isl"), at_tokens, "kernels_s")
    own = _interp(grid, ("batch", "isl"), at_tokens, "attention_s")
    spans = _interp(grid, ("batch", "isl"), (1.0, math.sqrt(sum_sq)), "attention_s")
    comm = _interp(grid, ("batch", "isl"), at_tokens, "allreduce_s")
    if kernels is None or own is None or spans is None or comm is None:
        return None
    return kernels - own + spans, comm


def measured_step(table: Table, model: str, dtype: str, tp: int, pp: int, phase: str, batch: int, length: float,
                  serving: ServingParams, fitted: Estimate) -> Estimate | None:
    """Kernel time from the table plus the fitted engine overhead, or None outside the table. The kernel
    time is booked as compute or memory as the `fitted` estimate's roofline says, so `bound` still reads."""
    grid = table.tables.get(f"{model}/{dtype}/tp{tp}")
    if grid is None or pp != 1:
        return None
    g, axes = (grid["decode"], ("batch", "context")) if phase == "decode" else (grid["prefill"], ("batch", "isl"))
    kernels: float | None
    comm: float | None
    if phase == "prefill" and batch < 1:
        parts = _chunk(g, batch * length, batch * length * length)
        if parts is None:
            return None
        kernels, comm = parts
    else:
        kernels = _interp(g, axes, (batch, length), "kernels_s")
        comm = _interp(g, axes, (batch, length), "allreduce_s") if tp > 1 else 0.0
    if kernels is None or comm is None:
        return None
    static = serving.step_overhead_s + serving.sequence_overhead_s * batch
    compute, memory = (0.0, kernels) if fitted.memory_s >= fitted.compute_s else (kernels, 0.0)
    return Estimate(compute, memory, comm, static, join_sources(table.source, serving.source), serving.spread(phase))
