"""The planner's TCO with prefix reuse against the same plan with every prefix recomputed, at equal SLA.

Both plans come from one code path (`verify.replan.verified_plan`, its `kv_reuse` switch), each simulated
at its traffic (the simulator's KV model: terrazzo/sim/kv_lanes.py) and re-planned until it passes.
`bench/bench_kv.py` calls `kv_tco_comparison`; the test suite holds the shipped tool-loop and chat agents
to at least 20 % lower TCO with reuse, the reuse plan passing. When the recompute plan misses its own
simulation the comparison says so: passing would cost recompute more, so the ratio then errs high.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terrazzo.plan.planner import Plan
from terrazzo.verify.replan import verified_plan


@dataclass(frozen=True)
class KvTco:
    """Both plans of one agent and workload, and what reuse saves."""

    agent: str
    workload: str
    reuse: Plan
    recompute: Plan

    @property
    def ratio(self) -> float:
        """Reuse TCO ÷ recompute TCO (0.8 = 20 % lower)."""
        return self.reuse.usd_h / self.recompute.usd_h if self.recompute.usd_h else float("nan")

    @property
    def saving(self) -> float:
        return 1.0 - self.ratio

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "workload": self.workload, "tco_reuse_usd_h": self.reuse.usd_h,
                "tco_recompute_usd_h": self.recompute.usd_h, "ratio": self.ratio, "saving": self.saving,
                "reuse_sim_verified": self.reuse.sim_verified, "recompute_sim_verified": self.recompute.sim_verified,
                "kv": self.reuse.kv}

    def line(self) -> str:
        def ok(p: Plan) -> str:
            return {True: "passes", False: "MISSES", None: "not simulated"}[p.sim_verified]

        return (f"{self.agent} @ {self.workload}: TCO ${self.reuse.usd_h:.2f}/h with reuse ({ok(self.reuse)} its "
                f"simulation) vs ${self.recompute.usd_h:.2f}/h recomputing ({ok(self.recompute)}): "
                f"{self.ratio:.2f}× ({self.saving:.0%} lower)")


def kv_tco_comparison(agent: str | Path, workload: str | Path, sla: str | Path, cluster: str | Path,
                      verify: bool = True, echo: bool = False) -> KvTco:
    """Plan `agent` under `workload`, `sla`, `cluster` (spec files) with and without prefix reuse."""
    from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload

    cluster_spec, cat = load_cluster(cluster, [])
    a = load_agent(agent, cat)
    w, s = load_workload(workload, a), load_sla(sla, a)
    plans = [verified_plan(a, w, s, cluster_spec, cat, verify=verify, workload_path=workload, kv_reuse=reuse)
             for reuse in (True, False)]
    out = KvTco(a.name, Path(workload).stem, plans[0], plans[1])
    if echo:
        print(out.line())
    return out
