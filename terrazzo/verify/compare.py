"""What-if comparisons: the same agent and workload planned under several clusters, price profiles or
SLAs, or one owned cluster with each device type to buy, as one table (TCO, capex, devices, simulated
p99 and energy per option), cheapest first, with an optional figure.

Each option is an ordinary `terrazzo plan` (same planner, checker and simulate-and-replan loop), so a
row and a separate plan run on the same inputs agree to the cent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from rich.table import Table

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.errors import PlanInfeasible, SpecError
from terrazzo.plan.planner import Plan
from terrazzo.spec.agent import Agent
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload

SIM_REQUESTS = 4000  # per option: the p99 from ~40 requests above it
SIM_MAX_S = 600.0


@dataclass(frozen=True)
class Option:
    label: str
    sla: Sla
    cluster: Cluster
    catalog: Catalog


@dataclass(frozen=True)
class Row:
    option: Option
    plan: Plan | None
    error: str = ""
    p99_s: float = math.nan
    at_sla_s: float = math.nan
    meets_sla: bool | None = None

    @property
    def devices(self) -> str:
        if self.plan is None or self.plan.fleet is None:
            return "-"
        return " + ".join(f"{line.used} {line.device}" for line in self.plan.fleet.lines if line.used)

    def to_json(self) -> dict[str, Any]:
        p = self.plan
        return {"option": self.option.label, "feasible": p is not None, "error": self.error or None,
                "tco_usd_h": p.usd_h if p else None, "capex_usd": p.fleet.capex_usd if p and p.fleet else None,
                "devices": self.devices, "bought": {line.device: line.bought for line in p.fleet.lines if line.bought}
                if p and p.fleet else {}, "e2e_p99_s": _finite(self.p99_s), "e2e_at_sla_s": _finite(self.at_sla_s),
                "meets_sla": self.meets_sla, "energy_j_per_request": p.energy_j_per_request if p else None,
                "power_kw": p.power_kw if p else None}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def buy_options(cluster: Cluster, catalog: Catalog, devices: list[str]) -> list[tuple[str, Cluster]]:
    """The cluster once per device type to buy: its accelerators in `buy` replaced by that one (CPU
    types it may buy stay); an inventory cluster becomes own-and-buy."""
    if not cluster.inventory:
        raise SpecError(f"--buy compares what to add to owned devices, but cluster '{cluster.name}' has no "
                        f"inventory; use mode: inventory or own-and-buy (docs/clusters.md)")
    cpus = [d for d in cluster.buy if catalog.device(d).kind == "cpu"]
    out = []
    for d in devices:
        name = catalog.device(d).name
        out.append((f"buy {name}", cluster.model_copy(update={"mode": "own-and-buy", "buy": [name, *cpus]})))
    return out


def options(clusters: list[tuple[str, Cluster, Catalog]], slas: list[tuple[str, Sla]], price_profiles: list[str],
            buy: list[str]) -> list[Option]:
    """Every combination of the given clusters, SLAs, price profiles and devices to buy."""
    out = []
    for (c_label, cluster, cat), (s_label, sla) in product(clusters, slas):
        variants = buy_options(cluster, cat, buy) if buy else [(c_label, cluster)]
        for (v_label, variant), price in product(variants, price_profiles or [None]):  # type: ignore[list-item]
            if price is not None:
                cat.price_usd(cat.device(variant.device_types[0]).name, price)  # unknown profile: clear error
                variant = variant.model_copy(update={"price_profile": price})
            parts = [v_label if len(clusters) > 1 or buy else "", s_label if len(slas) > 1 else "",
                     f"prices {price}" if price else ""]
            out.append(Option(" · ".join(p for p in parts if p) or c_label, sla, variant, cat))
    return out


def compare(agent: Agent, workload: Workload, opts: list[Option], verify: bool = True,
            sim_requests: int = SIM_REQUESTS, seed: int = 0) -> list[Row]:
    """Plan every option on the same agent and workload, simulate each plan for its p99; cheapest first,
    infeasible options last with their reason."""
    from terrazzo.verify.replan import verified_plan

    rows = []
    for opt in opts:
        try:
            plan = verified_plan(agent, workload, opt.sla, opt.cluster, opt.catalog, verify=verify)
        except PlanInfeasible as exc:
            rows.append(Row(opt, None, str(exc)))
            continue
        rows.append(_simulated(Row(opt, plan), agent, workload, sim_requests, seed))
    return sorted(rows, key=lambda r: (r.plan is None, r.plan.usd_h if r.plan else 0.0))


def _simulated(row: Row, agent: Agent, workload: Workload, requests: int, seed: int) -> Row:
    from terrazzo.sim.results import report_from
    from terrazzo.sim.sim_inputs import model_from_specs
    from terrazzo.sim.simulation import SimConfig, Simulation

    assert row.plan is not None
    opt = row.option
    model = model_from_specs(row.plan.to_json(), agent, workload, opt.sla, opt.cluster, opt.catalog, "compare")
    duration = min(max(requests / max(model.rate_per_s, 1e-9), 30.0), SIM_MAX_S)
    report = report_from(Simulation(model, SimConfig(duration_s=duration, seed=seed)).run())
    return Row(opt, row.plan, "", report.e2e.p99_s, report.e2e_at_sla_s, report.meets_sla)


def compare_table(rows: list[Row], agent: str, rate_per_s: float) -> Table:
    pct = next((f"p{r.plan.percentile:g}" for r in rows if r.plan), "p99")
    t = Table("option", "TCO $/h", "capex $", "devices", "E2E p99 s (sim)", f"E2E {pct} s (SLA)", "J/request",
              "kW", "SLA in sim", title=f"compare: {agent} at {rate_per_s:g} req/s, same inputs, cheapest first")
    for r in rows:
        p = r.plan
        if p is None:
            t.add_row(r.option.label, "-", "-", "-", "-", "-", "-", "-", f"[red]infeasible[/]: {r.error}")
            continue
        capex = p.fleet.capex_usd if p.fleet else math.nan
        sla = f"{r.at_sla_s:.2f}" + (f" ≤ {p.deadline_s:g}" if p.deadline_s else "")
        t.add_row(r.option.label, f"{p.usd_h:.2f}", f"{capex:,.0f}", r.devices, f"{r.p99_s:.2f}", sla,
                  f"{p.energy_j_per_request:,.0f}", f"{p.power_kw:.1f}",
                  "[green]met[/]" if r.meets_sla else "[red]missed[/]")
    return t


def compare_figure(rows: list[Row], path: Path, agent: str) -> Path:
    """TCO $/h per option (bars) with capex and p99 written on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.plan is not None]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(ok)), 4))
    labels = [r.option.label for r in ok]
    values = [r.plan.usd_h for r in ok if r.plan]
    ax.bar(labels, values, color="#4c72b0")
    for i, r in enumerate(ok):
        assert r.plan is not None
        capex = r.plan.fleet.capex_usd if r.plan.fleet else 0.0
        ax.text(i, values[i], f"${capex / 1e3:,.0f}k capex\np99 {r.p99_s:.1f} s", ha="center", va="bottom",
                fontsize=7)
    ax.set_ylabel("TCO $/h")
    ax.set_title(f"{agent}: what-if comparison (same inputs)")
    ax.set_ylim(0, max(values, default=1.0) * 1.25)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
