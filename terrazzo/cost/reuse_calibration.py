"""A measured cached-prefix prefill: a profile's reuse points (`terrazzo profile --engine vllm` with prefix
caching on: prefill of `new` tokens behind `cached` tokens the engine served from its cache).

Kept apart from kv_reuse_pricing.py's model: this only looks the points up (`reuse_points`) and scales
that model by the measured ÷ modelled ratio around a point inside the measured range, as
calibration.py does for cold prefill and decode (`measured_reuse_prefill`).
"""

from __future__ import annotations

from typing import Any

from terrazzo.cost.calibration import Grid, _calibrations, calibrate
from terrazzo.cost.kv_reuse_pricing import reuse_prefill
from terrazzo.cost.llm import Deployment
from terrazzo.cost.roofline import Estimate


def reuse_points(catalog: Any, device: str, model: str, dtype: str) -> Grid | None:
    """Measured reuse prefill (axes: new, cached; one request) of `model` in `dtype` on `device`, if layered."""
    for cal in _calibrations(catalog, device):
        if cal.llm_model == model and cal.llm_dtype == dtype and "reuse_prefill" in cal.grids:
            return cal.grids["reuse_prefill"]
    return None


def measured_reuse_prefill(catalog: Any, dep: Deployment, new_tokens: int, cached_tokens: int) -> Estimate:
    """One call's reuse prefill: the model, scaled to the profile's reuse points around it (the model alone
    outside their range, or for tp/pp > 1)."""
    est = reuse_prefill(dep, new_tokens, cached_tokens)
    if dep.tp != 1 or dep.pp != 1 or cached_tokens == 0:
        return est
    grid = reuse_points(catalog, dep.device.name, dep.model.name, dep.dtype)
    return calibrate(est, grid, (float(new_tokens), float(cached_tokens)),
                     lambda c: reuse_prefill(dep, int(c[0]), int(c[1])))
