"""What the planner learns by simulating its own plan at the planned rate: whether the SLA holds, the
end-to-end latency at the SLA's percentile, each LLM node's TTFT there, and how bursty each op's
arrivals really are. A batched LLM pool releases sequences that started and end together in clumps,
so the ops behind it see arrivals burstier than Poisson, which the planner's queue model assumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.cost.candidates import deployment
from terrazzo.cost.reuse_calibration import read_term
from terrazzo.plan.fleet_model import first_token_attainable, pool_key
from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, PlanOp
from terrazzo.sim.pools import LlmPool
from terrazzo.sim.results import report_from
from terrazzo.sim.service_times import LlmCost
from terrazzo.sim.sim_inputs import model_from_specs
from terrazzo.sim.simulation import LlmStage, SimConfig, Simulation
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload
from terrazzo.verify.queue_replay import PoolShape, effective_clump, modelled_replicas, replicas_needed

REQUESTS = 4000  # per check: the p99 from ~40 requests above it
VISIT_BUDGET = 200_000  # op visits per check: agents of up to 50 op visits a request get all REQUESTS
MIN_REQUESTS = 200  # and never fewer: the p99 still read off measured requests, 2 of them above it
HOLDS = 10  # the window spans at least this many of the plan's longest op latency: every pool's queue
#            forgets its empty start
DRAIN_LATENCIES = 4  # the run drains for this many planned end-to-end latencies, so measured requests finish
MAX_DURATION_S = 1800.0
REPLAY_MAX_FACTOR = 32  # a pool over its TTFT limit is replayed at up to this many times its replicas
ALTERNATIVES = 2  # other candidates of a node over its TTFT limit replayed on the same arrivals


def check_window(plan_json: dict[str, Any], rate_per_s: float) -> tuple[float, float]:
    """(duration, drain) in seconds of the check's simulation: how many requests it needs, and for how
    long after the last of them it runs.

    The verdict reads percentiles (end-to-end, each LLM node's TTFT and TBT) over the requests that
    arrive in the measured window. How precise a percentile is depends on how many requests it is
    read from, not on how many ops each one visits, while the simulation's cost is requests × op
    visits. So a check simulates REQUESTS requests, fewer for agents whose requests visit many ops
    (VISIT_BUDGET op visits in all), never fewer than MIN_REQUESTS: at p99 then at least two measured
    requests lie above the percentile, the least for which it is an order statistic and not the
    maximum. The request count thus stays bounded however long the chain (a check costs time linear
    in its ops), where a window of 10 end-to-end latencies grew with the chain: 36,000 requests for a
    1,000-op chain whose end-to-end latency is 530 s.

    Queues reach their steady state within a few of their own service times, not within end-to-end
    latencies: a pool deep in a long chain sees the same arrival window as the first one, shifted by
    the latency before it. So the window spans HOLDS of the plan's longest op latency (the longest
    hold of any pool), and the run drains for DRAIN_LATENCIES planned end-to-end latencies so that
    the measured requests finish; a request still in the system at the end counts against the plan."""
    ops = plan_json.get("ops") or []
    visits = sum(float(o.get("visits") or 1.0) for o in ops) or 1.0
    requests = max(MIN_REQUESTS, min(REQUESTS, int(VISIT_BUDGET / visits)))
    longest_s = max((float(o.get("latency_s") or 0.0) for o in ops), default=0.0)
    duration = min(max(requests / max(rate_per_s, 1e-9), HOLDS * longest_s), MAX_DURATION_S)
    e2e_s = float(plan_json.get("e2e_latency_s") or 0.0)
    return duration, max(4 * duration + 60.0, DRAIN_LATENCIES * e2e_s)


@dataclass(frozen=True)
class Feedback:
    meets_sla: bool
    e2e_at_sla_s: float
    deadline_s: float | None
    ttft_at_sla_s: dict[str, tuple[float, float]]  # LLM node → (TTFT at the percentile, its limit)
    arrival_scv: dict[str, float]                  # op → squared CV of the gaps between its arrivals
    breaks: tuple[str, ...]
    tbt_at_sla_s: dict[str, tuple[float, float]] = field(default_factory=dict)  # LLM node → (TBT, its limit)
    arrival_clump: dict[str, float] = field(default_factory=dict)  # LLM node over its TTFT limit → the clump its
    #                                                                replayed arrivals need (verify/queue_replay.py)

    def ttft_misses(self) -> dict[str, float]:
        """LLM node → how far over its limit (1.2 = 20 % over)."""
        return {n: at / limit for n, (at, limit) in self.ttft_at_sla_s.items() if at > limit}

    def tbt_misses(self) -> dict[str, float]:
        return {n: at / limit for n, (at, limit) in self.tbt_at_sla_s.items() if at > limit}


def simulate_plan(plan_json: dict[str, Any], agent: Agent, workload: Workload, sla: Sla, cluster: Cluster,
                  catalog: Catalog, seed: int = 0, trace: Any = None,
                  edge_bytes: dict[tuple[str, str], float] | None = None,
                  graph: PlanningGraph | None = None) -> Feedback:
    """Simulate the plan under the workload's own arrivals: Poisson, its gamma burstiness, or its trace
    (`trace`, replayed at the plan's rate), over `check_window`. `edge_bytes`: the planning graph's
    bytes per edge, when the caller holds the graph (else the simulator rebuilds it from the specs).
    With the planning `graph`, each first-token op over its TTFT limit is replayed alone on the
    arrivals it got, for the burstiness its sizing needs (`arrival_clump`)."""
    model = model_from_specs(plan_json, agent, workload, sla, cluster, catalog, "planner check")
    if edge_bytes is not None:
        model = replace(model, edge_bytes=edge_bytes)
    duration, drain = check_window(plan_json, model.rate_per_s)
    a = workload.arrival
    if trace is not None:
        config = SimConfig(duration_s=duration, rate_per_s=model.rate_per_s, arrival="trace", trace=trace, seed=seed,
                           drain_s=drain, record_arrivals=graph is not None)
    elif a.process == "gamma":
        config = SimConfig(duration_s=duration, arrival="gamma", cv=a.cv, seed=seed, drain_s=drain,
                           record_arrivals=graph is not None)
    else:
        config = SimConfig(duration_s=duration, seed=seed, drain_s=drain, record_arrivals=graph is not None)
    sim = Simulation(model, config).run()
    report = report_from(sim)
    ttft = {s.node: (s.ttft_at_sla_s, s.ttft_limit_s) for s in report.llm if s.ttft_limit_s is not None}
    tbt = {s.node: (s.tbt_at_sla_s, s.tbt_limit_s) for s in report.llm
           if s.tbt_limit_s is not None and s.tbt_at_sla_s == s.tbt_at_sla_s}
    clumps = _arrival_clumps(sim, graph, config.warmup) if graph is not None else {}
    return Feedback(report.meets_sla, report.e2e_at_sla_s, report.deadline_s, ttft, _arrival_scvs(sim),
                    tuple(report.breaks), tbt, clumps)


def _arrival_clumps(sim: Simulation, graph: PlanningGraph, warm_from_s: float) -> dict[str, float]:
    """LLM node over its TTFT limit → the arrival clump at which the planner's queue model needs the
    replicas that its first-token op's recorded arrivals, replayed through its pool alone, need to meet
    the limit. Ops split over pools, routed by KV affinity, or unfixable by replicas are left to the
    target tightening."""
    out: dict[str, float] = {}
    for st in sim.llm_stages:
        op = st.agg or st.pre
        limit = st.ttft_limit_s
        ttft = np.frombuffer(st.calls["ttft_s"], dtype=np.float64) if len(st.calls["ttft_s"]) else None
        if (op is None or limit is None or ttft is None or not isinstance(op.pool, LlmPool)
                or len(st.routers["aggregated" if st.agg is not None else "prefill"].choices) > 1
                or op.name not in graph._by_name or np.percentile(ttft, graph.percentile) <= limit):
            continue
        o = graph.op(op.name)
        cand = next((c for c in o.candidates if pool_key(o, c).name == op.planned.pool), None)
        if cand is None:
            continue
        need = replicas_needed(op.pool, limit, graph.percentile, warm_from_s, REPLAY_MAX_FACTOR * op.pool.replicas)
        if need is None or need <= op.pool.replicas:
            continue
        share = op.planned.share
        clump = effective_clump(graph, op.name, cand, share, need)
        for alt in _alternatives(graph, o, cand, share, clump):  # what the re-plan would take instead
            shape = _shape(sim, st, op.pool, alt)
            guess = modelled_replicas(graph, op.name, alt, share, clump)
            alt_need = replicas_needed(op.pool, limit, graph.percentile, warm_from_s,
                                       REPLAY_MAX_FACTOR * max(guess, 1), shape, guess)
            if alt_need is not None:
                clump = max(clump, effective_clump(graph, op.name, alt, share, alt_need))
        out[o.node] = clump
    return out


def _alternatives(graph: PlanningGraph, o: PlanOp, cand: OpCandidate, share: float,
                  clump: float) -> list[OpCandidate]:
    """The ALTERNATIVES cheapest other candidates of `o` at the clump its own pool's replay asked for:
    the ones the re-plan would move to. Only those the replay can build from the same pool (same engine,
    no prefix reuse), which the queue model would otherwise size from a clump calibrated on another pool:
    the re-plan then picks exactly the candidates for which the model reads low."""
    def replayable(c: OpCandidate) -> bool:
        return (c is not cand and c.feasible and c.device in graph.cluster_devices and c.first_token_s is not None
                and c.engine == cand.engine and c.engine_version == cand.engine_version
                and (c.kv is None or c.kv.policy == "recompute") and first_token_attainable(graph, o.name, c))

    priced = sorted((c.usd_h * modelled_replicas(graph, o.name, c, share, clump), i)
                    for i, c in enumerate(o.candidates) if replayable(c))
    return [o.candidates[i] for _, i in priced[:ALTERNATIVES]]


def _shape(sim: Simulation, st: LlmStage, pool: LlmPool, c: OpCandidate) -> PoolShape:
    """Candidate `c` as a pool of the simulator (simulation._build_pools' construction, same scheduler but
    for its batch)."""
    spec = st.spec
    dep = deployment(sim.model.catalog, spec.model, c.device, spec.dtype, c.tp, c.pp, sim.fabric)
    cost = LlmCost(dep, read=read_term(sim.model.catalog, dep))
    sched = replace(pool.sched, max_num_seqs=max(1, c.batch))
    budget = c.batch * st.isl_mean if pool.mode == "prefill" else sched.max_batched_tokens
    return PoolShape(f"{pool.name}→{c.label}", pool.mode, cost, c.pp, c.batch, budget,
                     cost.kv_capacity_tokens(c.batch), sched)


def _arrival_scvs(sim: Simulation) -> dict[str, float]:
    """Op → the squared CV of its pool's arrival gaps, computed once per pool: the ops sharing a pool
    (every tool of a long chain on one CPU pool) read the same arrivals, and sorting them per op took
    4.5 s of a 1,000-op check."""
    by_pool: dict[int, float] = {}
    out = {}
    for name, op in sim.ops.items():
        key = id(op.pool)
        if key not in by_pool:
            by_pool[key] = _scv(op.pool.visits.submit_s)
        out[name] = by_pool[key]
    return out


def _scv(times: Any) -> float:
    gaps = np.diff(np.sort(np.asarray(times, dtype=float)))
    if len(gaps) < 2 or gaps.mean() <= 0:
        return 1.0
    return float(gaps.var() / gaps.mean() ** 2)
