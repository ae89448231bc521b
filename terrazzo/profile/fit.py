"""Fit the roofline's factors to measured points: η_compute, η_memory and the static latency per op
kind, and α–β per transfer path, by least squares on relative error.

Each point's work (FLOPs, bytes) comes from the same cost functions the planner uses, evaluated with
unit efficiency, so a fitted factor plugs straight back into them. The model
t = max(a·C, b·M) + s (C, M: compute and memory time at the device's peaks; a = 1/η_c, b = 1/η_m)
is piecewise linear, so the fit scans a logarithmic grid of (a, b), solves s in closed form for each,
and zooms in around the best cell. Fitted factors may exceed 1 (catalog.schema.Efficiency says why).
A factor whose term binds at no measured point is not determined by the data: it keeps the catalog
default when that is consistent with the points, else the nearest value that still does not bind
(`fitted` lists the factors the data did determine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from terrazzo.catalog.catalog_schema import MAX_FITTED_EFFICIENCY, Device, Efficiency, ModelSpec
from terrazzo.cost.cpu_ops import ann_search, encoder_batch
from terrazzo.cost.llm import Deployment, decode_roofline, prefill_roofline
from terrazzo.profile.profile_file import AnnPoint, DecodePoint, EmbedPoint, LinkFit, OpFit, PrefillPoint

UNIT = Efficiency(compute=1.0, memory=1.0, network=1.0, static_latency_s=0.0,
                  source="derived: unit factors, so a step's time is its work at the device's peaks")
MIN_EFFICIENCY = 1e-3  # factors are searched in [MIN_EFFICIENCY, MAX_FITTED_EFFICIENCY]
GRID = 90
# Weight of the pull towards the defaults, against the sum of squared relative errors: where the data
# fix a factor, moving it by 10 % costs far more than this; where they do not (a term that never binds,
# compute and memory time proportional at every point, as in a flat index scan), it picks the default.
PRIOR_WEIGHT = 1e-6
ZOOMS = 4
Terms = np.ndarray  # shape (n, 2): compute_s and memory_s of each point at unit efficiency


def llm_terms(model: ModelSpec, device: Device, dtype: str, points: Sequence[PrefillPoint | DecodePoint]) -> Terms:
    dep = Deployment(model=model, device=device, dtype=dtype, prefill_eff=UNIT, decode_eff=UNIT)
    ests = [prefill_roofline(dep, p.isl, p.batch) if isinstance(p, PrefillPoint)
            else decode_roofline(dep, p.batch, p.context) for p in points]
    return np.array([[e.compute_s, e.memory_s] for e in ests])


def embed_terms(model: ModelSpec, device: Device, dtype: str, points: Sequence[EmbedPoint]) -> Terms:
    ests = [encoder_batch(model, device, UNIT, p.texts, p.tokens_per_text, dtype) for p in points]
    return np.array([[e.compute_s, e.memory_s] for e in ests])


def ann_terms(device: Device, points: Sequence[AnnPoint]) -> Terms:
    ests = [ann_search(device, UNIT, p.vectors, p.dimension, p.k, p.index, p.queries) for p in points]
    return np.array([[e.compute_s, e.memory_s] for e in ests])


def predict(fit: OpFit | Efficiency, terms: Terms) -> np.ndarray:
    """The roofline with fitted factors at each point (same arithmetic as cost.roofline)."""
    return np.maximum(terms[:, 0] / fit.compute, terms[:, 1] / fit.memory) + fit.static_latency_s


def _scan(terms: Terms, t: np.ndarray, a: np.ndarray, b: np.ndarray, prior: tuple[float, float]
          ) -> tuple[float, float, float, float]:
    """Best (loss, a, b, s) over the grid a × b, with s ≥ 0 solved for each pair. A faint pull towards the
    catalog defaults (`prior`) only decides between fits the points cannot tell apart."""
    w = 1.0 / t**2
    model = np.maximum(a[:, None, None] * terms[None, None, :, 0], b[None, :, None] * terms[None, None, :, 1])
    s = np.clip(((t - model) * w).sum(-1) / w.sum(), 0.0, None)
    loss = ((((model + s[..., None]) - t) / t) ** 2).sum(-1)
    loss += PRIOR_WEIGHT * ((np.log(a / prior[0]) ** 2)[:, None] + (np.log(b / prior[1]) ** 2)[None, :])
    i, j = np.unravel_index(np.argmin(loss), loss.shape)
    return float(loss[i, j]), float(a[i]), float(b[j]), float(s[i, j])


def _static(terms: Terms, t: np.ndarray, a: float, b: float) -> float:
    w = 1.0 / t**2
    model = np.maximum(a * terms[:, 0], b * terms[:, 1])
    return max(0.0, float(((t - model) * w).sum() / w.sum()))


def fit_roofline(terms: Terms, measured_s: Sequence[float], default: Efficiency) -> OpFit:
    """Least-squares (relative error) factors for points with unit-efficiency `terms` and `measured_s`."""
    t = np.asarray(measured_s, dtype=float)
    lo, hi = np.log(1 / MAX_FITTED_EFFICIENCY), np.log(1 / MIN_EFFICIENCY)
    la = lb = (lo, hi)
    best = (np.inf, 1.0, 1.0, 0.0)
    for _ in range(ZOOMS):
        a, b = np.exp(np.linspace(*la, GRID)), np.exp(np.linspace(*lb, GRID))
        best = min(best, _scan(terms, t, a, b, (1 / default.compute, 1 / default.memory)))
        step_a, step_b = (la[1] - la[0]) / (GRID - 1), (lb[1] - lb[0]) / (GRID - 1)
        ca, cb = np.log(best[1]), np.log(best[2])
        la = (max(lo, ca - 2 * step_a), min(hi, ca + 2 * step_a))
        lb = (max(lo, cb - 2 * step_b), min(hi, cb + 2 * step_b))
    _, a_fit, b_fit, _ = best
    fitted: list[Literal["compute", "memory", "static"]] = ["static"]
    compute_binds = a_fit * terms[:, 0] >= b_fit * terms[:, 1]
    if compute_binds.any():
        fitted.append("compute")
    else:  # compute never binds: any a up to the point where it would leaves the fit unchanged
        a_fit = min(1 / default.compute, float(np.min(b_fit * terms[:, 1] / np.maximum(terms[:, 0], 1e-300))))
    if (~compute_binds).any():
        fitted.append("memory")
    else:
        b_fit = min(1 / default.memory, float(np.min(a_fit * terms[:, 0] / np.maximum(terms[:, 1], 1e-300))))
    a_fit, b_fit = max(a_fit, 1 / MAX_FITTED_EFFICIENCY), max(b_fit, 1 / MAX_FITTED_EFFICIENCY)
    s_fit = _static(terms, t, a_fit, b_fit)
    fit = OpFit(compute=round(1 / a_fit, 6), memory=round(1 / b_fit, 6), static_latency_s=round(s_fit, 9),
                fitted=sorted(fitted), points=len(t), mape_pct=0.0)
    return fit.model_copy(update={"mape_pct": round(mape(predict(fit, terms), t), 3)})


def fit_link(n_bytes: Sequence[float], measured_s: Sequence[float]) -> LinkFit:
    """α–β: t = α + bytes/β, least squares on relative error (α ≥ 0)."""
    n, t = np.asarray(n_bytes, dtype=float), np.asarray(measured_s, dtype=float)
    rows = np.stack([1 / t, n / t], axis=1)
    (alpha, gamma), *_ = np.linalg.lstsq(rows, np.ones_like(t), rcond=None)
    if alpha < 0:
        alpha, gamma = 0.0, float((n / t).sum() / ((n / t) ** 2).sum())
    gamma = max(float(gamma), 1e-15)
    pred = alpha + n * gamma
    return LinkFit(alpha_s=round(float(alpha), 9), bw_gbyte_s=round(1 / gamma / 1e9, 6), points=len(t),
                   mape_pct=round(mape(pred, t), 3))


def mape(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray) -> float:
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(p - m) / m) * 100) if len(m) else 0.0
