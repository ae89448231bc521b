"""KV reuse in the planner: the MILP's per-edge choice (recompute / retain / host / disk) with capacities,
the plan file's `kv` entry re-priced by the checker, `--explain`, and the must-show: on the shipped
tool-loop and chat agents the TCO at equal SLA is at least 20 % lower with reuse, the reuse plan passing
its simulation."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from terrazzo.errors import PlanRejected
from terrazzo.plan.check import check
from terrazzo.plan.fleet_model import Assignment, Share, dedicated_replicas, demand_per_s, throughput_replicas
from terrazzo.plan.from_ir import build
from terrazzo.plan.kv_candidates import catalog_tiers, kv_replicas, policy_of
from terrazzo.plan.planner import plan_graph
from terrazzo.plan.recheck import recheck
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
from terrazzo.verify.kv_comparison import kv_tco_comparison

ROOT = Path(__file__).resolve().parent.parent
SLA = ROOT / "examples/slas/interactive.yaml"
CLUSTER = ROOT / "examples/clusters/hetero.yaml"
CASES = {"tool-loop-agent": "steady-5rps", "chat-agent": "chat-sessions"}


def _specs(agent: str):
    cluster, cat = load_cluster(CLUSTER)
    a = load_agent(ROOT / f"examples/agents/{agent}.yaml", cat)
    return a, load_workload(ROOT / f"examples/workloads/{CASES[agent]}.yaml", a), load_sla(SLA, a), cluster, cat


def _graph(agent: str, reuse: bool = True):
    a, w, s, cluster, cat = _specs(agent)
    return build(a, w, s, cluster, cat, kv_reuse=reuse)


@pytest.mark.parametrize("agent", sorted(CASES))
def test_reuse_lowers_tco_by_a_fifth_at_equal_sla_and_the_reuse_plan_passes_its_simulation(agent):
    r = kv_tco_comparison(ROOT / f"examples/agents/{agent}.yaml", ROOT / f"examples/workloads/{CASES[agent]}.yaml",
                          SLA, CLUSTER)
    # planned to the same SLA; the reuse plan passes the KV-aware simulation (terrazzo/sim/kv_lanes.py).
    # A recompute plan that missed its own would need more to pass, so the ratio only errs high.
    assert r.reuse.sim_verified is True, r.line()
    assert r.reuse.verification[-1]["e2e_at_sla_s"] <= r.reuse.deadline_s
    assert r.ratio <= 0.8, r.line()
    chosen = {op: kv["policy"] for op, kv in r.reuse.kv.items()}
    assert chosen and set(chosen.values()) <= {"retain", "host", "disk"}
    assert all(kv["policy"] == "recompute" for kv in r.recompute.kv.values())


def test_a_prefix_that_waits_long_leaves_hbm_for_a_tier():
    """The chat's prefix waits out the user's think time. At 20 s the replica's HBM beside its batch holds
    what waits; at 20 minutes (60× the bytes parked) it cannot, and the planner offloads to host or disk."""
    from terrazzo.spec.distributions import Dist

    a, w, s, cluster, cat = _specs("chat-agent")
    plans = {}
    for think_s in (20.0, 1200.0):
        wl = w.model_copy(update={"sessions": w.sessions.model_copy(update={"think_time_s": Dist.fixed(think_s)})})
        plans[think_s] = plan_graph(build(a, wl, s, cluster, cat), a.name, with_baselines=False)
    (short,), (long,) = plans[20.0].kv.values(), plans[1200.0].kv.values()
    assert short["policy"] == "retain" and short["tier"] == "HBM" and short["transfer_s"] == 0
    assert long["policy"] in ("host", "disk") and long["transfer_s"] > 0 and long["hold_s"] > 50 * short["hold_s"]
    assert short["saving_usd_h"] > 0 and long["saving_usd_h"] > 0


def test_retaining_takes_room_beside_the_batch_and_can_cost_replicas():
    from terrazzo.spec.distributions import Dist

    a, w, s, cluster, cat = _specs("chat-agent")  # users who think two minutes between turns
    w = w.model_copy(update={"sessions": w.sessions.model_copy(update={"think_time_s": Dist.fixed(120.0)})})
    g = build(a, w, s, cluster, cat)
    o = g.op("reply.prefill")
    retained = [c for c in o.candidates if policy_of(c) == "retain" and c.feasible]
    assert retained
    binds = 0
    for c in retained:
        resident = demand_per_s(g, o.name) * c.kv.byte_s_per_visit  # Little's law: bytes parked on the pool
        need = math.ceil(resident / c.kv.room_bytes)
        assert kv_replicas(g, o.name, c) == max(1, need)
        assert dedicated_replicas(g, o.name, c) >= need
        binds += need > throughput_replicas(demand_per_s(g, o.name) / c.rate_per_s, g.utilisation_cap)
    assert binds > 0  # somewhere the KV room, not the compute, sizes the pool
    # a bigger batch leaves less room to retain in
    by_batch = sorted((c.batch, c.kv.room_bytes) for c in retained if c.device == retained[0].device
                      and c.tp == retained[0].tp and c.pp == retained[0].pp)
    assert all(r1 >= r2 for (_, r1), (_, r2) in itertools.pairwise(by_batch))


def test_offloading_pays_the_transfer_back_on_the_first_token():
    g = _graph("chat-agent")
    tiers = catalog_tiers(load_cluster(CLUSTER)[1])
    o = g.op("reply.prefill")
    assert any(policy_of(c) == "host" for c in o.candidates)
    for host in (c for c in o.candidates if policy_of(c) == "host"):
        link = tiers(host.device)[0]
        twin = next(c for c in o.candidates if policy_of(c) == "retain" and (c.device, c.tp, c.pp, c.batch) ==
                    (host.device, host.tp, host.pp, host.batch))
        bytes_back = host.batch * host.kv.kv_bytes
        assert host.kv.transfer_s == pytest.approx(link.latency_s + bytes_back / (link.bw_bytes_s * host.devices))
        assert host.first_token_s - twin.first_token_s == pytest.approx(host.kv.hit_rate * host.kv.transfer_s)


def test_recompute_pays_the_full_prefill_and_reuse_prices_new_tokens_over_the_whole_context():
    on, off = _graph("tool-loop-agent"), _graph("tool-loop-agent", reuse=False)
    o_on, o_off = on.op("think.prefill"), off.op("think.prefill")
    assert all(policy_of(c) == "recompute" for c in o_off.candidates)
    for c in (c for c in o_on.candidates if policy_of(c) == "retain"):
        cold = next(x for x in o_off.candidates if (x.device, x.tp, x.pp, x.batch) == (c.device, c.tp, c.pp, c.batch)
                    and x.kv is not None)
        assert c.latency_s < cold.latency_s and c.rate_per_s > cold.rate_per_s
        assert c.kv.saved_s == pytest.approx(cold.latency_s - c.latency_s, rel=1e-6)


def test_agents_without_a_prefix_plan_as_before():
    cluster, cat = load_cluster(CLUSTER)
    a = load_agent(ROOT / "examples/agents/langchain-agent.yaml", cat)
    w, s = load_workload(ROOT / "examples/workloads/steady-5rps.yaml", a), load_sla(SLA, a)
    g = build(a, w, s, cluster, cat)
    assert all(c.kv is None for o in g.ops for c in o.candidates)
    doc = plan_graph(g, a.name, with_baselines=False).to_json()
    assert all("kv" not in op for op in doc["ops"]) and not any("-kv-" in p["name"] for p in doc["pools"])


def test_a_call_whose_conversation_comes_from_an_earlier_llm_call_always_hits():
    """One visit per request and no shared prompt, yet a conversation in front (the planner's first call made
    it): every visit reuses it (this once divided by a zero hit rate)."""
    from terrazzo.spec.spec_loader import agent_from_text

    cluster, cat = load_cluster(CLUSTER)
    a = agent_from_text("""
name: plan-then-answer
nodes:
  - {id: plan, kind: llm, model: llama-3-8b, input_tokens: 800, output_tokens: 100}
  - {id: answer, kind: llm, model: llama-3-8b, input_tokens: 200, output_tokens: 100,
     prefix: [{source: conversation}]}
edges:
  - {from: plan, to: answer}
""")
    g = build(a, load_workload(ROOT / "examples/workloads/steady-5rps.yaml", a), load_sla(SLA, a), cluster, cat)
    reuse = [c.kv for o in g.ops if o.name.startswith("answer.") for c in o.candidates if c.kv is not None]
    assert reuse and all(k.hit_rate == 1.0 for k in reuse)
    assert not any(c.kv for o in g.ops if o.name.startswith("plan.") for c in o.candidates)


def _plan_doc(agent: str) -> dict:
    p = plan_graph(_graph(agent), agent, with_baselines=False)
    inputs = {"agent": f"examples/agents/{agent}.yaml", "workload": f"examples/workloads/{CASES[agent]}.yaml",
              "sla": "examples/slas/interactive.yaml", "cluster": "examples/clusters/hetero.yaml"}
    return json.loads(json.dumps(replace(p, inputs=inputs).to_json()))


def test_the_checker_re_prices_the_plan_files_kv_entry_to_the_same_numbers():
    doc = _plan_doc("chat-agent")
    r = recheck(doc, "plan.json", ROOT)
    (op,) = [o for o in doc["ops"] if "kv" in o]
    assert r.kv[op["name"]] == pytest.approx(op["kv"]) and not r.notes
    assert r.usd_h == pytest.approx(doc["tco_usd_h"])
    op["kv"]["saving_usd_h"] += 1.0  # a hand-edited number is replaced by the re-priced one, and said so
    assert any("kv.saving_usd_h" in n for n in recheck(doc, "plan.json", ROOT).notes)


def test_a_kv_policy_the_pools_do_not_run_is_refused():
    doc = _plan_doc("chat-agent")
    i, op = next((i, o) for i, o in enumerate(doc["ops"]) if "kv" in o)
    chosen = op["kv"]["policy"]
    op["kv"]["policy"] = "disk" if chosen != "disk" else "host"  # not what the op's pool was sized for
    with pytest.raises(PlanRejected, match=f"keeps prefixes by '{chosen}' but op '{op['name']}' records"):
        recheck(doc, "plan.json", ROOT)
    op["kv"]["policy"] = "keep-forever"
    with pytest.raises(PlanRejected, match=rf"ops\[{i}\]\.kv\.policy: expected one of retain, host, disk"):
        recheck(doc, "plan.json", ROOT)


def test_plan_explain_shows_each_reusing_edge_and_no_kv_reuse_turns_it_off():
    base = [sys.executable, "-m", "terrazzo.cli", "plan", "examples/agents/tool-loop-agent.yaml", "--workload",
            "examples/workloads/steady-5rps.yaml", "--sla", str(SLA), "--cluster", str(CLUSTER), "--no-verify"]
    on = subprocess.run([*base, "--explain"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert on.returncode == 0, on.stderr
    assert "KV reuse per edge" in on.stdout and "loop iteration → next" in on.stdout and "retain" in on.stdout
    off = subprocess.run([*base, "--no-kv-reuse", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert off.returncode == 0, off.stderr
    doc = json.loads(off.stdout)
    assert [o["kv"]["policy"] for o in doc["ops"] if "kv" in o] == ["recompute"]


def test_the_milps_choice_passes_the_independent_check_under_a_tight_host_tier():
    """With host DRAM too small to park the chat's prefixes, the planner must pick another policy (or
    buy replicas for the room), and the checker agrees with what it picked."""
    from terrazzo.plan.kv_candidates import cost_model_pricer, with_kv_options
    from terrazzo.plan.kv_sites import kv_sites

    a, w, s, cluster, cat = _specs("chat-agent")
    plain = build(a, w, s, cluster, cat, kv_reuse=False)
    tiers = catalog_tiers(cat)

    def tiny_host(device: str):
        host, disk = tiers(device)
        return replace(host, capacity_bytes_per_device=1e6), disk  # 1 MB of host DRAM

    g = with_kv_options(plain, kv_sites(a, w, s, plain), cost_model_pricer(cat, cluster.fabric), tiny_host)
    p = plan_graph(g, a.name, with_baselines=False)
    (kv,) = p.kv.values()
    chosen = next(o for o in p.ops if o.name in p.kv).candidate
    a_of = Assignment({o.name: tuple(Share(g.op(o.name).candidates.index(q.candidate), q.share)
                                       for q in o.placements) for o in p.ops})
    assert check(g, a_of).ok
    if kv["policy"] == "host":  # only with enough replicas to give it room
        assert next(x.replicas for x in p.ops if x.name in p.kv) >= kv_replicas(g, "reply.prefill", chosen)
    else:
        assert kv["policy"] in ("retain", "disk", "recompute")
