"""TCO arithmetic and the paper's worked example (Table 3) through the planner's selection MILP."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terrazzo.catalog.catalog_loader import load_catalog
from terrazzo.cost.tco import annuity_usd_per_year, device_usd_per_hour, usd_per_million_tokens
from terrazzo.errors import PlanInfeasible
from terrazzo.plan.scenario import load_scenario
from terrazzo.plan.select import Edge, Option, Problem, Stage, Transfer, enumerate_all, solve

ROOT = Path(__file__).resolve().parent.parent
CAT = load_catalog()


def test_annuity_matches_closed_form():
    # $25,000 over 4 years at 8 %: 25000 * 0.08 / (1 - 1.08**-4) = 7,548.02 per year
    assert annuity_usd_per_year(25_000, 4, 0.08) == pytest.approx(7548.02, abs=0.01)
    assert annuity_usd_per_year(12_000, 4, 0.0) == 3000


def test_paper_profile_prices_and_power():
    h100 = device_usd_per_hour(CAT, "h100", "paper-2507.19635")
    assert CAT.price_usd("h100-sxm", "paper-2507.19635") == 25_000
    assert h100.capex_usd_h == pytest.approx(7548.02 / 8760, rel=1e-5)
    tdp_kw = CAT.device("h100").tdp_w.value / 1000
    assert h100.power_usd_h == pytest.approx(tdp_kw * 0.40)
    for name, price in (("a40", 3000), ("a100", 8000), ("gaudi3", 12500), ("mi300x", 20000), ("b200", 40000)):
        assert CAT.price_usd(CAT.device(name).name, "paper-2507.19635") == price
    # a device the paper does not price falls back to the catalog's own price
    assert CAT.price_usd("l4", "paper-2507.19635") == CAT.device("l4").price_usd.value


def test_usd_per_million_tokens():
    assert usd_per_million_tokens(3.6, 1000) == pytest.approx(1.0)
    assert usd_per_million_tokens(1.0, 0) == float("inf")


def test_table3_chooses_option_b():
    scenario = load_scenario(ROOT / "examples" / "paper" / "table3.yaml")
    problem = scenario.problem()
    chosen = solve(problem)
    assert chosen.choice == {"prefill": "HP", "decode": "CO"} == scenario.expected
    assert chosen.latency_s == pytest.approx(0.120)
    assert chosen.cost_usd == pytest.approx(0.095)
    by_choice = {(e.choice["prefill"], e.choice["decode"]): e for e in enumerate_all(problem)}
    a, c = by_choice["HP", "HP"], by_choice["CO", "CO"]
    assert a.feasible and a.latency_s == pytest.approx(0.105) and a.cost_usd == pytest.approx(0.11)
    assert a.cost_usd > chosen.cost_usd
    # option C misses the deadline; the paper prints $0.07 but 1000*0.00005 + 500*0.00002 = $0.06
    assert not c.feasible and c.latency_s == pytest.approx(0.160) and c.cost_usd == pytest.approx(0.06)


def test_tighter_deadline_is_explained():
    problem = load_scenario(ROOT / "examples" / "paper" / "table3.yaml").problem()
    tight = Problem(problem.stages, problem.edges, 0.100)
    with pytest.raises(PlanInfeasible, match=r"105 ms \(5 ms over\)"):
        solve(tight)


@st.composite
def chain_problems(draw):
    n = draw(st.integers(1, 4))
    pools = ["p0", "p1", "p2"]
    stages = tuple(
        Stage(f"s{i}", tuple(Option(p, draw(st.floats(0.001, 0.1)), draw(st.floats(0.0, 1.0)))
                             for p in draw(st.lists(st.sampled_from(pools), min_size=1, max_size=3, unique=True))))
        for i in range(n)
    )
    edges = tuple(
        Edge(f"s{i}", f"s{i + 1}", {(a, b): Transfer(draw(st.floats(0, 0.02)), draw(st.floats(0, 0.1)))
                                    for a in pools for b in pools if a != b and draw(st.booleans())})
        for i in range(n - 1)
    )
    return Problem(stages, edges, draw(st.floats(0.01, 0.3)))


@settings(max_examples=150, deadline=None)
@given(chain_problems())
def test_milp_equals_brute_force(problem):
    feasible = [e for e in enumerate_all(problem) if e.feasible]
    if not feasible:
        with pytest.raises(PlanInfeasible):
            solve(problem)
        return
    best = min(e.cost_usd for e in feasible)
    chosen = solve(problem)
    assert chosen.feasible
    assert chosen.cost_usd == pytest.approx(best, rel=1e-6, abs=1e-9)
