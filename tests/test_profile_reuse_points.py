"""A vLLM profile's cached-prefix prefill points (`points.reuse_prefill`): layered over the catalog, the cost
model's `measured_reuse_prefill` answers with the measured time at a measured point and the model's
shape between points; the simulator's read term (`LlmCost.context_read_s`) recovers a known per-token
and per-pair cost from points built with it, and is zero without points."""

from __future__ import annotations

from pathlib import Path

import pytest

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.candidates import deployment
from terrazzo.cost.kv_reuse_pricing import reuse_prefill
from terrazzo.cost.reuse_calibration import measured_reuse_prefill, reuse_points
from terrazzo.profile.profile_file import load_profile
from terrazzo.sim.service_times import LlmCost

PROFILE = Path(__file__).resolve().parents[1] / "bench/data/kv_sim_live/vllm-profile-front-end.yaml"


def test_measured_reuse_prefill_is_the_measurement_at_its_points():
    prof = load_profile(PROFILE)
    cat = load_catalog([], [PROFILE])
    dep = deployment(cat, prof.llm.name, prof.device.name, prof.llm.dtype, 1, 1)
    grid = reuse_points(cat, prof.device.name, prof.llm.name, prof.llm.dtype)
    assert grid is not None and len(grid.measured_s) == len(prof.points.reuse_prefill) >= 2
    for p in prof.points.reuse_prefill:
        got = measured_reuse_prefill(cat, dep, p.new, p.cached)
        assert got.latency_s == pytest.approx(p.timing.median_s, rel=1e-9)
        assert got.source.startswith("profile:")
    outside = measured_reuse_prefill(cat, dep, 8, 128)  # below the measured range: the model alone
    assert outside.latency_s == pytest.approx(reuse_prefill(dep, 8, 128).latency_s)


def test_the_read_term_recovers_known_costs():
    cat = load_catalog([], [PROFILE])
    prof = load_profile(PROFILE)
    dep = deployment(cat, prof.llm.name, prof.device.name, prof.llm.dtype, 1, 1)
    bare = LlmCost(dep)
    assert bare.context_read_s(2048, 256 * 2048) == 0.0
    per_token, per_pair = 2e-6, 1e-9
    pts = {(float(n), float(k)): bare.prefill_s(n, n * n + 2 * n * k) + per_token * k + per_pair * n * k
           for n, k in ((64, 1024), (256, 1024), (256, 2048), (512, 1536))}
    fitted = LlmCost(dep, pts)
    assert fitted.read_token_s == pytest.approx(per_token, rel=1e-6)
    assert fitted.read_pair_s == pytest.approx(per_pair, rel=1e-6)
