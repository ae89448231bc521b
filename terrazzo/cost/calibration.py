"""Measured latencies inside a profile's range, the fitted roofline outside it.

A profile (terrazzo/profile) measured some op kinds on one device at a grid of points. Between those
points the cost model answers with the fitted roofline times the measured/fitted ratio interpolated
from the neighbouring points (linear in the logarithm of each coordinate): exact at every measured
point, and shaped by the roofline in between, so curvature (attention's quadratic term) is not lost
to straight-line interpolation. Outside the measured range, or for a configuration the profile never
ran (tp or pp above 1, another dtype, another model), the fitted roofline alone answers, and the
estimate's `source` says which of the two it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from terrazzo.catalog.catalog_schema import Device, ModelSpec
from terrazzo.cost.cpu_ops import ann_search, encoder_batch
from terrazzo.cost.roofline import Estimate

PROFILE = "profile:"
Coords = tuple[float, ...]


@dataclass(frozen=True)
class Grid:
    """Measured latency of one op kind at points over named coordinates (batch, context, isl, ...)."""

    file: str
    op: str
    axes: tuple[str, ...]
    measured_s: dict[Coords, float]

    @cached_property
    def values(self) -> tuple[tuple[float, ...], ...]:
        """The measured values along each axis, ascending."""
        return tuple(tuple(sorted({c[i] for c in self.measured_s})) for i in range(len(self.axes)))

    def corners(self, at: Coords) -> list[tuple[Coords, float]] | None:
        """Measured points around `at` with their interpolation weights; None outside the measured range
        or where a corner of the enclosing cell was not measured."""
        per_axis: list[list[tuple[float, float]]] = []
        for x, values in zip(at, self.values, strict=True):
            if x < values[0] or x > values[-1]:
                return None
            if x in values:
                per_axis.append([(x, 1.0)])
                continue
            hi = next(v for v in values if v > x)
            lo = max(v for v in values if v < x)
            w = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
            per_axis.append([(lo, 1.0 - w), (hi, w)])
        out: list[tuple[Coords, float]] = [((), 1.0)]
        for options in per_axis:
            out = [((*c, v), w * wv) for c, w in out for v, wv in options]
        if any(c not in self.measured_s for c, _ in out):
            return None
        return out

    def label(self, corners: Sequence[tuple[Coords, float]]) -> str:
        """'profile:<file>#decode[batch=4..8,context=512]': the points an estimate rests on."""
        spans = []
        for i, axis in enumerate(self.axes):
            vals = sorted({c[i] for c, _ in corners})
            spans.append(f"{axis}={_num(vals[0])}" + (f"..{_num(vals[-1])}" if len(vals) > 1 else ""))
        return f"{PROFILE}{self.file}#{self.op}[{','.join(spans)}]"


def _num(x: float) -> str:
    return f"{x:g}"


def calibrate(est: Estimate, grid: Grid | None, at: Coords, roofline_at: Callable[[Coords], Estimate]) -> Estimate:
    """`est` (the fitted roofline at `at`) scaled by the measured/fitted ratio of the surrounding points,
    keeping its breakdown (so `bound` still says what dominates); `est` itself outside the grid."""
    corners = grid.corners(at) if grid is not None else None
    if grid is None or corners is None:
        return est
    ratio = sum(w * grid.measured_s[c] / roofline_at(c).latency_s for c, w in corners)
    return replace(est.scaled(ratio), source=grid.label(corners), spread=(1.0, 1.0))  # measured here


@dataclass(frozen=True)
class Calibration:
    """One profile as layered over a catalog: the device its points belong to and, per op kind, the model
    (or index) they were measured with. Built by terrazzo.profile.layer; read by the cost functions."""

    file: str
    device: str
    machine: str = ""  # the profile's hostname hash and identity
    defines_device: bool = False
    llm_model: str | None = None
    llm_dtype: str | None = None
    embed_model: str | None = None
    embed_dtype: str | None = None
    grids: dict[str, Grid] = field(default_factory=dict)  # prefill, decode, embed, ann:<dimension>


def _calibrations(catalog: Any, device: str) -> list[Calibration]:
    """Profiles layered for `device`, the last layered first (it wins)."""
    return [c for c in reversed(getattr(catalog, "profiles", ())) if c.device == device]


@dataclass(frozen=True)
class LlmCalibration:
    """Prefill and decode points of one model in one dtype on one device (a single device: tp = pp = 1).

    It knows nothing of the LLM cost functions: the caller (terrazzo.cost.llm) passes the fitted estimate
    and a function giving it at any grid point, so this module never imports llm.py."""

    dtype: str
    prefill_grid: Grid | None
    decode_grid: Grid | None

    def applies(self, tp: int, pp: int, dtype: str, kv_dtype: str | None) -> bool:
        return tp == 1 and pp == 1 and dtype == self.dtype and kv_dtype in (None, self.dtype)

    def prefill(self, est: Estimate, batch: int, isl: int, roofline_at: Callable[[Coords], Estimate]) -> Estimate:
        """Axes (batch, isl)."""
        return calibrate(est, self.prefill_grid, (float(batch), float(isl)), roofline_at)

    def decode(self, est: Estimate, batch: int, context: float, roofline_at: Callable[[Coords], Estimate]) -> Estimate:
        """Axes (batch, context)."""
        return calibrate(est, self.decode_grid, (float(batch), float(context)), roofline_at)


def llm_calibration(catalog: Any, device: str, model: str, dtype: str) -> LlmCalibration | None:
    """The measured prefill/decode points of `model` in `dtype` on `device`, if a layered profile has them."""
    for cal in _calibrations(catalog, device):
        if cal.llm_model == model and cal.llm_dtype == dtype:
            return LlmCalibration(dtype, cal.grids.get("prefill"), cal.grids.get("decode"))
    return None


def embed_grid(catalog: Any, device: str, model: str, dtype: str) -> Grid | None:
    """Measured embedding latency (axes: texts, tokens_per_text) of `model` on `device`."""
    for cal in _calibrations(catalog, device):
        if cal.embed_model == model and cal.embed_dtype == dtype and "embed" in cal.grids:
            return cal.grids["embed"]
    return None


def ann_grid(catalog: Any, device: str, dimension: int, index: str) -> Grid | None:
    """Measured search latency (axes: vectors, k) of one query on a `index` index of `dimension`."""
    for cal in _calibrations(catalog, device):
        grid = cal.grids.get(f"ann:{index}:{dimension}")
        if grid is not None:
            return grid
    return None


def embed_estimate(catalog: Any, device: Device, model: ModelSpec, tokens: float, dtype: str,
                   texts: int = 1) -> Estimate:
    """`texts` texts of `tokens` tokens through an embedding model: measured inside a profile's range."""
    eff = catalog.efficiency_for(device.name, "embed")
    est = encoder_batch(model, device, eff, texts, tokens, dtype)
    return calibrate(est, embed_grid(catalog, device.name, model.name, dtype), (float(texts), float(tokens)),
                     lambda c: encoder_batch(model, device, eff, int(c[0]), c[1], dtype))


def ann_estimate(catalog: Any, device: Device, vectors: int, dimension: int, k: int, index: str) -> Estimate:
    """One query's nearest-neighbour search: measured inside a profile's range."""
    eff = catalog.efficiency_for(device.name, "ann_search")
    est = ann_search(device, eff, vectors, dimension, k, index)
    return calibrate(est, ann_grid(catalog, device.name, dimension, index), (float(vectors), float(k)),
                     lambda c: ann_search(device, eff, int(c[0]), dimension, int(c[1]), index))
