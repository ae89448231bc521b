"""`terrazzo` command line: catalogs, cost queries, the worked example, compile, and the demo tour."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.cli_output import EXIT_CODES_HELP, JsonOpt, VersionOpt, console, emit_json, fail, print_answers, verdict
from terrazzo.cli_output import note as remark
from terrazzo.errors import TerrazzoError
from terrazzo.importers.import_command import import_app
from terrazzo.spec.cluster import Cluster

if TYPE_CHECKING:
    from terrazzo.plan.planner import Plan

app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  help=f"{__doc__}\n\n{EXIT_CODES_HELP}")
hw_app = typer.Typer(no_args_is_help=True, help="Device catalog: list, show, validate your own entries.")
models_app = typer.Typer(no_args_is_help=True, help="Model catalog: list and show shapes.")
app.add_typer(hw_app, name="hw")
app.add_typer(models_app, name="models")
app.add_typer(import_app, name="import")
CatalogOpt = Annotated[
    list[Path] | None, typer.Option("--catalog", help="extra catalog YAML, layered over the shipped one")
]
ProfileOpt = Annotated[
    list[Path] | None, typer.Option("--profile", help="measured profile (terrazzo profile -o FILE), layered last; "
                                    "applies only where its machine and model match")
]


@app.callback()
def _root(version: VersionOpt = None) -> None:
    pass


def _catalog(extra: list[Path] | None, profiles: list[Path] | None = None) -> Catalog:
    cat = load_catalog(extra or [], profiles or [])
    _profile_notes(cat)
    return cat


def _profile_notes(cat: Catalog) -> None:
    """What each --profile changed, or why it was not applied (on stderr, so --json output stays clean)."""
    for note in cat.notes:
        Console(stderr=True).print(f"profile: {note}", highlight=False, soft_wrap=True)


def _with_profiled_devices(cluster: Cluster, cat: Catalog) -> Cluster:
    """A device a --profile defines joins the cluster (or a note says how to add it)."""
    from terrazzo.spec.profiled_devices import with_profiled_devices

    cluster, added = with_profiled_devices(cluster, cat)
    for line in added:
        remark(line)
    return cluster


@hw_app.command("list")
def hw_list(catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """Devices with their dense peaks, memory, bandwidth, power and price."""
    cat = _catalog(catalog)
    if as_json:
        return emit_json([d.model_dump(mode="json", exclude_none=True) for d in cat.devices.values()])
    table = Table("device", "vendor", "kind", "bf16 TFLOPS", "fp8 TFLOPS", "memory GB", "HBM GB/s", "TDP W", "price $")
    for d in cat.devices.values():
        fp8 = d.tflops("fp8")
        table.add_row(d.name, d.vendor, d.kind, f"{d.tflops('bf16') or 0:g}", f"{fp8:g}" if fp8 else "-",
                      f"{d.memory_gb.value:g}", f"{d.memory_bw_gbyte_s.value:g}", f"{d.tdp_w.value:g}",
                      f"{d.price_usd.value:,.0f}")
    console.print(table)


@hw_app.command("show")
def hw_show(name: Annotated[str, typer.Argument(help="device name or alias (terrazzo hw list)")],
            catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """Every field of one device, each with its source."""
    d = _catalog(catalog).device(name)
    if as_json:
        return emit_json(d.model_dump(mode="json", exclude_none=True))
    table = Table("field", "value", "source", title=f"{d.name} ({d.vendor} {d.generation})")
    for key, sourced in _sourced_fields(d.model_dump()):
        note = f" — {sourced['note']}" if sourced.get("note") else ""
        table.add_row(key, f"{sourced['value']:g}", sourced["source"] + note)
    console.print(table)


def _sourced_fields(data: dict, prefix: str = "") -> list[tuple[str, dict]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and "value" in value and "source" in value:
            out.append((f"{prefix}{key}", value))
        elif isinstance(value, dict):
            out.extend(_sourced_fields(value, f"{prefix}{key}."))
    return out


@hw_app.command("validate")
def hw_validate(file: Annotated[Path, typer.Argument(help="catalog YAML to check")]) -> None:
    """Check a catalog YAML (devices, models, price/TCO profiles, efficiency) against the schema."""
    defined = load_catalog().merge_file(file)
    console.print(f"[green]ok[/green] {file}: {len(defined)} entries ({', '.join(defined)})")


@models_app.command("list")
def models_list(catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """Models with their parameter counts and attention shape."""
    if as_json:
        return emit_json([m.model_dump(mode="json", exclude_none=True) for m in _catalog(catalog).models.values()])
    table = Table("model", "kind", "params B", "active B", "layers", "hidden", "heads/kv", "experts", "attention")
    for m in _catalog(catalog).models.values():
        active = m.active_params_b.value if m.active_params_b else m.params_b.value
        experts = f"{m.active_experts}/{m.experts}" if m.is_moe else "-"
        table.add_row(m.name, m.kind, f"{m.params_b.value:g}", f"{active:g}", str(m.layers), str(m.hidden),
                      f"{m.heads}/{m.kv_heads}", experts, "MLA" if m.mla else "GQA" if m.kv_heads < m.heads else "MHA")
    console.print(table)


@models_app.command("make-tiny")
def models_make_tiny(directory: Annotated[Path, typer.Argument(help="folder to write the checkpoint into")]) -> None:
    """Write a tiny RANDOM-WEIGHT Llama checkpoint (for tests and the demo; it cannot produce sensible text)."""
    from terrazzo.runtime.run_command import make_tiny

    console.print(make_tiny(directory))


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="model name or alias (terrazzo models list)")],
                catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """Every field of one model (shape, parameter counts with their sources) as JSON."""
    m = _catalog(catalog).model(name)
    emit_json(m.model_dump(mode="json", exclude_none=True))


@app.command()
def cost(
    model: Annotated[str, typer.Argument(help="model name or alias (terrazzo models list)")],
    device: Annotated[str, typer.Option(help="device name or alias")],
    dtype: Annotated[str, typer.Option(help="fp16, bf16, fp8, ...")] = "fp16",
    isl: Annotated[int, typer.Option(help="input tokens")] = 4096,
    osl: Annotated[int, typer.Option(help="output tokens")] = 512,
    tp: Annotated[int, typer.Option(help="tensor-parallel degree")] = 1,
    pp: Annotated[int, typer.Option(help="pipeline-parallel degree")] = 1,
    ttft: Annotated[float, typer.Option(help="TTFT limit, s")] = 0.25,
    tbt: Annotated[float, typer.Option(help="TBT limit, s")] = 0.02,
    tco: Annotated[str, typer.Option(help="TCO profile")] = "paper-2507.19635",
    engine: Annotated[str | None, typer.Option(
        help="serving engine[:version], e.g. vllm:0.10.2 (default: the vendor's, see serving_priors.yaml)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    catalog: CatalogOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Cost of serving MODEL on one replica: TTFT, TBT, largest SLA batch, tokens/s, $/M tokens, each with
    its source and the range of the model's cross-validated error."""
    from terrazzo.cost.cost_report import cost_report, parse_engine

    report = cost_report(_catalog(catalog, profile), model, device, dtype, isl, osl, tp, pp, ttft, tbt, tco,
                         parse_engine(engine))
    if as_json:
        return emit_json(report)
    console.print(report.table())


@app.command("worked-example")
def worked_example(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML")] = Path("examples/paper/table3.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Solve a stage-option scenario (default: the paper's Table 3) with the planner's selection MILP."""
    from terrazzo.plan.scenario import load_scenario
    from terrazzo.plan.select import enumerate_all, solve

    sc = load_scenario(scenario)
    problem = sc.problem()
    chosen = solve(problem)
    if as_json:
        return emit_json({"scenario": sc.name, "source": sc.source, "chosen": chosen.choice, "expected": sc.expected,
                          "options": [{"choice": ev.choice, "feasible": ev.feasible, "latency_s": ev.latency_s,
                                       "cost_usd": ev.cost_usd, "reason": ev.reason}
                                      for ev in enumerate_all(problem)]})
    table = Table("option", *sc.stages, "latency ms", "cost $", "verdict", title=f"{sc.name} ({sc.source})")
    for ev in enumerate_all(problem):
        mark = "[bold green]chosen[/]" if ev.choice == chosen.choice else ("ok" if ev.feasible else ev.reason)
        latency = f"{ev.latency_s * 1e3:.4g}" if ev.feasible or ev.latency_s < float("inf") else "-"
        cost_usd = f"{ev.cost_usd:.4g}" if ev.cost_usd < float("inf") else "-"
        table.add_row("+".join(ev.choice.values()), *ev.choice.values(), latency, cost_usd, mark)
    console.print(table)
    if sc.expected is not None:
        agrees = "agrees with" if sc.expected == chosen.choice else "DIFFERS from"
        console.print(f"MILP choice {chosen.choice} {agrees} the published choice {sc.expected}")


@app.command("compile")
def compile_cmd(
    path: Annotated[Path, typer.Argument(help="agent YAML, or MLIR text printed by terrazzo")],
    emit: Annotated[str, typer.Option(help="agent|granular|estimated|placed|partitioned, placement (the cheapest "
                                      "candidate per op as a placement file), or vmfb (IREE artifacts of the "
                                      "agent's tensor operators; needs -o DIR)")] = "granular",
    target: Annotated[str, typer.Option(help="with --emit vmfb: llvm-cpu|cuda|rocm|vulkan, or family:arch")
                      ] = "llvm-cpu",
    pipeline: Annotated[str | None, typer.Option(help="comma-separated passes to run instead")] = None,
    cluster: Annotated[Path | None, typer.Option(help="cluster YAML for estimate-cost")] = None,
    sla: Annotated[Path | None, typer.Option(help="SLA YAML: TTFT/TBT limits for estimate-cost")] = None,
    plan: Annotated[Path | None, typer.Option(help="plan or placement JSON for apply-plan")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write here instead of stdout")] = None,
) -> None:
    """Lower an agent through terrazzo's IR and print MLIR text, or compile its tensor operators with IREE."""
    if emit == "vmfb":
        from terrazzo.codegen.emit import emit_vmfb

        if output is None:
            raise typer.BadParameter("--emit vmfb writes a folder: pass -o DIR")
        done = emit_vmfb(path, target, output, plan, say=remark)
        for a in done.artifacts:
            console.print(f"{a.path.name}: {a.operator} {list(a.shapes)} for {a.target.name}"
                          f"{' (cached)' if a.cache_hit else ''}", markup=False)
        for pool, files in done.pools.items():
            console.print(f"pool {pool}: {', '.join(files)}", markup=False)
        for note in done.skipped:
            console.print(note, markup=False)
        if done.manifest:
            console.print(f"wrote {done.manifest}")
        return
    from terrazzo.ir.driver import compile_path

    text = compile_path(str(path), emit=emit, pipeline=pipeline.split(",") if pipeline else None,
                        cluster=str(cluster) if cluster else None, plan=str(plan) if plan else None,
                        sla=str(sla) if sla else None)
    if output:
        output.write_text(text)
        console.print(f"wrote {output}")
    else:
        print(text, end="")


@app.command("plan")
def plan_cmd(
    agent: Annotated[Path, typer.Argument(help="agent YAML")],
    workload: Annotated[Path, typer.Option(help="workload YAML (arrival rate, token overrides)")],
    sla: Annotated[Path, typer.Option(help="SLA YAML")],
    cluster: Annotated[Path, typer.Option(help="cluster YAML (device types or inventory, TCO profile)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    explain: Annotated[bool, typer.Option(help="show each op's runner-up and why it lost")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write the plan JSON here")] = None,
    figure: Annotated[Path | None, typer.Option(help="write a PNG of $/h per pool against the baselines")] = None,
    simulate: Annotated[bool, typer.Option("--simulate", help="simulate the plan at its rate and flag where "
                                           "predicted and simulated latency disagree")] = False,
    tolerance: Annotated[float, typer.Option(help="with --simulate: relative gap to flag (0.2 = ±20 %)")] = 0.2,
    seed: Annotated[int, typer.Option(help="with --simulate: random seed")] = 0,
    verify: Annotated[bool, typer.Option(help="simulate the plan at its rate and re-plan where it misses the "
                                         "SLA's percentile (verify/replan.py)")] = True,
    profile: ProfileOpt = None,
    bom: Annotated[Path | None, typer.Option(help="write the bill of materials to BOM.csv and BOM.json")] = None,
    candidates: Annotated[bool, typer.Option("--candidates", help="print every candidate of every op "
                                             "(device × TP × PP × batch, $/h, TTFT, TBT, feasible or why not)")
                          ] = False,
    pareto: Annotated[str | None, typer.Option(help="cost,latency,energy: the non-dominated plans (ε-constraint "
                                               "on HiGHS), each simulated")] = None,
    pareto_figure: Annotated[Path | None, typer.Option(help="with --pareto: PNG of the front")] = None,
    kv_reuse: Annotated[bool, typer.Option(help="let calls that name a prefix reuse its KV (retain on the "
                                           "replica, offload to host or disk); --no-kv-reuse recomputes every "
                                           "prefix")] = True,
) -> None:
    """Place every granular op at minimum TCO under the SLA (MILP on HiGHS), with baselines; a workload
    with a rate curve gets a day plan (peak fleet against an autoscaled schedule)."""
    from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
    from terrazzo.verify.replan import verified_plan as make_plan

    cluster_spec, cat = load_cluster(cluster, profile or [])
    _profile_notes(cat)
    cluster_spec = _with_profiled_devices(cluster_spec, cat)
    agent_spec = load_agent(agent, cat)
    workload_spec, sla_spec = load_workload(workload, agent_spec), load_sla(sla, agent_spec)
    if candidates:
        from terrazzo.plan.from_ir import build
        from terrazzo.plan.plan_tables import candidates_table

        console.print(candidates_table(build(agent_spec, workload_spec, sla_spec, cluster_spec, cat)))
        return
    if pareto is not None:
        from terrazzo.verify.pareto import pareto_command

        code = pareto_command(agent_spec, workload_spec, sla_spec, cluster_spec, cat, pareto, output,
                              pareto_figure, as_json, console)
        raise typer.Exit(code)
    if workload_spec.rate_curve is not None:
        from terrazzo.verify.day_plan import day_plan_command

        code = day_plan_command(agent_spec, workload_spec, sla_spec, cluster_spec, cat, workload, output, as_json,
                                console, figure)
        raise typer.Exit(code)
    result = make_plan(agent_spec, workload_spec, sla_spec, cluster_spec, cat, explain=explain, verify=verify,
                       workload_path=workload, kv_reuse=kv_reuse)
    for note in result.notes:
        Console(stderr=True).print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    inputs = {"agent": agent, "workload": workload, "sla": sla, "cluster": cluster}
    inputs.update({f"profile[{i}]": p for i, p in enumerate(profile or [])})
    result = replace(result, inputs={k: str(v) for k, v in inputs.items()})
    check = None
    if simulate:
        from terrazzo.sim.simulate_command import check_plan

        check = check_plan(result.to_json(), tolerance, seed)
    if output:
        output.write_text(json.dumps(result.to_json(), indent=2))
    if bom and result.fleet is not None:
        from terrazzo.plan.keep_or_buy import write_bom

        Console(stderr=True).print("wrote " + ", ".join(str(p) for p in write_bom(result.fleet, result.agent,
                                                                                  result.rate_per_s, bom)))
    if figure:
        from terrazzo.report.paper_figures import plan_figure

        plan_figure(result, figure)
    if as_json:
        doc = result.to_json()
        if check is not None:
            doc["simulation_check"] = check.to_json()
        print(json.dumps(doc, indent=2))
        _exit_if_unverified(result)
        return
    from terrazzo.plan.plan_tables import ops_table, plan_table

    console.print(plan_table(result))

    console.print(ops_table(result))
    if result.fleet is not None:
        console.print(result.fleet.table())
    console.print(result.baseline_table())
    for line in result.verification_lines():
        console.print(line)
    if check is not None:
        console.print(check.table())
    if explain:
        table = Table("op", "runner-up and why it lost", title="--explain")
        for op, why in result.explain.items():
            table.add_row(op, why)
        console.print(table)
        if result.kv:
            from terrazzo.plan.plan_tables import kv_table

            console.print(kv_table(result))
    if output:
        console.print(f"wrote {output}")
    _exit_if_unverified(result)


def _exit_if_unverified(result: Plan) -> None:
    """Exit 1 when the final plan fails its own simulation (the plan file is still written, to inspect)."""
    if result.sim_verified is False:
        last = result.verification[-1]
        why = "; ".join(last.get("breaks", [])[:3]) or "the SLA's percentile is missed"
        Console(stderr=True).print(f"[bold red]error:[/] no plan found passes its own simulation at "
                                   f"{result.rate_per_s:g} req/s after {len(result.verification)} rounds: {why}",
                                   highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command("compare")
def compare_cmd(
    agent: Annotated[Path, typer.Argument(help="agent YAML")],
    workload: Annotated[Path, typer.Option(help="workload YAML (the same for every option)")],
    sla: Annotated[list[Path], typer.Option(help="SLA YAML; repeat to compare SLAs")],
    cluster: Annotated[list[Path], typer.Option(help="cluster YAML; repeat to compare clusters")],
    price_profile: Annotated[list[str] | None, typer.Option(help="price profile; repeat to compare prices")] = None,
    buy: Annotated[str | None, typer.Option(help="with one owned cluster: device types to buy, one option each, "
                                            "e.g. h200,mi300x,b200")] = None,
    verify: Annotated[bool, typer.Option(help="simulate each plan and re-plan on a miss, as `plan` does")] = True,
    sim_requests: Annotated[int, typer.Option(help="simulated requests per option for its p99")] = 4000,
    figure: Annotated[Path | None, typer.Option(help="write a PNG of TCO per option")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write the rows as JSON here")] = None,
) -> None:
    """What-if: one table of TCO, capex, devices, p99 latency and energy per cluster, price profile, SLA or
    device to buy, on the same agent and workload."""
    from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload
    from terrazzo.verify.compare import compare, compare_figure, compare_table, options

    clusters = []
    for path in cluster:
        spec, cat = load_cluster(path)
        clusters.append((path.stem, spec, cat))
    agent_spec = load_agent(agent, clusters[0][2])
    slas = [(p.stem, load_sla(p, agent_spec)) for p in sla]
    opts = options(clusters, slas, price_profile or [], [b.strip() for b in buy.split(",") if b.strip()] if buy
                   else [])
    wl = load_workload(workload, agent_spec)
    rows = compare(agent_spec, wl, opts, verify, sim_requests)
    doc = {"schema": "terrazzo.compare/v1", "agent": agent_spec.name, "rate_per_s": wl.arrival.rate_per_s,
           "rows": [r.to_json() for r in rows]}
    if output:
        output.write_text(json.dumps(doc, indent=2))
    if figure:
        compare_figure(rows, figure, agent_spec.name)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        console.print(compare_table(rows, agent_spec.name, wl.arrival.rate_per_s or 0.0))
        for written in (output, figure):
            if written:
                console.print(f"wrote {written}")
    if not any(r.plan is not None for r in rows):
        raise typer.Exit(1)


@app.command("check")
def check_cmd(
    plan_file: Annotated[Path, typer.Argument(help="plan JSON written by `terrazzo plan ... -o`")],
    as_json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """Run the independent checker on a plan file against the inputs it records (exit 1 if it fails)."""
    from terrazzo.plan.recheck import recheck_file

    r = recheck_file(plan_file)  # raises PlanRejected (exit 1) naming the binding constraint
    pools = {p.name: {"replicas": p.replicas, "min_replicas": p.min_replicas, "usd_h": p.usd_h}
             for p in r.verdict.pools.values()}
    doc = {"plan": str(plan_file), "ok": True, "tco_usd_h": r.usd_h, "devices": r.devices,
           "e2e_latency_s": r.verdict.e2e_latency_s, "pools": pools, "notes": list(r.notes)}
    if r.kv:  # KV reuse, re-priced from the plan's inputs
        doc["kv"] = r.kv
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    fleet = ", ".join(f"{n} {d}" for d, n in r.devices.items())
    console.print(f"[green]ok[/]: {plan_file} passes the checker against its recorded inputs: "
                  f"${r.usd_h:.2f}/h over {fleet}, end-to-end {r.verdict.e2e_latency_s * 1e3:.1f} ms")
    for op, kv in r.kv.items():
        saving = "-" if kv["saving_usd_h"] is None else f"${kv['saving_usd_h']:.2f}/h"
        console.print(f"  kv: {op} {kv['policy']} ({kv['tier']}), {kv['prefix_tokens']:,.0f} tokens reused at "
                      f"{kv['hit_rate']:.0%}, saving {saving} against recompute", markup=False)
    for note in r.notes:
        console.print(f"  note: {note}", markup=False)


def _recheck_plan(plan: Path | None) -> None:
    """`run` and `serve` refuse a v2 plan file the checker rejects (placement files carry no inputs)."""
    if plan is None:
        return
    from terrazzo.plan.recheck import is_plan, recheck
    from terrazzo.plan_file import read_plan_json
    from terrazzo.runtime.failures import ExecutionError

    doc = read_plan_json(plan, ExecutionError)
    if is_plan(doc) or str(doc.get("schema", "")).startswith("terrazzo.plan/"):
        recheck(doc, str(plan), plan.resolve().parent)


@app.command("run")
def run_cmd(
    agent: Annotated[Path, typer.Argument(help="agent YAML")],
    plan: Annotated[Path | None, typer.Option(help="plan or placement JSON (pools and replicas)")] = None,
    inputs: Annotated[list[str] | None, typer.Option("--input", help="a request's text; repeat for more")] = None,
    backend: Annotated[str, typer.Option(help="local (worker processes) or ray")] = "local",
    config: Annotated[Path | None, typer.Option(help="run config YAML: checkpoints, documents, tools")] = None,
    concurrency: Annotated[int, typer.Option(help="requests in flight at once")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write the JSON report here")] = None,
) -> None:
    """Execute requests through the agent for real, each op on a worker of its planned pool."""
    from terrazzo.runtime.run_command import run_command

    _recheck_plan(plan)
    report = run_command(agent, plan, inputs or [], backend, config, concurrency)
    if output:
        output.write_text(json.dumps(report.to_json(), indent=2))
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        console.print(report.table())
        print_answers(report.requests)
    if not report.ok:
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(
    agent: Annotated[Path, typer.Argument(help="agent YAML")],
    plan: Annotated[Path | None, typer.Option(help="plan JSON (terrazzo plan -o): pools, replicas, planner inputs")]
    = None,
    config: Annotated[Path | None, typer.Option(help="run config YAML: checkpoints, documents, tools")] = None,
    backend: Annotated[str, typer.Option(help="local (worker processes) or ray")] = "local",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    advisory: Annotated[bool, typer.Option("--advisory", help="controller logs its decisions, applies none")] = False,
    token_env: Annotated[str | None, typer.Option(help="env var holding the API token [TERRAZZO_TOKEN]")] = None,
    serve_config: Annotated[Path | None, typer.Option(help="serve YAML: auth, limits, controller policy")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="no token (only on a loopback host)")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """HTTP API for the agent (invoke, SSE, OpenAI chat, plan, health, metrics); re-plans as load moves."""
    from terrazzo.server.serve_command import serve_command

    _recheck_plan(plan)
    code = serve_command(agent, plan, config, backend, host, port, advisory, token_env, serve_config, no_auth,
                         log_level)
    if code:
        raise typer.Exit(code)


@app.command("simulate")
def simulate_cmd(
    plan_file: Annotated[Path, typer.Argument(help="plan JSON written by `terrazzo plan ... -o`")],
    rate: Annotated[float | None, typer.Option(help="requests/s (default: the plan's; rescales a --trace)",
                                               min=0, max=100_000)] = None,  # limits.py MAX_RATE_PER_S
    duration: Annotated[float | None, typer.Option(help="simulated seconds of arrivals (default 300)",
                                                   min=0, max=2_592_000)] = None,  # MAX_DURATION_S
    trace: Annotated[Path | None, typer.Option(help="replay an Azure LLM inference or BurstGPT trace (CSV)")] = None,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same result")] = 0,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="folder for report.json, CSVs and PNGs")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    kv_policy: Annotated[str | None, typer.Option(help="KV policy for every LLM op instead of the plan's: recompute, "
                                                  "retain, host or disk")] = None,
    cache_aware: Annotated[bool, typer.Option(help="route LLM calls to the replica holding their prefix "
                                              "(--no-cache-aware: least loaded)")] = True,
) -> None:
    """Discrete-event simulation of a plan: latency against the SLA, where it breaks, utilisation, cost."""
    from terrazzo.sim.simulate_command import simulate_command

    report = simulate_command(str(plan_file), rate, duration, str(trace) if trace else None, seed,
                              str(out) if out else None, progress=not as_json, kv_policy=kv_policy,
                              cache_aware=cache_aware)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return verdict(report.meets_sla)
    console.print(report.table())
    from terrazzo.sim.sla_verdict import verdict_line

    console.print(verdict_line(report))
    if out:
        console.print(f"wrote report.json, requests.csv, llm_calls.csv, {', '.join(report.figures)}")
    verdict(report.meets_sla)


@app.command()
def reproduce(
    what: Annotated[str, typer.Argument(help="what to reproduce: 'paper' (arXiv 2507.19635 §5)")] = "paper",
    out: Annotated[Path, typer.Option("-o", "--out", help="folder for the CSV and figures")] = Path("out/paper"),
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The paper's evaluation over all 36 prefill::decode pairs: CSV, figures, and a summary."""
    from terrazzo.plan.reproduce import PAPER_CONFIGS, benefit_ranges, benefits, to_csv
    from terrazzo.plan.reproduce import reproduce as run_reproduce
    from terrazzo.report.paper_figures import benefit_heatmaps

    if what != "paper":
        raise typer.BadParameter(f"unknown target {what!r}; the one reproducible target is 'paper'")
    results = run_reproduce(_catalog(catalog))
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper-pairs.csv").write_text(to_csv(results))
    figures = [benefit_heatmaps(results, isl, osl, out / f"tco-benefit-isl{isl}-osl{osl}.png")
               for isl, osl in dict.fromkeys((c.isl, c.osl) for c in PAPER_CONFIGS)]
    if as_json:
        return emit_json({"files": [out / "paper-pairs.csv", *figures], "configurations": [
            {"configuration": c.label, "benefits": benefits([r for r in results if r.config == c])}
            for c in PAPER_CONFIGS]})
    table = Table("configuration", "best pair", "benefit (p10..p90 range)", "B200::B200", "B200::Gaudi3",
                  "H100::Gaudi3", title="TCO benefit over H100::H100 (higher is cheaper)")
    for config in PAPER_CONFIGS:
        ben = benefits([r for r in results if r.config == config])
        rng = benefit_ranges([r for r in results if r.config == config])
        top = max(ben, key=ben.__getitem__)

        cells = [f"{ben[p]:.2f} ({rng[p][0]:.2f}..{rng[p][1]:.2f})" if p in rng else f"{ben[p]:.2f}"
                 for p in (top, "b200::b200", "b200::gaudi3", "h100-sxm::gaudi3")]
        table.add_row(config.label, top, *cells)
    console.print(table)
    console.print(f"wrote {out / 'paper-pairs.csv'}, " + ", ".join(str(f) for f in figures))


@app.command("profile")
def profile_cmd(
    output: Annotated[Path, typer.Option("-o", "--output", help="profile YAML to write")],
    device: Annotated[str, typer.Option(help="cpu, or cuda (needs an NVIDIA GPU and a CUDA build of torch)")] = "cpu",
    model: Annotated[Path | None, typer.Option(help="HF checkpoint dir for prefill/decode (default: a tiny "
                                               "random-weight Llama made on the fly)")] = None,
    model_name: Annotated[str | None, typer.Option(help="catalog name of --model (checked against its shape)")] = None,
    embed_model: Annotated[Path | None, typer.Option(help="sentence-transformers dir (default: MiniLM)")] = None,
    as_device: Annotated[str | None, typer.Option("--as", help="calibrate this catalog device (the machine must be "
                                                  "one), or the name of the device the profile defines")] = None,
    base: Annotated[str | None, typer.Option(help="catalog device whose price/TDP a defined device shares")] = None,
    threads: Annotated[int, typer.Option(help="torch and FAISS threads (the runtime's workers use 1)")] = 1,
    repeats: Annotated[int, typer.Option(help="measured rounds per point (median and p10-p90)")] = 15,
    warmup: Annotated[int, typer.Option(help="warm-up rounds, not recorded")] = 3,
    ops: Annotated[str, typer.Option(help="comma-separated: prefill,decode,embed,ann,transfer")] = (
        "prefill,decode,embed,ann,transfer"),
    quick: Annotated[bool, typer.Option(help="few points and repeats (vLLM: eager, -O0): a smoke test, not for "
                                        "planning")] = False,
    engine: Annotated[str, typer.Option(help="builtin (the runtime's engine, in process) or vllm (a live vLLM CPU "
                                        "server, under its own scheduler)")] = "builtin",
    vllm_python: Annotated[str | None, typer.Option(help="vLLM's python (default $TERRAZZO_VLLM_PYTHON or "
                                                    ".venv-vllm/bin/python)")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Measure this machine (engine prefill/decode, embeddings, FAISS, transfers) and fit the cost model to it."""
    from terrazzo.profile.profile_command import Options, profile_command

    fields: dict[str, Any]
    if engine == "vllm":
        fields = dict(model=model, model_name=model_name, base=base, catalogs=catalog or [], vllm_python=vllm_python,
                      command=" ".join(["terrazzo", *sys.argv[1:]]),
                      **({"as_device": as_device} if as_device else {}),
                      **({"repeats": min(repeats, 2), "warmup": 0, "vllm_eager": True, "isl": (16, 64, 256),
                          "decode_batch": (1, 4, 16), "decode_context": (64, 256)} if quick else {}))
        profile_command(Options.vllm(**fields), output, console)
        return

    fields = dict(device=device, model=model, model_name=model_name, embed_model=embed_model, as_device=as_device,
                  base=base, threads=threads, repeats=repeats, warmup=warmup, catalogs=catalog or [],
                  ops=tuple(o.strip() for o in ops.split(",") if o.strip()),
                  command=" ".join(["terrazzo", *sys.argv[1:]]))
    if quick:
        fields.update(repeats=min(repeats, 5), warmup=min(warmup, 1))
    profile_command(Options.quick(**fields) if quick else Options(**fields), output, console)


@app.command("deploy")
def deploy_cmd(
    plan: Annotated[Path, typer.Argument(help="plan JSON (terrazzo plan -o) or placement JSON")],
    target: Annotated[str, typer.Option(help="ray (cluster launcher YAML for `ray up`) or kuberay (manifests)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder to write into")],
    namespace: Annotated[str, typer.Option(help="kuberay: Kubernetes namespace")] = "default",
    image: Annotated[str | None, typer.Option(help="container image with terrazzo installed")] = None,
    provider: Annotated[str, typer.Option(help="ray: aws or local (on-premises machines)")] = "aws",
    region: Annotated[str | None, typer.Option(help="ray, aws: region")] = None,
    artifacts: Annotated[Path | None, typer.Option(help="folder of `terrazzo compile --emit vmfb --plan`: "
                                                   "records which artifact serves each pool")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cluster files from a plan: a Ray cluster config or KubeRay manifests, validated against their schemas."""
    from terrazzo.deploy.write import deploy

    written = deploy(plan, target, output, namespace, image, provider, region, artifacts, catalog)
    if as_json:
        return emit_json({"files": written.files, "todo": written.todo, "groups": [
            {"device": g.device, "devices": g.devices, "nodes": g.nodes, "per_node": g.per_node,
             "resource": g.resource, "pools": [p.pool for p in g.pools]} for g in written.fleet.groups]})
    for g in written.fleet.groups:
        console.print(f"{g.device}: {g.devices} devices → {g.nodes} node(s) of {g.per_node}, resource "
                      f"{g.resource}, pools {', '.join(p.pool for p in g.pools)}")
    for f in written.files:
        console.print(f"wrote {f} (validated)")
    for item in written.todo:
        console.print(f"  fill in: {item}", markup=False)


@app.command()
def demo() -> None:
    """A short tour on embedded defaults: catalogs, a cost query, the paper's worked example."""
    from terrazzo.demo import run_demo

    run_demo(console)


def main() -> None:
    try:
        app(prog_name="terrazzo")
    except TerrazzoError as exc:
        sys.exit(fail(exc))


if __name__ == "__main__":
    main()
