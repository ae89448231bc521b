"""Decisions a fleet owner reads: keep or buy (rows that sum to the headline, idle owned devices, a bill
of materials), what-if comparisons against separate plan runs, power limits, utilisation-weighted
energy, the cost/latency/energy front (against brute force, and on the voice agent with every point
simulated), day plans over a diurnal curve, the schedule driving serve's controller, and `simulate`
judging the SLA at its own percentile."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import math
import types
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from terrazzo.cli import app
from terrazzo.cost.energy import PowerCurve
from terrazzo.cost.tco import HourlyCost
from terrazzo.errors import SpecError
from terrazzo.plan.check import Assignment, check, fleet_usd_h
from terrazzo.plan.from_ir import build
from terrazzo.plan.planning_graph import OpCandidate, PlanEdge, PlanningGraph, PlanOp
from terrazzo.plan.power import fleet_power_kw
from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
from terrazzo.verify.compare import compare, options
from terrazzo.verify.pareto import all_metrics, dominates, non_dominated, sweep
from terrazzo.verify.replan import verified_plan

ROOT = Path(__file__).resolve().parent.parent
OWNED = ROOT / "examples" / "owned"
VOICE = (ROOT / "examples/agents/voice-agent.yaml", ROOT / "examples/workloads/steady-200rps.yaml",
         ROOT / "examples/slas/interactive.yaml", ROOT / "examples/clusters/hetero.yaml")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables unwrapped, so the tests read whole labels."""
    from rich.console import Console

    monkeypatch.setattr("terrazzo.cli.console", Console(width=250))


def _owned_specs(cluster: Path = OWNED / "owned-a100-l40s.yaml"):
    spec, cat = load_cluster(cluster)
    agent = load_agent(OWNED / "coding-agent.yaml", cat)
    wl, sla = load_workload(OWNED / "coding-15rps.yaml", agent), load_sla(OWNED / "coding-sla.yaml", agent)
    return agent, wl, sla, spec, cat


# --- cluster formats and the catalog --------------------------------------------------------------
@pytest.mark.parametrize(("body", "where", "says"), [
    ("devices: [{a100: 16}]\n", "devices", "'devices' is a list of device type names"),
    ("mode: inventory\ninventory: [a100, l40s]\n", "inventory", "'inventory' maps device type to a whole count"),
    ("inventory: {a100: 16}\n", "", "'inventory' needs mode: inventory"),
    ("mode: own-and-buy\ninventory: {a100: 16}\n", "", "mode own-and-buy needs 'buy'"),
])
def test_a_wrong_cluster_shape_says_the_format(tmp_path: Path, body: str, where: str, says: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("name: mine\n" + body)
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    text = str(info.value)
    assert says in text and (not where or f": {where}: " in text)
    assert ("valid string" not in text and "docs/clusters.md" in text) or "e.g." in text


def test_inventory_as_a_list_of_pairs_reads_as_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("mode: inventory\ninventory: [{a100: 16}, {l40s: 8}]\n")
    assert load_cluster(path)[0].inventory == {"a100": 16, "l40s": 8}


def test_every_device_has_a_sourced_idle_power_below_its_tdp() -> None:
    cat = load_cluster(VOICE[3])[1]
    for d in cat.devices.values():
        assert d.idle_w is not None, d.name
        assert d.idle_w.source.startswith(("http", "derived:", "measured:", "paper:"))
        assert 0 < d.idle_w.value < d.tdp_w.value


# --- keep or buy ------------------------------------------------------------------------------------
def test_owned_example_rows_sum_to_the_headline_with_idle_owned_devices_and_a_bom(tmp_path: Path) -> None:
    args = ["plan", str(OWNED / "coding-agent.yaml"), "--workload", str(OWNED / "coding-15rps.yaml"), "--sla",
            str(OWNED / "coding-sla.yaml"), "--cluster", str(OWNED / "owned-a100-l40s.yaml"), "--no-verify",
            "-o", str(tmp_path / "plan.json"), "--bom", str(tmp_path / "bom")]
    res = runner.invoke(app, [*args, "--figure", str(tmp_path / "plan.png")])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "keep or buy (own-and-buy)" in out and "TCO (sum of the rows)" in out and "idle owned" in out
    assert "owned devices are sunk: power + operations only" in out
    assert "cannot apply: h100-sxm is not in the cluster" in out and "solver: Infeasible" not in out
    doc = json.loads((tmp_path / "plan.json").read_text())
    fleet = doc["fleet"]
    assert math.isclose(sum(r["usd_h"] for r in fleet["rows"]), doc["tco_usd_h"], rel_tol=1e-12)
    assert math.isclose(sum(o["usd_h"] for o in doc["ops"]), doc["tco_usd_h"], rel_tol=1e-9)
    assert f"TCO ${doc['tco_usd_h']:.2f}/h" in out
    assert sum(fleet["idle_owned"].values()) >= 1
    lines = {line["device"]: line for line in fleet["lines"]}
    assert lines["a100-80gb-sxm"]["owned"] == 16 and lines["l40s"]["owned"] == 8
    assert all(line["used_owned"] + line["idle_owned"] == line["owned"] for line in lines.values())
    bought = {d: line["bought"] for d, line in lines.items() if line["bought"]}
    assert bought and set(bought) <= {"h200-sxm"}
    assert math.isclose(fleet["capex_usd"], sum(line["bought"] * line["unit_price_usd"] for line in lines.values()))
    # the BOM, both files, says the same
    bom = json.loads((tmp_path / "bom.json").read_text())
    assert bom["schema"] == "terrazzo.bom/v1" and math.isclose(bom["capex_usd"], fleet["capex_usd"])
    with (tmp_path / "bom.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["device"], r["action"]) for r in rows} >= {("h200-sxm", "buy")} | {
        (d, "owned, idle") for d in fleet["idle_owned"]}
    assert math.isclose(sum(float(r["usd_h"]) for r in rows), doc["tco_usd_h"], abs_tol=1e-4 * len(rows))


def test_fleet_rows_match_the_checkers_price_in_every_mode() -> None:
    agent, wl, sla, cluster, cat = _owned_specs()
    for mode in ("own-and-buy", "inventory", "unconstrained"):
        c = cluster if mode == "own-and-buy" else (
            cluster.model_copy(update={"mode": "inventory", "buy": [], "inventory": {**cluster.inventory, "h200": 64}})
            if mode == "inventory" else
            cluster.model_copy(update={"mode": "unconstrained", "inventory": {}, "buy": [],
                                       "devices": ["a100", "l40s", "h200", "epyc-9654"]}))
        plan = verified_plan(agent, wl, sla, c, cat, verify=False)
        graph = build(agent, wl, sla, c, cat)
        used = {line.device: line.used for line in plan.fleet.lines if line.used}
        assert math.isclose(plan.fleet.usd_h, fleet_usd_h(graph, used), rel_tol=1e-12), mode
        assert math.isclose(sum(plan.op_usd_h().values()), plan.usd_h, rel_tol=1e-9), mode


def test_compare_buy_matches_separate_plan_runs_and_their_order(tmp_path: Path) -> None:
    agent, wl, sla, cluster, cat = _owned_specs()
    rows = compare(agent, wl, options([("owned", cluster, cat)], [("sla", sla)], [], ["h200", "mi300x", "b200"]),
                   verify=False, sim_requests=300)
    assert [r.plan is not None for r in rows] == [True] * 3
    separate = {}
    for device in ("h200-sxm", "mi300x", "b200"):  # what a user would do by hand: edit `buy`, run `plan`
        doc = yaml.safe_load((OWNED / "owned-a100-l40s.yaml").read_text()) | {"buy": [device]}
        path = tmp_path / f"buy-{device}.yaml"
        path.write_text(yaml.safe_dump(doc))
        a, w, s, c, k = _owned_specs(path)
        separate[device] = verified_plan(a, w, s, c, k, verify=False).usd_h
    for r in rows:
        device = r.option.label.removeprefix("buy ")
        assert math.isclose(r.plan.usd_h, separate[device], rel_tol=1e-9), device
        assert r.plan.fleet.capex_usd > 0 and math.isfinite(r.p99_s) and r.plan.energy_j_per_request > 0
    assert [r.option.label.removeprefix("buy ") for r in rows] == sorted(separate, key=separate.__getitem__)


# --- power: utilisation-weighted energy and limits --------------------------------------------------
def _tiny_graph(rate: float = 10.0, deadline: float | None = 1.0, max_kw: float | None = None) -> PlanningGraph:
    """Two ops in a chain, three device types with different speed, price and power."""
    costs = {"fast": HourlyCost("fast", 2.0, 0.5, 0.0, 30000), "cheap": HourlyCost("cheap", 0.6, 0.2, 0.0, 9000),
             "eco": HourlyCost("eco", 1.0, 0.1, 0.0, 15000)}
    power = {"fast": PowerCurve(100, 700), "cheap": PowerCurve(80, 400), "eco": PowerCurve(20, 150)}
    def cands(scale: float) -> tuple[OpCandidate, ...]:
        return (OpCandidate("fast", 1, 1, 1, 0.05 * scale, 20.0, 1, 2.5),
                OpCandidate("fast", 2, 1, 1, 0.03 * scale, 35.0, 2, 5.0),
                OpCandidate("cheap", 1, 1, 1, 0.2 * scale, 6.0, 1, 0.8),
                OpCandidate("eco", 1, 1, 1, 0.3 * scale, 8.0, 1, 1.1))
    ops = (PlanOp("a", "compute", "a", 1.0, cands(1.0)), PlanOp("b", "compute", "b", 1.5, cands(0.8)))
    return PlanningGraph(ops, (PlanEdge("a", "b", 1e3),), (), rate, deadline, 0.8, math.inf, costs,
                         {d: 12.5e9 for d in costs}, 5e-6, tuple(costs), power=power, pue=1.2, max_kw=max_kw)


def test_power_is_utilisation_weighted_between_idle_and_tdp() -> None:
    g = _tiny_graph()
    v = check(g, Assignment.of({"a": 2, "b": 0}))
    kw = fleet_power_kw(g, v.pools)
    n_a = next(p.replicas for p in v.pools.values() if p.key.device == "cheap")
    assert n_a == math.ceil(10.0 / 6.0 / 0.8)
    u_a, u_b = 10.0 / (n_a * 6.0), 15.0 / 20.0
    expect = n_a * (80 + u_a * 320) + (100 + u_b * 600)
    assert math.isclose(kw * 1e3, expect)
    assert n_a * 80 + 100 < kw * 1e3 < n_a * 400 + 700


def test_max_kw_and_max_devices_bind_in_the_milp_and_the_checker() -> None:
    bound = 0
    for rate, deadline in ((10.0, 1.0), (4.0, 0.7), (16.0, 2.0), (10.0, 0.5)):
        g = _tiny_graph(rate, deadline)
        brute = _brute_force(g)
        free = sweep(g, ("cost",))[0]
        kws = sorted({m[2] * rate / g.pue / 1e3 for _, m in brute})
        for cap in kws:  # every power level a placement reaches: the MILP's optimum under it is brute force's
            if cap >= free.power_kw:
                continue
            bound += 1
            best = min(m[0] for _, m in brute if m[2] * rate / g.pue / 1e3 <= cap * (1 + 1e-9))
            capped = sweep(_tiny_graph(rate, deadline, max_kw=cap * (1 + 1e-9)), ("cost",))
            assert capped and capped[0].power_kw <= cap * (1 + 1e-6)
            assert math.isclose(capped[0].usd_h, best, rel_tol=1e-9) and capped[0].usd_h >= free.usd_h
            over = check(_tiny_graph(rate, deadline, max_kw=cap), free.assignment)
            assert any("max_kw" in v for v in over.violations)
    assert bound >= 1
    g = replace(_tiny_graph(), max_devices=1)
    free = sweep(_tiny_graph(), ("cost",))[0]
    verdict = check(g, free.assignment)
    assert sum(verdict.devices.values()) > 1 and any("max_devices" in v for v in verdict.violations)
    assert not sweep(g, ("cost",))  # one device cannot carry both ops: the MILP finds no plan either


def test_a_power_limit_on_the_voice_agent_gives_a_plan_under_it() -> None:
    cluster, cat = load_cluster(VOICE[3])
    agent = load_agent(VOICE[0], cat)
    wl, sla = load_workload(VOICE[1], agent), load_sla(VOICE[2], agent)
    base = verified_plan(agent, wl, sla, cluster, cat, verify=False)
    limit = base.power_kw * 0.95  # the least-power plan of this instance draws 0.92× the cheapest one's
    capped = verified_plan(agent, wl, sla, cluster.model_copy(update={"max_kw": limit}), cat, verify=False)
    assert capped.power_kw <= limit * (1 + 1e-6) and capped.usd_h >= base.usd_h
    assert base.energy_j_per_request > capped.energy_j_per_request


# --- the front ---------------------------------------------------------------------------------------
def _brute_force(g: PlanningGraph) -> list[tuple[Assignment, tuple[float, float, float]]]:
    """Every whole placement (pools sized by the fleet model, as the MILP sizes them)."""
    out = []
    per_op = [[(o.name, k) for k, c in enumerate(o.candidates) if c.feasible] for o in g.ops]
    for combo in itertools.product(*per_op):
        a = Assignment.of(dict(combo))
        m = all_metrics(g, a)
        if m is not None:
            out.append((a, m))
    return out


def test_pareto_points_are_non_dominated_and_epsilon_solves_match_brute_force() -> None:
    objectives = ("cost", "latency", "energy")
    for rate, deadline in ((10.0, 1.0), (4.0, 0.7), (16.0, 2.0)):
        g = _tiny_graph(rate, deadline)
        brute = _brute_force(g)
        front_bf = [m for _, m in brute if not any(dominates(o, m) for _, o in brute)]
        points = non_dominated(sweep(g, objectives, step=0.999, max_levels=30), objectives)
        assert len(points) >= 2
        assert len({p.fleet for p in points}) == len(points)  # distinct fleets
        for p in points:  # every MILP point is on the brute-force front
            m = (p.usd_h, p.latency_s, p.energy_j)
            assert not any(dominates(o, m) for _, o in brute), (rate, m)
        for m in front_bf:  # and every front point's ε-problem has the MILP find its cost (the MILP charges a
            # negligible transfer at its worst case, 1e-5 of the deadline at most: hence the slack on ε_L)
            eps = sweep(replace(g, deadline_s=m[1] + 1e-5 * deadline,
                                max_kw=m[2] * g.rate_per_s / g.pue / 1e3 * (1 + 1e-9)), ("cost",))
            assert eps and eps[0].usd_h <= m[0] * (1 + 1e-9) + 1e-9


def test_voice_agent_front_has_five_simulated_points() -> None:
    from terrazzo.verify.pareto import front

    cluster, cat = load_cluster(VOICE[3])
    agent = load_agent(VOICE[0], cat)
    pts = front(agent, load_workload(VOICE[1], agent), load_sla(VOICE[2], agent), cluster, cat,
                ("cost", "latency", "energy"))
    assert len(pts) >= 5
    assert all(p.plan.sim_verified for p in pts)
    vals = [(p.plan.usd_h, p.plan.e2e_latency_s, p.plan.energy_j_per_request) for p in pts]
    assert not any(dominates(a, b) for a in vals for b in vals if a is not b)
    assert len({json.dumps(p.plan.to_json()["placement"], sort_keys=True) for p in pts}) == len(pts)
    assert (ROOT / "docs/figures/pareto-voice-agent.png").is_file()


# --- day plans ---------------------------------------------------------------------------------------
def test_diurnal_day_plan_autoscales_below_the_peak_fleet_and_meets_the_sla(tmp_path: Path) -> None:
    from terrazzo.verify.day_plan import LEAD_TIME_S, day_plan, day_table, scheduled_ops

    cluster, cat = load_cluster(VOICE[3])
    agent = load_agent(VOICE[0], cat)
    path = ROOT / "examples/workloads/diurnal-voice.yaml"
    wl = load_workload(path, agent)
    rates = wl.rate_curve.rates_per_s
    assert len(rates) * wl.rate_curve.interval_s == 24 * 3600 and max(rates) / min(rates) >= 4
    plan = day_plan(agent, wl, load_sla(VOICE[2], agent), cluster, cat, path.parent, sim_requests=600)
    assert plan.lead_time_s == LEAD_TIME_S == 65.0
    assert plan.schedule_usd < plan.peak_usd
    assert plan.lower_bound_usd <= plan.schedule_usd * (1 + 1e-9)
    assert all(iv.meets_sla for iv in plan.intervals) and plan.meets_sla
    assert max(sum(iv.devices.values()) for iv in plan.intervals) > min(sum(iv.devices.values())
                                                                        for iv in plan.intervals)
    caption = day_table(plan).caption
    assert f"${plan.peak_usd:,.2f}" in caption and f"${plan.schedule_usd:,.2f}" in caption
    doc = plan.to_json()
    (tmp_path / "day.json").write_text(json.dumps(doc))
    night, ops = scheduled_ops(doc, 4 * 3600 + 10)
    assert night == 4 and {o["pool"]: o["replicas"] for o in ops} == doc["intervals"][4]["replicas"]
    _, early = scheduled_ops(doc, 9 * 3600 - LEAD_TIME_S / 2)  # inside the lead time: already the next size
    assert {o["pool"]: o["replicas"] for o in early} == {
        k: max(v, doc["intervals"][8]["replicas"][k]) for k, v in doc["intervals"][9]["replicas"].items()}


def test_the_schedule_drives_the_controller_advisory_and_active(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from terrazzo.runtime.backends.local import LocalBackend
    from terrazzo.runtime.config import RunConfig
    from terrazzo.runtime.pool_layout import PoolSpec
    from terrazzo.server.controller import Controller, PlanState
    from terrazzo.server.settings import ControllerSettings
    from terrazzo.verify.day_plan import DAY_SCHEMA

    doc = {"schema": DAY_SCHEMA, "interval_s": 3600.0, "lead_time_s": 65.0,
           "pools": {"cpu-tp1-pp1": {"device": "cpu", "ops": ["work"]}},
           "intervals": [{"rate_per_s": 1.0 + i, "replicas": {"cpu-tp1-pp1": 1 + (i >= 12)}} for i in range(24)]}

    async def go(advisory: bool) -> tuple[dict, int]:
        config = RunConfig(state_dir=str(tmp_path), warmup=False, max_workers_per_pool=4)
        backend = LocalBackend(config, {"cpu-tp1-pp1": PoolSpec("cpu-tp1-pp1", "cpu", 1, ("work",))})
        await backend.start()
        try:
            runtime = types.SimpleNamespace(backend=backend, config=config)
            ctl = Controller("a", runtime, PlanState("f", None, None), ControllerSettings(advisory=advisory), None,
                             "off", schedule_doc=doc, time_of_day=lambda: 12 * 3600 + 5.0)
            rec = await ctl.step()
            return rec, backend.load()["cpu-tp1-pp1"]["workers"]
        finally:
            await backend.stop()

    rec, workers = asyncio.run(go(True))
    assert rec["action"] == "schedule" and "advisory" in rec["outcome"] and workers == 1
    rec, workers = asyncio.run(go(False))
    assert rec["acted"] and workers == 2 and rec["workers"]["cpu-tp1-pp1"] == {"before": 1, "after": 2}


# --- labelled latency, candidates, simulate's verdict ------------------------------------------------
def test_plan_table_labels_latency_and_candidates_say_why_not(tmp_path: Path) -> None:
    base = ["plan", *[str(VOICE[0])], "--workload", str(VOICE[1]), "--sla", str(VOICE[2]), "--cluster", str(VOICE[3])]
    res = runner.invoke(app, [*base, "--no-verify", "-o", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert "TTFT p99 ms" in res.output and "TBT ms" in res.output and "E2E mean" in res.output
    flat = " ".join(res.output.split())  # the caption wraps at the table's width
    assert "J/request" in flat and "kW device power" in flat
    doc = json.loads((tmp_path / "p.json").read_text())
    assert "engine" in res.output and all(f"{p['engine']} {p['engine_version']}".strip() in res.output
                                          for p in doc["pools"])  # what each pool was priced on
    decode = next(o for o in doc["ops"] if o["kind"] == "llm.decode")
    assert decode["tbt_s"] and decode["tbt_s"] < decode["latency_s"]
    res = runner.invoke(app, [*base, "--candidates"])
    assert res.exit_code == 0, res.output
    assert "candidates considered" in res.output and "ms > 20 ms limit" in res.output
    assert "GB per device" in res.output and "yes" in res.output


def test_simulate_judges_the_sla_at_its_percentile_and_exits_1_on_a_miss(tmp_path: Path) -> None:
    res = runner.invoke(app, ["plan", str(VOICE[0]), "--workload", str(VOICE[1]), "--sla", str(VOICE[2]),
                              "--cluster", str(VOICE[3]), "--no-verify", "-o", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    ok = runner.invoke(app, ["simulate", str(tmp_path / "p.json"), "--duration", "20"])
    assert ok.exit_code == 0 and "SLA judged at p99: meets its SLA" in ok.output
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["deadline_s"] = 1.0  # an SLA this plan cannot meet
    (tmp_path / "tight.json").write_text(json.dumps(doc))
    miss = runner.invoke(app, ["simulate", str(tmp_path / "tight.json"), "--duration", "20"])
    assert miss.exit_code == 1 and "misses its SLA" in miss.output and "end-to-end p99" in miss.output
