"""Fitting recovers the factors that generated the points; interpolation is exact at measured points,
log-linear between them and absent outside them."""

from __future__ import annotations

import numpy as np
import pytest
from profile_synth import KNOWN, synthetic_profile

from terrazzo.catalog.catalog_schema import Efficiency
from terrazzo.cost.calibration import Grid, calibrate
from terrazzo.cost.roofline import Estimate
from terrazzo.profile import fit as F


def test_fit_recovers_the_factors_that_generated_the_points():
    prof = synthetic_profile()
    for op, (compute, memory, static) in KNOWN.items():
        fit = prof.fit.ops[op]  # type: ignore[index]
        assert fit.static_latency_s == pytest.approx(static, rel=0.01), op
        assert fit.compute == pytest.approx(compute, rel=0.01), op
        assert fit.memory == pytest.approx(memory, rel=0.01), op
        assert fit.mape_pct < 0.1, op
    # a flat scan's compute and memory time are proportional at every point: the data cannot separate
    # them, so the default decides which term binds (memory, as the defaults say) and compute stays put
    assert prof.fit.ops["ann_search"].fitted == ["memory", "static"]


def test_fit_with_noise_stays_close_and_says_so():
    prof = synthetic_profile(noise=0.03, seed=1)
    for op in ("decode", "embed"):
        compute, _, static = KNOWN[op]
        fit = prof.fit.ops[op]  # type: ignore[index]
        assert fit.compute == pytest.approx(compute, rel=0.1), op
        assert fit.static_latency_s == pytest.approx(static, rel=0.1), op
        assert 0.5 < fit.mape_pct < 5, op  # the noise shows in the fit error, not hidden


def test_a_term_that_never_binds_keeps_the_default():
    terms = np.array([[1e-3 * n, 1e-6] for n in (1, 2, 4, 8)])  # compute-bound everywhere
    default = Efficiency(compute=0.3, memory=0.6, network=0.7, static_latency_s=0.0, source="derived: test")
    times = terms[:, 0] / 0.5 + 2e-4
    fit = F.fit_roofline(terms, times, default)
    assert fit.compute == pytest.approx(0.5, rel=1e-3) and fit.static_latency_s == pytest.approx(2e-4, rel=1e-2)
    assert fit.memory == 0.6 and fit.fitted == ["compute", "static"]


def test_alpha_beta_recovered():
    sizes = np.array([1e3, 1e4, 1e5, 1e6, 1e7])
    fit = F.fit_link(sizes, 50e-6 + sizes / 2.5e9)
    assert fit.alpha_s == pytest.approx(50e-6, rel=1e-6) and fit.bw_gbyte_s == pytest.approx(2.5, rel=1e-6)
    noisy = (50e-6 + sizes / 2.5e9) * np.array([1.02, 0.98, 1.01, 0.99, 1.0])
    fit = F.fit_link(sizes, noisy)
    assert fit.alpha_s == pytest.approx(50e-6, rel=0.1) and fit.bw_gbyte_s == pytest.approx(2.5, rel=0.05)


def test_grid_interpolates_the_ratio_in_log_space_and_only_inside():
    grid = Grid("p.yaml", "decode", ("batch", "context"),
                {(1.0, 100.0): 2.0, (4.0, 100.0): 4.0, (1.0, 400.0): 3.0, (4.0, 400.0): 6.0, (16.0, 100.0): 8.0})

    def roof(c: tuple[float, ...]) -> Estimate:  # the fitted model: 2 s per sequence, compute-bound
        return Estimate(compute_s=2 * c[0], memory_s=0.0, source="fitted:p.yaml")

    def at(c: tuple[float, float]) -> Estimate:
        return calibrate(roof(c), grid, c, roof)

    # measured/fitted ratios: 1 at (1, 100), 0.5 at (4, 100), 1.5 at (1, 400), 0.75 at (4, 400)
    assert at((4.0, 100.0)).latency_s == pytest.approx(4.0)  # a measured point: the measurement itself
    mid = at((2.0, 100.0))  # halfway in log between batch 1 and 4: ratio 0.75 times the roofline's 4
    assert mid.latency_s == pytest.approx(3.0)
    assert mid.source == "profile:p.yaml#decode[batch=1..4,context=100]" and mid.bound == "compute"
    assert at((2.0, 200.0)).latency_s == pytest.approx(4 * (1 + 0.5 + 1.5 + 0.75) / 4)  # the cell's centre
    assert at((32.0, 100.0)) == roof((32.0, 100.0))  # beyond the largest batch: the fitted roofline
    assert at((8.0, 200.0)) == roof((8.0, 200.0))  # (16, 400) was never measured: no cell to interpolate in
