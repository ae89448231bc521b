"""The simulator on plans: every example plan meets its SLA at the planned rate on a seed the planner
did not use, and the report says where it breaks at 1.5×; runs are functions of their seed; the CLI
functions write what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from terrazzo.errors import SimError
from terrazzo.sim.results import simulate
from terrazzo.sim.sim_inputs import load_model, model_from_plan
from terrazzo.sim.simulate_command import check_plan, simulate_command
from terrazzo.sim.simulation import SimConfig, Simulation
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
from terrazzo.verify.replan import verified_plan as plan

ROOT = Path(__file__).parent.parent
INPUTS = {"agent": ROOT / "examples/agents/voice-agent.yaml", "workload": ROOT / "examples/workloads/steady-5rps.yaml",
          "sla": ROOT / "examples/slas/interactive.yaml", "cluster": ROOT / "examples/clusters/hetero.yaml"}


@pytest.fixture(scope="module")
def voice_plan() -> dict:
    """The voice agent planned now, at the example workload's 5 requests/s (what `terrazzo plan -o` writes)."""
    cluster, cat = load_cluster(INPUTS["cluster"])
    agent = load_agent(INPUTS["agent"], cat)
    result = plan(agent, load_workload(INPUTS["workload"], agent), load_sla(INPUTS["sla"], agent), cluster, cat)
    doc = result.to_json()
    doc["inputs"] = {k: str(v) for k, v in INPUTS.items()}
    return doc


@pytest.fixture(scope="module")
def voice(voice_plan):
    return model_from_plan(voice_plan)


def render(x) -> str:
    console = Console(width=200, record=True)
    console.print(x.table())
    return console.export_text()


def test_voice_agent_meets_its_sla_at_the_planned_rate(voice):
    r = simulate(voice, SimConfig(duration_s=600, seed=0))
    assert r.rate_per_s == voice.rate_per_s == 5
    assert r.meets_sla, r.breaks
    assert r.unfinished == 0 and r.attainment >= voice.percentile / 100
    assert r.e2e_at_sla_s <= voice.deadline_s
    think = next(s for s in r.llm if s.node == "think")
    assert think.ttft_at_sla_s <= 0.25 and think.tbt_at_sla_s <= 0.02
    assert 0 < r.usd_per_request < 1 and r.usd_per_m_tokens > 0 and r.output_tokens > 0
    assert "meets its SLA" in render(r)


def _planned(agent_name: str) -> dict:
    inputs = {**INPUTS, "agent": ROOT / f"examples/agents/{agent_name}.yaml"}
    cluster, cat = load_cluster(inputs["cluster"])
    agent = load_agent(inputs["agent"], cat)
    doc = plan(agent, load_workload(inputs["workload"], agent), load_sla(inputs["sla"], agent), cluster,
               cat).to_json()
    doc["inputs"] = {k: str(v) for k, v in inputs.items()}
    return doc


@pytest.fixture(scope="module")
def moe_plan() -> dict:
    return _planned("moe-agent")


@pytest.mark.parametrize("agent_name", ["rag-support", "langchain-agent", "moe-agent"])
def test_every_example_plan_meets_its_sla_at_the_planned_rate(agent_name, moe_plan):
    """The planner simulates its plan (seed 0) and re-plans on a miss; a fresh seed must agree. The
    langchain agent's first-token queue and the MoE agent's p99 end-to-end latency are what the
    mean-based MILP alone got wrong."""
    doc = moe_plan if agent_name == "moe-agent" else _planned(agent_name)
    assert doc["verification"]["simulated"] and doc["verification"]["meets_sla"]
    r = simulate(model_from_plan(doc), SimConfig(duration_s=600, seed=11))
    assert r.meets_sla, r.breaks


def test_the_moe_plan_was_re_planned_after_its_first_simulation(moe_plan):
    rounds = moe_plan["verification"]["rounds"]
    assert len(rounds) >= 2 and not rounds[0]["meets_sla"] and rounds[-1]["meets_sla"]
    assert rounds[0]["e2e_at_sla_s"] > 30 >= rounds[-1]["e2e_at_sla_s"]
    assert any("end-to-end: planned to" in a for a in rounds[0]["actions"])
    assert rounds[-1]["tco_usd_h"] > rounds[0]["tco_usd_h"]  # meeting the percentile costs more


def test_past_its_busiest_pool_s_saturation_the_report_shows_where_it_breaks():
    """At 25 % more than the rate that saturates the plan's busiest pool (its planned load ÷ replicas),
    the plan must miss, and the report must say where: the multiple comes from the plan, not a constant."""
    model = model_from_plan(_planned("langchain-agent"))
    busiest = max(sum(m.load for m in p.ops) / p.replicas for p in model.pools.values())
    assert 0 < busiest < 1
    r = simulate(model, SimConfig(duration_s=600, rate_per_s=1.25 / busiest * model.rate_per_s, seed=0))
    assert not r.meets_sla and r.attainment < 0.99
    llm_ops = [p.op for p in r.pools if p.op.startswith("agent_llm.")]
    text = " ".join(r.breaks)
    assert "agent_llm TTFT" in text or "agent_llm TBT" in text or "end-to-end" in text
    assert any(op in text for op in llm_ops)  # names the pool to blame
    out = render(r)
    assert "misses its SLA" in out and "✗" in out


def test_same_seed_same_result(voice):
    a = simulate(voice, SimConfig(duration_s=300, seed=7))
    b = simulate(voice, SimConfig(duration_s=300, seed=7))
    for key in a.records.requests:
        np.testing.assert_array_equal(a.records.requests[key], b.records.requests[key])
    ja, jb = a.to_json(), b.to_json()
    for volatile in ("wall_s", "sim_requests_per_wall_s"):
        ja.pop(volatile), jb.pop(volatile)
    assert ja == jb


def test_different_seeds_agree_within_the_stated_interval(voice):
    a = simulate(voice, SimConfig(duration_s=600, seed=1))
    b = simulate(voice, SimConfig(duration_s=600, seed=2))
    assert a.records.requests["e2e_s"].tolist() != b.records.requests["e2e_s"].tolist()
    half = (a.e2e_mean_ci95_s**2 + b.e2e_mean_ci95_s**2) ** 0.5  # 95 % interval of the difference
    assert abs(a.e2e.mean_s - b.e2e.mean_s) <= half
    assert a.e2e_mean_ci95_s < 0.1 * a.e2e.mean_s


def test_each_llm_pool_records_the_engine_it_was_priced_on_and_simulates_under_it(voice_plan, voice):
    """The cost model prices an LLM candidate on its vendor's engine (serving_priors.yaml default_engine):
    the pool says so, its name keeps two engines' pools apart, and the simulator runs its scheduler."""
    from terrazzo.catalog.catalog_loader import load_catalog
    from terrazzo.cost.serving_model import default_engine
    from terrazzo.sim.schedulers import CHUNKED, INFLIGHT, PREFILL_FIRST

    cat = load_catalog()
    llm = {p["name"]: p for p in voice_plan["pools"] if p["role"] != "shared"}
    assert llm
    for p in llm.values():
        expected = default_engine(cat.device(p["device"]).vendor)
        assert expected is not None and (p["engine"], p["engine_version"]) == (expected.engine.value,
                                                                                 expected.version), p["name"]
        assert f"-{p['engine']}-{p['engine_version']}" in p["name"]
    assert all(p["engine"] == "builtin" for p in voice_plan["pools"] if p["role"] == "shared")
    pool_of = {o["name"]: o["pool"] for o in voice_plan["ops"]}
    policy = {"trtllm": INFLIGHT, "vllm": CHUNKED, "gaudi": PREFILL_FIRST}  # gaudi: no documented default here
    simulated = [o for o in voice.ops.values() if o.kind.startswith("llm.")]
    assert simulated
    for op in simulated:
        pool = llm[pool_of[op.name]]
        assert str(op.scheduler.engine) == f"{pool['engine']}-{pool['engine_version']}", op.name
        assert op.scheduler.policy == policy[pool["engine"]], op.name


def test_visits_through_the_pools_match_the_plan(voice):
    sim = Simulation(voice, SimConfig(duration_s=600, seed=3)).run()
    expected = voice.agent.graph.visits()
    n = sim.arrived
    for path, v in expected.items():
        se = max(v, 1) * 2.5 / n**0.5  # visits per request are bounded by the loop (≤ 4): a loose 4-sigma band
        assert sim.flow.visits.get(path, 0) / n == pytest.approx(v, abs=se), path
    for op in voice.ops.values():
        assert op.visits == pytest.approx(expected[op.node], rel=1e-6)


def test_gamma_arrivals_are_burstier_than_poisson(voice):
    calm = simulate(voice, SimConfig(duration_s=600, seed=4))
    bursty = simulate(voice, SimConfig(duration_s=600, seed=4, arrival="gamma", cv=4.0))
    assert bursty.queue_wait_mean_s > calm.queue_wait_mean_s


def test_plan_check_flags_and_explains_the_gaps(voice_plan):
    check = check_plan(voice_plan, tolerance=0.2, seed=0)
    assert check.rate_per_s == voice_plan["rate_per_s"]
    by_pool = {o.op: o for o in check.ops}  # one row per plan pool
    assert set(by_pool) == {p["name"] for p in voice_plan["pools"]}
    for o in check.ops:
        assert o.flagged == (abs(o.ratio - 1) > 0.2)
        assert bool(o.why) == o.flagged
    assert check.e2e_planned_s == pytest.approx(voice_plan["e2e_latency_s"])
    assert 0 <= check.requests_flagged <= 1
    doc = json.loads(json.dumps(check.to_json()))
    assert doc["schema"] == "terrazzo.plan-check/v1" and doc["simulation"]["schema"] == "terrazzo.sim/v1"
    assert "plan check" in render(check)


def test_simulate_command_writes_records_and_figures(voice_plan, tmp_path):
    path = tmp_path / "voice.plan.json"
    path.write_text(json.dumps(voice_plan))
    out = tmp_path / "out"
    r = simulate_command(str(path), rate=None, duration_s=120, trace=None, seed=0, out_dir=str(out), progress=False)
    names = {p.name for p in out.iterdir()}
    assert names == {"report.json", "requests.csv", "llm_calls.csv", "latency-cdf.png", "utilisation.png"}
    assert (out / "latency-cdf.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "requests.csv").read_text().splitlines()
    assert rows[0] == "request,arrival_s,e2e_s,predicted_s,llm_sla_ok" and len(rows) == r.completed + 1
    assert json.loads((out / "report.json").read_text())["requests"] == r.requests


def test_trace_replay_uses_the_trace_arrivals_and_tokens(voice_plan, tmp_path):
    path = tmp_path / "voice.plan.json"
    path.write_text(json.dumps(voice_plan))
    trace = ROOT / "examples/traces/azure-sample.csv"
    r = simulate_command(str(path), rate=None, duration_s=None, trace=str(trace), seed=0, out_dir=None,
                         progress=False)
    assert r.arrival == "trace" and r.duration_s > 299
    calls = r.records.calls["think"]
    assert set(calls["isl"].astype(int)) <= set(np.loadtxt(trace, delimiter=",", skiprows=1, usecols=1, dtype=int))
    faster = simulate_command(str(path), rate=10.0, duration_s=None, trace=str(trace), seed=0, out_dir=None,
                              progress=False)
    assert faster.rate_per_s == 10.0 and faster.duration_s == pytest.approx(r.duration_s / 2, rel=0.1)


def test_the_example_plan_file_simulates(tmp_path):
    r = simulate_command(str(ROOT / "examples/plans/voice-agent.plan.json"), rate=None, duration_s=60, trace=None,
                         seed=0, out_dir=None, progress=False)
    assert r.requests > 200 and r.agent == "voice-agent"
    doc = json.loads((ROOT / "examples/plans/voice-agent.plan.json").read_text())
    batched = {o["name"] for o in doc["ops"] if o["batch"] > 1 and not o["kind"].startswith(("llm.", "moe."))}
    assert {n.split(":")[0] for n in r.notes} == batched  # a plan from an older cost model is said to be one


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(schema="other"), "schema"),
    (lambda d: d.pop("inputs"), "does not record its inputs"),
    (lambda d: d["inputs"].update(agent="missing.yaml"), "was not found"),
    (lambda d: d.update(ops=[o for o in d["ops"] if not o["name"].startswith("think")],
                        pools=[p for p in d["pools"] if not p["ops"][0]["op"].startswith("think")]), "node 'think'"),
    (lambda d: d.update(ops=[o for o in d["ops"] if not o["name"].startswith("think")]), "does not list"),
    (lambda d: d.update(schema="terrazzo.plan/v1"), "re-plan"),
])
def test_bad_plans_say_how_to_fix_them(voice_plan, mutate, match):
    doc = json.loads(json.dumps(voice_plan))
    mutate(doc)
    with pytest.raises(SimError, match=match):
        model_from_plan(doc)


def test_bad_arguments_say_how_to_fix_them(voice_plan, tmp_path):
    with pytest.raises(SimError, match="no such plan file"):
        load_model(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SimError, match="not JSON"):
        load_model(tmp_path / "bad.json")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(voice_plan))
    with pytest.raises(SimError, match="--rate"):
        simulate_command(str(path), rate=-1, duration_s=10, trace=None, seed=0, out_dir=None, progress=False)
    with pytest.raises(SimError, match="tolerance"):
        check_plan(voice_plan, tolerance=0, seed=0)
