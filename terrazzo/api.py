"""terrazzo's Python API: the CLI's entry points as functions with typed results.

    import terrazzo as tz

    agent = tz.load_agent("examples/agents/voice-agent.yaml")
    cluster = tz.load_cluster("examples/clusters/hetero.yaml")
    plan = tz.plan_agent(agent, cluster, workload="examples/workloads/steady-200rps.yaml",
                         sla="examples/slas/interactive.yaml")
    plan.to_pandas()                  # one row per placed op (pandas: pip install 'terrazzo[frames]')
    sim = tz.simulate(plan, rate_per_s=300, duration_s=60)
    print(sim.attainment, sim.meets_sla)

Every result has `.to_json()` (the same document the CLI's `--json` prints) and `.to_pandas()`.
Specs may be given as file paths, as dicts (validated like files, errors name the field), or as the
loaded models; agents also as an `AgentBuilder`. Errors are `terrazzo.errors.TerrazzoError`
subclasses with a message that says what to fix.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.errors import CatalogError, SpecError, TerrazzoError
from terrazzo.spec.agent import Agent
from terrazzo.spec.builder import AgentBuilder
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.workload import Workload

if TYPE_CHECKING:
    import pandas as pd

    from terrazzo.plan.planner import Plan
    from terrazzo.runtime.run_report import RunReport
    from terrazzo.sim.results import SimReport

PathLike = str | Path
__all__ = [
    "AgentBuilder", "ClusterSpec", "Comparison", "PlanResult", "RunResult", "SimResult", "build_agent", "compare",
    "load_agent", "load_cluster", "load_sla", "load_workload", "plan", "plan_agent", "run", "simulate",
]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise TerrazzoError("to_pandas() needs pandas. Fix: pip install 'terrazzo[frames]'") from None
    return pandas


def _frame(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> pd.DataFrame:
    from terrazzo.cli_output import plain

    return _pandas().DataFrame([plain(r) for r in rows], columns=list(columns) if columns else None)


def _scalars(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not isinstance(v, dict | list)}


# ---------------------------------------------------------------- specs

def build_agent(name: str, description: str | None = None) -> AgentBuilder:
    """A fluent builder for an agent graph in Python; `.build()` checks it like a YAML file."""
    return AgentBuilder(name, description)


def load_agent(source: PathLike | Agent | AgentBuilder | Mapping[str, Any], catalog: Catalog | None = None) -> Agent:
    """An agent from a YAML file, a dict in the file's layout, a builder, or an Agent (checked against
    the catalog: model names, graph structure)."""
    from terrazzo.spec.source import YamlSource
    from terrazzo.spec.spec_loader import agent_from_source, check_agent
    from terrazzo.spec.spec_loader import load_agent as load_agent_file

    if isinstance(source, AgentBuilder):
        return source.build(catalog)
    if isinstance(source, Agent):
        return check_agent(source, catalog)
    if isinstance(source, Mapping):
        return agent_from_source(YamlSource(file="<agent dict>", data=dict(source)), catalog, ())
    return load_agent_file(source, catalog)


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster and the catalog it sees (shipped entries, the cluster's catalog files, measured profiles)."""

    spec: Cluster
    catalog: Catalog = field(repr=False)
    path: str | None = None
    profiles: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what each profile changed (or why not), and devices it added

    @property
    def devices(self) -> list[str]:
        return self.spec.device_types


def load_cluster(source: PathLike | Mapping[str, Any] | ClusterSpec, profiles: Iterable[PathLike] = ()) -> ClusterSpec:
    """A cluster from a YAML file or a dict; `profiles` (terrazzo profile -o FILE) are layered on its
    catalog, and a device a profile defines joins the cluster (or a note says how to add it)."""
    from terrazzo.spec.profiled_devices import with_profiled_devices
    from terrazzo.spec.source import YamlSource
    from terrazzo.spec.spec_loader import load_cluster as load_cluster_file
    from terrazzo.spec.spec_loader import validate

    if isinstance(source, ClusterSpec):
        return source
    profiles = tuple(str(p) for p in profiles)
    if isinstance(source, Mapping):
        src = YamlSource(file="<cluster dict>", data=dict(source))
        cluster = validate(src, Cluster)
        catalog = load_catalog((), profiles)
        for name in cluster.device_types:
            try:
                catalog.device(name)
            except CatalogError as exc:
                raise src.error(str(exc).split(" Known:")[0], ("devices",), "use a catalog name (terrazzo hw list)"
                                ) from None
        path = None
    else:
        cluster, catalog = load_cluster_file(source, profiles)
        path = str(source)
    cluster, added = with_profiled_devices(cluster, catalog)
    return ClusterSpec(cluster, catalog, path, tuple(str(p) for p in profiles), (*catalog.notes, *added))


def _spec(kind: type[Workload] | type[Sla], source: Any, agent: Agent | None, loader: Any) -> Any:
    from terrazzo.spec.source import YamlSource
    from terrazzo.spec.spec_loader import validate

    if isinstance(source, kind):
        return source
    if isinstance(source, Mapping):
        return validate(YamlSource(file=f"<{kind.__name__.lower()} dict>", data=dict(source)), kind)
    if isinstance(source, str | Path):
        return loader(source, agent)
    raise SpecError(f"expected a path, a dict or a {kind.__name__}, got {type(source).__name__}",
                    fix=f"pass the {kind.__name__.lower()} YAML's path")


def load_workload(source: PathLike | Mapping[str, Any] | Workload, agent: Agent | None = None) -> Workload:
    """Arrival process and rate (and per-LLM token overrides) from a YAML file or a dict."""
    from terrazzo.spec.spec_loader import load_workload as load_file

    return _spec(Workload, source, agent, load_file)


def load_sla(source: PathLike | Mapping[str, Any] | Sla, agent: Agent | None = None) -> Sla:
    """Latency targets (per-LLM TTFT/TBT, end-to-end percentile) from a YAML file or a dict."""
    from terrazzo.spec.spec_loader import load_sla as load_file

    return _spec(Sla, source, agent, load_file)


# ---------------------------------------------------------------- plan

@dataclass(frozen=True)
class PlanResult:
    """A checked plan with the specs it was made from, so it can be simulated or run without files."""

    plan: Plan
    agent: Agent = field(repr=False)
    workload: Workload = field(repr=False)
    sla: Sla = field(repr=False)
    cluster: ClusterSpec = field(repr=False)

    @property
    def tco_usd_h(self) -> float:
        return self.plan.usd_h

    @property
    def usd_per_request(self) -> float:
        return self.plan.usd_per_request

    @property
    def e2e_latency_s(self) -> float:
        return self.plan.e2e_latency_s

    @property
    def meets_sla(self) -> bool | None:
        """Whether simulating the plan at its rate met the SLA; None when it was not simulated."""
        return self.plan.sim_verified

    def to_json(self) -> dict[str, Any]:
        """The plan file's document (what `terrazzo plan --json` prints and `-o` writes)."""
        return self.plan.to_json()

    def to_pandas(self) -> pd.DataFrame:
        """One row per placed op: where it runs (device, parallelism, batch, replicas), its latency and $/h."""
        doc = self.to_json()
        return _frame([_scalars(o) for o in doc.get("ops") or doc.get("pools") or []])

    def baselines(self) -> pd.DataFrame:
        """The baselines priced on the same inputs, with the cost ratio baseline ÷ plan."""
        return _frame([_scalars(b) for b in self.to_json().get("baselines", [])])

    def write(self, path: PathLike) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_json(), indent=2))
        return p

    def table(self) -> Any:
        from terrazzo.plan.plan_tables import plan_table

        return plan_table(self.plan)


def plan(agent: PathLike | Agent | AgentBuilder | Mapping[str, Any],
         cluster: PathLike | Mapping[str, Any] | ClusterSpec, workload: PathLike | Mapping[str, Any] | Workload,
         sla: PathLike | Mapping[str, Any] | Sla, *,
         profiles: Iterable[PathLike] = (), explain: bool = False, verify: bool = True) -> PlanResult:
    """The cheapest placement that meets the SLA (MILP on HiGHS), re-checked, with baselines; with
    `verify` it is simulated at its rate and re-planned where it misses (as `terrazzo plan` does).
    Raises terrazzo.errors.PlanInfeasible, naming the binding limit, when nothing meets the SLA."""
    from terrazzo.verify.replan import verified_plan

    where = load_cluster(cluster, profiles)
    the_agent = load_agent(agent, where.catalog)
    the_workload = load_workload(workload, the_agent)
    the_sla = load_sla(sla, the_agent)
    result = verified_plan(the_agent, the_workload, the_sla, where.spec, where.catalog, explain=explain,
                           verify=verify)
    inputs = {k: str(v) for k, v in (("agent", agent), ("workload", workload), ("sla", sla),
                                      ("cluster", where.path)) if isinstance(v, str | Path)}
    inputs.update({f"profile[{i}]": p for i, p in enumerate(where.profiles)})
    return PlanResult(replace(result, inputs=inputs), the_agent, the_workload, the_sla, where)


plan_agent = plan  # the package-level name: `terrazzo.plan` is the planner's subpackage


@dataclass(frozen=True)
class Comparison:
    """Several plans side by side (e.g. one agent on several clusters, or at several rates)."""

    plans: dict[str, PlanResult]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for label, p in self.plans.items():
            doc = p.to_json()
            devices = sum(int(o.get("devices", 0)) for o in doc.get("ops", []))
            out.append({"plan": label, "agent": p.plan.agent, "rate_per_s": p.plan.rate_per_s,
                        "tco_usd_h": p.tco_usd_h, "usd_per_request": p.usd_per_request,
                        "e2e_latency_s": p.e2e_latency_s, "devices": devices, "meets_sla": p.meets_sla})
        return out

    @property
    def cheapest(self) -> str:
        return min(self.plans, key=lambda k: self.plans[k].tco_usd_h)

    def to_json(self) -> dict[str, Any]:
        return {"schema": "terrazzo.compare/v1", "cheapest": self.cheapest, "plans": self.rows()}

    def to_pandas(self) -> pd.DataFrame:
        return _frame(self.rows()).set_index("plan")


def compare(plans: Mapping[str, PlanResult] | Sequence[PlanResult]) -> Comparison:
    """Plans side by side: TCO, $/request, latency, devices; unlabelled ones are named by cluster or index."""
    if not isinstance(plans, Mapping):
        plans = {(p.cluster.spec.name if p.cluster.spec.name != "cluster" else f"plan{i}"): p
                 for i, p in enumerate(plans)}
    if not plans:
        raise TerrazzoError("compare() needs at least one plan")
    return Comparison(dict(plans))


# ---------------------------------------------------------------- simulate

@dataclass(frozen=True)
class SimResult:
    """A discrete-event simulation of a plan: SLA attainment, percentiles, pools, cost."""

    report: SimReport

    @property
    def attainment(self) -> float:
        return self.report.attainment

    @property
    def meets_sla(self) -> bool:
        return self.report.meets_sla

    @property
    def e2e_at_sla_s(self) -> float:
        return self.report.e2e_at_sla_s

    def to_json(self) -> dict[str, Any]:
        return self.report.to_json()

    def to_pandas(self) -> pd.DataFrame:
        """One row per simulated request: arrival, end-to-end latency, the plan's prediction, LLM limits met."""
        req = self.report.records.requests
        return _pandas().DataFrame({"request": req["id"].astype(int), "arrival_s": req["arrival_s"],
                                    "e2e_s": req["e2e_s"], "predicted_s": req["pred_s"],
                                    "llm_sla_ok": req["ok"].astype(bool)})

    def pools(self) -> pd.DataFrame:
        """Per pool: utilisation, busy share, queue wait, service time against the planned latency."""
        return _frame([_scalars(p) for p in self.to_json().get("pools", [])])

    def table(self) -> Any:
        return self.report.table()


def simulate(plan: PlanResult | PathLike, *, rate_per_s: float | None = None, duration_s: float | None = None,
             trace: PathLike | None = None, seed: int = 0, out_dir: PathLike | None = None) -> SimResult:
    """Simulate a plan (a PlanResult, or a plan file) under Poisson or trace traffic; `out_dir` gets the
    CSVs and figures `terrazzo simulate -o` writes."""
    from terrazzo.sim.results import simulate as run_sim
    from terrazzo.sim.sim_inputs import model_from_specs
    from terrazzo.sim.simulate_command import _config, simulate_command, write_outputs

    if not isinstance(plan, PlanResult):
        return SimResult(simulate_command(str(plan), rate_per_s, duration_s, str(trace) if trace else None, seed,
                                          str(out_dir) if out_dir else None, progress=False))
    model = model_from_specs(plan.to_json(), plan.agent, plan.workload, plan.sla, plan.cluster.spec,
                             plan.cluster.catalog, "<api>")
    report = run_sim(model, _config(model, rate_per_s, duration_s, str(trace) if trace else None, seed, False))
    if out_dir:
        write_outputs(report, Path(out_dir))
    return SimResult(report)


# ---------------------------------------------------------------- run

@dataclass(frozen=True)
class RunResult:
    """Requests executed for real: each answer, and per-op latency next to the plan's prediction."""

    report: RunReport

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def answers(self) -> list[str]:
        """The agent's answer to each input, in input order ('' for a failed request)."""
        return [r.text for r in self.report.requests]

    def to_json(self) -> dict[str, Any]:
        return self.report.to_json()

    def to_pandas(self) -> pd.DataFrame:
        """One row per request: input, answer, ok, error, end-to-end seconds."""
        return _frame([{"request": r.request_id, "input": r.input, "answer": r.text, "ok": r.ok, "error": r.error,
                        "e2e_s": r.e2e_s} for r in self.report.requests])

    def ops(self) -> pd.DataFrame:
        """Per op: calls, real latency (ms) and the plan's prediction (ms)."""
        return _frame(self.report.ops())

    def table(self) -> Any:
        return self.report.table()


def run(agent: PathLike | Agent | AgentBuilder, inputs: Sequence[str], *, plan: PlanResult | PathLike | None = None,
        config: PathLike | None = None, backend: str = "local", concurrency: int = 8) -> RunResult:
    """Execute `inputs` through the agent for real (worker processes, or Ray with backend='ray')."""
    from terrazzo.runtime.failures import ExecutionError
    from terrazzo.runtime.run_command import run_async

    if not inputs:
        raise ExecutionError("no inputs", fix="pass at least one input text")
    the_agent = agent if isinstance(agent, str | Path) else load_agent(agent)
    with tempfile.TemporaryDirectory(prefix="terrazzo-run-") as tmp:
        plan_path: PathLike | None = plan if not isinstance(plan, PlanResult) else PlanResult.write(
            plan, Path(tmp) / "plan.json")
        report = asyncio.run(run_async(the_agent, plan_path, list(inputs), backend, config, concurrency))
    return RunResult(report)
