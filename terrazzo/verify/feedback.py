"""What the planner learns by simulating its own plan at the planned rate: whether the SLA holds, the
end-to-end latency at the SLA's percentile, each LLM node's TTFT there, and how bursty each op's
arrivals really are. A batched LLM pool releases sequences that started and end together in clumps,
so the ops behind it see arrivals burstier than Poisson, which the planner's queue model assumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.sim.results import report_from
from terrazzo.sim.sim_inputs import model_from_specs
from terrazzo.sim.simulation import SimConfig, Simulation
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload

REQUESTS = 4000  # per check: the p99 from ~40 requests above it
LATENCIES = 10  # and at least this many planned end-to-end latencies, so queues reach their steady state
MAX_DURATION_S = 1800.0


@dataclass(frozen=True)
class Feedback:
    meets_sla: bool
    e2e_at_sla_s: float
    deadline_s: float | None
    ttft_at_sla_s: dict[str, tuple[float, float]]  # LLM node → (TTFT at the percentile, its limit)
    arrival_scv: dict[str, float]                  # op → squared CV of the gaps between its arrivals
    breaks: tuple[str, ...]
    tbt_at_sla_s: dict[str, tuple[float, float]] = field(default_factory=dict)  # LLM node → (TBT, its limit)

    def ttft_misses(self) -> dict[str, float]:
        """LLM node → how far over its limit (1.2 = 20 % over)."""
        return {n: at / limit for n, (at, limit) in self.ttft_at_sla_s.items() if at > limit}

    def tbt_misses(self) -> dict[str, float]:
        return {n: at / limit for n, (at, limit) in self.tbt_at_sla_s.items() if at > limit}


def simulate_plan(plan_json: dict[str, Any], agent: Agent, workload: Workload, sla: Sla, cluster: Cluster,
                  catalog: Catalog, seed: int = 0, trace: Any = None) -> Feedback:
    """Simulate the plan under the workload's own arrivals: Poisson, its gamma burstiness, or its trace
    (`trace`, replayed at the plan's rate)."""
    model = model_from_specs(plan_json, agent, workload, sla, cluster, catalog, "planner check")
    e2e_s = float(plan_json.get("e2e_latency_s") or 0.0)
    duration = min(max(REQUESTS / model.rate_per_s, LATENCIES * e2e_s, 30.0), MAX_DURATION_S)
    a = workload.arrival
    if trace is not None:
        config = SimConfig(duration_s=duration, rate_per_s=model.rate_per_s, arrival="trace", trace=trace, seed=seed)
    elif a.process == "gamma":
        config = SimConfig(duration_s=duration, arrival="gamma", cv=a.cv, seed=seed)
    else:
        config = SimConfig(duration_s=duration, seed=seed)
    sim = Simulation(model, config).run()
    report = report_from(sim)
    ttft = {s.node: (s.ttft_at_sla_s, s.ttft_limit_s) for s in report.llm if s.ttft_limit_s is not None}
    tbt = {s.node: (s.tbt_at_sla_s, s.tbt_limit_s) for s in report.llm
           if s.tbt_limit_s is not None and s.tbt_at_sla_s == s.tbt_at_sla_s}
    return Feedback(report.meets_sla, report.e2e_at_sla_s, report.deadline_s, ttft,
                    {name: _scv(op.pool.visits.submit_s) for name, op in sim.ops.items()}, tuple(report.breaks), tbt)


def _scv(times: Any) -> float:
    gaps = np.diff(np.sort(np.asarray(times, dtype=float)))
    if len(gaps) < 2 or gaps.mean() <= 0:
        return 1.0
    return float(gaps.var() / gaps.mean() ** 2)
