"""The Python API: importable entry points, typed results with JSON and DataFrame views, the notebook example."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pandas as pd
import pytest

import terrazzo as tz
from terrazzo.errors import PlanInfeasible, SpecError

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"


def test_every_exported_name_resolves() -> None:
    for name in tz.__all__:
        assert getattr(tz, name) is not None, name
    assert tz.plan_agent is tz.api.plan  # `terrazzo.plan` stays the planner's package
    with pytest.raises(AttributeError):
        tz.no_such_thing  # noqa: B018


def test_builder_is_documented() -> None:
    from terrazzo.spec.builder import AgentBuilder

    for name in ("node", "edge", "chain", "subagent", "build"):
        assert (getattr(AgentBuilder, name).__doc__ or "").strip(), name
    import terrazzo.spec.builder as builder

    assert "AgentBuilder(" in (builder.__doc__ or "") and (AgentBuilder.__doc__ or "").strip()


def test_plan_simulate_compare_from_python() -> None:
    agent = tz.load_agent(EX / "agents" / "voice-agent.yaml")
    plan = tz.plan_agent(agent, EX / "clusters" / "hetero.yaml", EX / "workloads" / "steady-5rps.yaml",
                         EX / "slas" / "interactive.yaml")
    frame = plan.to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(plan.to_json()["ops"])
    assert frame["usd_h"].sum() == pytest.approx(plan.tco_usd_h, rel=1e-9)
    assert set(frame["node"]) >= {"asr", "think", "speak"}
    assert plan.meets_sla is True  # verified by simulation at its rate, as `terrazzo plan` does
    assert json.loads(json.dumps(plan.to_json()))["schema"].startswith("terrazzo.plan/")
    base = plan.baselines()
    assert (base.loc[base["feasible"], "ratio"] >= 1 - 1e-9).all()  # no baseline is cheaper than the plan

    sim = tz.simulate(plan, duration_s=60, seed=3)
    requests = sim.to_pandas()
    assert len(requests) == sim.report.requests and requests["e2e_s"].gt(0).all()
    assert sim.to_json()["schema"] == "terrazzo.sim/v1" and 0 <= sim.attainment <= 1
    assert set(sim.pools()["op"]) == {p["name"] for p in plan.to_json()["pools"]}  # one row per pool

    same = tz.simulate(plan, duration_s=60, seed=3)  # seeded: the same answer
    assert same.e2e_at_sla_s == sim.e2e_at_sla_s

    fast = tz.plan_agent(agent, EX / "clusters" / "hetero.yaml", {"arrival": {"rate_per_s": 5}},
                         {"end_to_end": {"latency_s": 12, "percentile": 50}}, verify=False)
    both = tz.compare({"30s": plan, "12s": fast})
    table = both.to_pandas()
    assert list(table.index) == ["30s", "12s"] and both.cheapest in table.index
    assert table.loc[both.cheapest, "tco_usd_h"] == table["tco_usd_h"].min()


def test_specs_as_dicts_are_checked_like_files() -> None:
    agent = tz.load_agent(EX / "agents" / "voice-agent.yaml")
    with pytest.raises(SpecError, match=r"<workload dict>.*arrival.*rate_per_s"):
        tz.load_workload({"arrival": {"process": "poisson"}})
    with pytest.raises(SpecError, match=r"<cluster dict>.*unknown device"):
        tz.load_cluster({"devices": ["h100", "no-such-gpu"]})
    with pytest.raises(SpecError, match="names no node"):
        tz.load_agent({"name": "x", "nodes": [{"id": "a", "kind": "compute", "cpu_s": 0.001}],
                       "edges": [{"from": "a", "to": "nowhere"}]})
    with pytest.raises(PlanInfeasible):
        tz.plan_agent(agent, {"devices": ["a40", "epyc-9654"]}, {"arrival": {"rate_per_s": 5}},
                      {"llm_default": {"tbt_s": 0.001}})


def test_notebook_example_runs_and_shows_a_plan_as_a_dataframe() -> None:
    cells = runpy.run_path(str(EX / "notebook.py"))
    frame = cells["plan_frame"]
    assert isinstance(frame, pd.DataFrame) and {"device", "replicas", "usd_h"} <= set(frame.columns)
    assert len(frame) >= 4  # embed, search, prefill/decode or aggregated, tool, compute
    comparison = cells["comparison"].to_pandas()
    assert list(comparison.index) == ["hetero", "nvidia"]
    assert comparison.loc["hetero", "tco_usd_h"] <= comparison.loc["nvidia", "tco_usd_h"]  # a superset of devices
    assert 0 <= cells["sim"].attainment <= 1
