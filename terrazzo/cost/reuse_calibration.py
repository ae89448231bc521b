"""A cached-prefix prefill, priced once for the planner and the simulator, and measured where a profile has
reuse points (`terrazzo profile --engine vllm` with prefix caching on: prefill of `new` tokens behind
`cached` tokens the engine served from its cache).

- `chunk_prefill`: one prefill iteration over chunks of `tokens` new tokens in all, Σ(c² + 2·c·cached) =
  `sum_sq` (their attention reads what is cached before them): the cold prefill model (cost/llm.py) on
  that work. At nothing cached it is `llm.prefill` exactly.
- `ReadTerm`: what such chunks take beyond that model, per cached token and per (new × cached) pair; fitted
  (non-negative least squares, relative errors) to a profile's reuse points (`fit_read_term`, `read_term`),
  zero without points, or for tp/pp > 1, which the profile never ran.
- `cached_prefill_s`: one call (or a batch of like calls) behind a resident prefix: `chunk_prefill` + the
  read term. The planner's hit price (plan/kv_candidates.py); the simulator's lanes price every iteration
  with the same two parts (sim/service_times.LlmCost, on its affine fit of `chunk_prefill`), so a lone
  cached call on an idle replica costs the same in both.
- `measured_reuse_prefill`: kv_reuse_pricing.py's model scaled to the measured ÷ modelled ratio around a
  point inside the measured range (calibration.py's rule for cold prefill and decode): the measurement
  itself at its points, for reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from terrazzo.cost.calibration import Grid, _calibrations, calibrate
from terrazzo.cost.kv_reuse_pricing import reuse_prefill
from terrazzo.cost.llm import Deployment, prefill
from terrazzo.cost.roofline import Estimate
from terrazzo.errors import CostError


@dataclass(frozen=True)
class ReadTerm:
    """Seconds a prefill chunk that attends to cached KV takes beyond `chunk_prefill`."""

    per_token_s: float = 0.0  # per cached token attended to
    per_pair_s: float = 0.0   # per (new token × cached token) pair

    def seconds(self, cached_tokens: float, pairs: float) -> float:
        return self.per_token_s * cached_tokens + self.per_pair_s * pairs


def chunk_prefill(dep: Deployment, tokens: float, sum_sq: float) -> Estimate:
    """One prefill iteration over chunks of `tokens` tokens in all with Σ(c² + 2·c·cached) = `sum_sq`: the cold
    model's prompts of sum_sq / tokens tokens, tokens² / sum_sq of them (the same GEMM tokens and attention
    pairs; `llm.prefill(dep, isl, batch)` for `batch` cold prompts of `isl`)."""
    if tokens <= 0 or sum_sq <= 0:
        raise CostError(f"a prefill chunk needs tokens > 0 and sum_sq > 0, got {tokens} and {sum_sq}")
    x = sum_sq / tokens
    return prefill(dep, x, tokens / x)  # type: ignore[arg-type]


def fit_read_term(dep: Deployment, points: Mapping[tuple[float, float], float]) -> ReadTerm:
    """The read term over measured (new, cached) → seconds, on what `chunk_prefill` leaves unexplained."""
    if not points:
        return ReadTerm()
    from scipy.optimize import nnls

    rows, extra = [], []
    for (n, k), t in points.items():
        model = chunk_prefill(dep, n, n * n + 2 * n * k).latency_s
        rows.append([k / t, n * k / t])
        extra.append((t - model) / t)
    if len(rows) == 1:  # one point: the per-pair term alone
        return ReadTerm(0.0, max(0.0, extra[0] / rows[0][1]))
    coef, _ = nnls(np.array(rows), np.array(extra))
    return ReadTerm(float(coef[0]), float(coef[1]))


def reuse_points(catalog: Any, device: str, model: str, dtype: str) -> Grid | None:
    """Measured reuse prefill (axes: new, cached; one request) of `model` in `dtype` on `device`, if layered."""
    for cal in _calibrations(catalog, device):
        if cal.llm_model == model and cal.llm_dtype == dtype and "reuse_prefill" in cal.grids:
            return cal.grids["reuse_prefill"]
    return None


def read_term(catalog: Any, dep: Deployment) -> ReadTerm:
    """`dep`'s read term from the catalog's reuse points (zero where none were layered, or for tp/pp > 1)."""
    if dep.tp != 1 or dep.pp != 1:
        return ReadTerm()
    grid = reuse_points(catalog, dep.device.name, dep.model.name, dep.dtype)
    return fit_read_term(dep, {(c[0], c[1]): t for c, t in grid.measured_s.items()} if grid is not None else {})


def cached_prefill_s(dep: Deployment, new_tokens: float, cached_tokens: float, batch: int = 1,
                     read: ReadTerm = ReadTerm()) -> float:
    """Time to first token of `batch` like calls prefilled together, each computing `new_tokens` behind
    `cached_tokens` resident; `llm.prefill(dep, new_tokens, batch)` when nothing is cached."""
    if new_tokens < 1 or cached_tokens < 0 or batch < 1:
        raise CostError(f"a cached prefill needs new_tokens >= 1, cached_tokens >= 0 and batch >= 1, got "
                        f"{new_tokens}, {cached_tokens} and {batch}")
    n, k = new_tokens, cached_tokens
    chunk = chunk_prefill(dep, n * batch, batch * (n * n + 2 * n * k)).latency_s
    return chunk + (read.seconds(k * batch, n * k * batch) if k else 0.0)


def measured_reuse_prefill(catalog: Any, dep: Deployment, new_tokens: int, cached_tokens: int) -> Estimate:
    """One call's reuse prefill: the model, scaled to the profile's reuse points around it (the model alone
    outside their range, or for tp/pp > 1)."""
    est = reuse_prefill(dep, new_tokens, cached_tokens)
    if dep.tp != 1 or dep.pp != 1 or cached_tokens == 0:
        return est
    grid = reuse_points(catalog, dep.device.name, dep.model.name, dep.dtype)
    return calibrate(est, grid, (float(new_tokens), float(cached_tokens)),
                     lambda c: reuse_prefill(dep, int(c[0]), int(c[1])))
