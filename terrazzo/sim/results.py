"""What a run reports: per-request records, latency percentiles with a confidence interval, SLA
attainment and where it breaks, utilisation per pool and link, and cost per request and per token.

Requests that arrive during the warm-up, or after the duration, are simulated but not measured.
A measured request still unfinished when the drain ends counts as infinitely late: it misses the SLA
and pushes the percentiles, so an overloaded plan cannot look good by leaving its queue behind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from terrazzo.sim.sim_inputs import SimModel
from terrazzo.sim.simulation import SimConfig, Simulation

BATCHES = 20  # batch means for the confidence interval of the mean end-to-end latency
T_975_19 = 2.093  # Student t, 97.5 % quantile, 19 degrees of freedom
SATURATED = 0.95


@dataclass(frozen=True)
class Percentiles:
    """Of a latency, in seconds; `n` values (unfinished requests count as +inf)."""

    n: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float

    @classmethod
    def of(cls, values: np.ndarray) -> Percentiles:
        v = values[~np.isnan(values)]
        if v.size == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        finite = v[np.isfinite(v)]
        p50, p90, p99 = np.percentile(v, [50, 90, 99], method="higher")
        return cls(int(v.size), float(finite.mean()) if finite.size else math.inf, float(p50), float(p90),
                   float(p99), float(v.max()))


def _pct(values: np.ndarray, q: float) -> float:
    v = values[~np.isnan(values)]
    return float(np.percentile(v, q, method="higher")) if v.size else math.nan


def mean_ci95(values: np.ndarray) -> float:
    """Half-width of the 95 % confidence interval of the mean by batch means: consecutive requests are
    correlated (they share queues), batches of many are nearly independent."""
    v = values[np.isfinite(values)]
    if v.size < 2 * BATCHES:
        return math.inf
    means = np.array([b.mean() for b in np.array_split(v, BATCHES)])
    return float(T_975_19 * means.std(ddof=1) / math.sqrt(BATCHES))


@dataclass(frozen=True)
class LlmStats:
    node: str
    calls: int
    ttft: Percentiles
    tbt: Percentiles
    ttft_limit_s: float | None
    tbt_limit_s: float | None
    ttft_at_sla_s: float
    tbt_at_sla_s: float
    ttft_met: float
    tbt_met: float

    @property
    def ok(self) -> bool:
        return ((self.ttft_limit_s is None or self.ttft_at_sla_s <= self.ttft_limit_s)
                and (self.tbt_limit_s is None or not self.tbt_at_sla_s > self.tbt_limit_s))


@dataclass(frozen=True)
class PoolStats:
    """`utilisation`: share of the pool's capacity in use — servers busy, or for an LLM pool batch slots
    filled (a replica with one sequence steps all the time but is nearly idle); `busy`: share of time its
    servers or replicas were working."""

    op: str
    kind: str
    device: str
    replicas: int
    servers: int
    utilisation: float
    busy: float
    visits_per_request: float
    wait: Percentiles
    service_mean_s: float
    planned_latency_s: float
    usd_h: float

    @property
    def sojourn_mean_s(self) -> float:
        return self.wait.mean_s + self.service_mean_s


@dataclass(frozen=True)
class LinkStats:
    name: str
    links: int
    transfers: int
    gbytes: float
    utilisation_mean: float
    utilisation_max: float


@dataclass(frozen=True)
class KvStats:
    """KV reuse on one LLM pool over the whole run (warm-up included): share of looked-up prefix tokens
    found resident, by tier, and the planner's expectation where the plan records one."""

    pool: str
    policy: str
    hit_rate: float
    planned_hit_rate: float | None
    lookups: int
    hit_tokens: dict[str, int]
    missed_tokens: int
    evicted_tokens: int
    calls_per_replica: list[int]


@dataclass
class Records:
    """Raw per-request and per-LLM-call arrays (measured window only), for files and figures."""

    requests: dict[str, np.ndarray]
    calls: dict[str, dict[str, np.ndarray]]


@dataclass
class SimReport:
    agent: str
    plan: str
    rate_per_s: float
    arrival: str
    duration_s: float
    warmup_s: float
    seed: int
    requests: int
    completed: int
    unfinished: int
    e2e: Percentiles
    e2e_mean_ci95_s: float
    deadline_s: float | None
    percentile: float
    e2e_at_sla_s: float
    attainment: float
    meets_sla: bool
    breaks: list[str]
    llm: list[LlmStats]
    pools: list[PoolStats]
    links: list[LinkStats]
    plan_e2e_s: float
    usd_h: float
    usd_per_request: float
    usd_per_m_tokens: float
    output_tokens: int
    queue_wait_mean_s: float
    wall_s: float
    events: int
    records: Records = field(repr=False)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kv: list[KvStats] = field(default_factory=list)

    @property
    def sim_requests_per_wall_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "records"}
        out["schema"] = "terrazzo.sim/v1"
        out["sim_requests_per_wall_s"] = self.sim_requests_per_wall_s
        return _finite(out)

    def table(self) -> Table:
        pct = f"p{self.percentile:g}"
        t = Table("", "p50 ms", "p90 ms", "p99 ms", "mean ms", "SLA", "status",
                  title=f"simulated {self.agent}: {self.rate_per_s:g} req/s {self.arrival}, {self.duration_s:g} s, "
                        f"seed {self.seed}")
        deadline = f"{pct} ≤ {_ms(self.deadline_s)}" if self.deadline_s else "-"
        e2e_ok = self.deadline_s is None or self.e2e_at_sla_s <= self.deadline_s
        mean = f"{_ms(self.e2e.mean_s)} ± {_ms(self.e2e_mean_ci95_s)}"
        t.add_row("end-to-end", _ms(self.e2e.p50_s), _ms(self.e2e.p90_s), _ms(self.e2e.p99_s), mean, deadline,
                  _status(e2e_ok))
        for s in self.llm:
            for what, q, limit, at in (("TTFT", s.ttft, s.ttft_limit_s, s.ttft_at_sla_s),
                                       ("TBT", s.tbt, s.tbt_limit_s, s.tbt_at_sla_s)):
                ok = limit is None or not at > limit
                t.add_row(f"{s.node} {what}", _ms(q.p50_s), _ms(q.p90_s), _ms(q.p99_s), _ms(q.mean_s),
                          f"{pct} ≤ {_ms(limit)}" if limit else "-", _status(ok))
        t.add_section()
        worst = max(self.pools, key=lambda p: p.utilisation, default=None)
        for p in self.pools:
            busy = f" · busy {p.busy:.0%}" if abs(p.busy - p.utilisation) > 0.005 else ""
            status = "saturated" if p.utilisation >= SATURATED else ("busiest" if p is worst else "")
            t.add_row(f"queue · {p.op} ({p.device})", _ms(p.wait.p50_s), _ms(p.wait.p90_s), _ms(p.wait.p99_s),
                      _ms(p.wait.mean_s), f"util {p.utilisation:.0%}{busy}", status)
        for link in self.links:
            t.add_row(f"link · {link.name}", "", "", "", "", f"util {link.utilisation_mean:.0%} "
                      f"(max {link.utilisation_max:.0%})", "")
        for k in self.kv:
            planned = f" (planned {k.planned_hit_rate:.0%})" if k.planned_hit_rate is not None else ""
            lower = sum(v for tier, v in k.hit_tokens.items() if tier != "device")
            below = f" · {lower / max(sum(k.hit_tokens.values()), 1):.0%} of hits from host/disk" if lower else ""
            t.add_row(f"KV · {k.pool} ({k.policy})", "", "", "", "", f"hit {k.hit_rate:.0%}{planned}{below}", "")
        verdict = "[green]meets its SLA[/]" if self.meets_sla else "[red]misses its SLA[/]"
        unfinished = f" ({self.unfinished} unfinished)" if self.unfinished else ""
        t.caption = (f"{self.requests} requests measured{unfinished} · attainment {self.attainment:.2%} · {verdict}"
                     f" · queueing {_ms(self.queue_wait_mean_s)} ms per request"
                     f" · ${self.usd_per_request * 1e3:.4f} per 1k requests · ${self.usd_per_m_tokens:.3f}/M output "
                     f"tokens · {self.sim_requests_per_wall_s:,.0f} simulated requests/s"
                     + "".join(f"\n✗ {b}" for b in self.breaks) + "".join(f"\nnote: {n}" for n in self.notes))
        return t


def _ms(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    return "∞" if math.isinf(s) else f"{s * 1e3:,.1f}"


def _status(ok: bool) -> str:
    return "[green]ok[/]" if ok else "[red]missed[/]"


def _finite(x: Any) -> Any:
    """JSON has no inf or nan: write them as null (with the count of unfinished requests alongside)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _window(sim: Simulation, key: str, snaps: str = "end") -> tuple[float, float]:
    a = sim.snapshots.get("warmup", {}).get(key, (0.0, 0.0))
    b = sim.snapshots.get(snaps, {}).get(key, (0.0, 0.0))
    return b[0] - a[0], b[1] - a[1]


def simulate(model: SimModel, config: SimConfig) -> SimReport:
    """Run `model` under `config` and summarise it."""
    return report_from(Simulation(model, config).run())


def report_from(sim: Simulation) -> SimReport:
    c, m = sim.config, sim.model
    lo, hi = c.warmup, c.duration_s
    window_s = hi - lo
    r = {k: np.frombuffer(v, dtype=np.float64) if len(v) else np.zeros(0) for k, v in sim.requests.items()}
    keep = (r["arrival_s"] >= lo) & (r["arrival_s"] < hi)
    req = {k: v[keep] for k, v in r.items()}
    order = np.argsort(req["arrival_s"], kind="stable")
    req = {k: v[order] for k, v in req.items()}
    measured = sim.measured
    completed = int(keep.sum())
    unfinished = measured - completed
    e2e_all = np.concatenate([req["e2e_s"], np.full(unfinished, np.inf)])
    e2e = Percentiles.of(e2e_all)
    pct = m.percentile
    deadline = m.deadline_s
    on_time = req["e2e_s"] <= deadline if deadline else np.ones(completed, dtype=bool)
    attainment = float((on_time & (req["ok"] > 0)).sum() / measured) if measured else math.nan

    llm, calls, tokens = [], {}, 0
    for st in sim.llm_stages:
        arr = {k: np.frombuffer(v, dtype=np.float64) if len(v) else np.zeros(0) for k, v in st.calls.items()}
        w = (arr["arrival_s"] >= lo) & (arr["arrival_s"] < hi)
        a = {k: v[w] for k, v in arr.items()}
        calls[st.node.path] = a
        tokens += int(a["osl"].sum())
        ttft, tbt = a["ttft_s"], a["tbt_s"]
        tbt_known = tbt[~np.isnan(tbt)]
        llm.append(LlmStats(
            st.node.path, int(ttft.size), Percentiles.of(ttft), Percentiles.of(tbt), st.ttft_limit_s, st.tbt_limit_s,
            _pct(ttft, pct), _pct(tbt, pct),
            float((ttft <= st.ttft_limit).mean()) if ttft.size else math.nan,
            float((tbt_known <= st.tbt_limit).mean()) if tbt_known.size else math.nan))

    pools, waits = [], []
    from terrazzo.cost.tco import device_usd_per_hour

    def usd_per_device(device: str) -> float:
        return device_usd_per_hour(m.catalog, device, m.cluster.tco_profile, m.cluster.price_profile).usd_h

    for name, pool in sim.pools.items():
        v = pool.visits
        sub = np.frombuffer(v.submit_s, dtype=np.float64) if len(v.submit_s) else np.zeros(0)
        w = (sub >= lo) & (sub < hi)
        wait = np.frombuffer(v.wait_s, dtype=np.float64)[w] if len(v.wait_s) else np.zeros(0)
        service = np.frombuffer(v.service_s, dtype=np.float64)[w] if len(v.service_s) else np.zeros(0)
        busy, occ = _window(sim, name)
        cap = pool.capacity * window_s
        entry = m.pools[name]
        planned = [p for places in m.placements.values() for p in places if p.pool == name]
        kind = planned[0].kind if entry.role != "shared" else "shared"
        label = f"{entry.device} tp{entry.tp}" + (f"pp{entry.pp}" if entry.pp > 1 else "") + f" ×{entry.replicas}"
        pools.append(PoolStats(
            name, kind, label, entry.replicas, pool.capacity, occ / cap if cap else math.nan,
            busy / cap if cap else math.nan, float(w.sum()) / measured if measured else math.nan,
            Percentiles.of(wait), float(service.mean()) if service.size else math.nan,
            sum(p.latency_s * p.visits * p.share for p in planned) / max(sum(p.visits * p.share for p in planned),
                                                                         1e-12),
            entry.devices * usd_per_device(entry.device)))
        waits.append(wait.sum())
    links = _links(sim, window_s)
    usd_window = m.usd_h * window_s / 3600
    report = SimReport(
        m.name, m.source, c.rate_per_s if c.rate_per_s is not None else m.rate_per_s, c.arrival, c.duration_s, lo,
        c.seed, measured, completed, unfinished, e2e, mean_ci95(req["e2e_s"]), deadline, pct, _pct(e2e_all, pct),
        attainment, False, [], llm, pools, links, float(m.plan.get("e2e_latency_s") or math.nan), m.usd_h,
        usd_window / measured if measured else math.inf, usd_window / tokens * 1e6 if tokens else math.inf, tokens,
        float(sum(waits)) / measured if measured else math.nan, sim.wall_s, sim.env.events,
        Records(req, calls), notes=list(sim.notes))
    if c.arrival == "trace" and c.rate_per_s is None:
        report.rate_per_s = measured / window_s if window_s else math.nan
    report.kv = _kv(sim)
    report.breaks = _breaks(report)
    report.meets_sla = not report.breaks
    return report


def _kv(sim: Simulation) -> list[KvStats]:
    out = []
    for name, pkv in sim.kv_pools.items():
        ops = [p for places in sim.model.placements.values() for p in places if p.pool == name]
        policies = sorted({sim.config.kv_policy or p.kv.policy for p in ops} - {"recompute"}) or ["recompute"]
        planned = [p.kv.hit_rate for p in ops if p.kv.hit_rate is not None]
        st = pkv.stats()
        out.append(KvStats(name, "/".join(policies), st["hit_rate"], planned[0] if planned else None, st["lookups"],
                           st["hit_tokens"], st["missed_tokens"], st["evicted_tokens"], st["calls_per_replica"]))
    return out


def _links(sim: Simulation, window_s: float) -> list[LinkStats]:
    groups: dict[str, list] = {}
    for op in (op for route in sim.routes.values() for op, _ in route):
        for (_, dst), link in op.links.items():
            groups.setdefault(f"{op.name} → {dst}", []).append(link)
    out = []
    for name, links in groups.items():
        utils = [_window(sim, f"link:{lk.name}")[0] / window_s for lk in links] if window_s else [math.nan]
        out.append(LinkStats(name, len(links), sum(lk.transfers for lk in links),
                             sum(lk.bytes_total for lk in links) / 1e9, float(np.mean(utils)), float(np.max(utils))))
    return out


def _breaks(r: SimReport) -> list[str]:
    """Each SLA term the run misses, with the pool most to blame."""
    pct = f"p{r.percentile:g}"
    out = []
    if r.unfinished:
        out.append(f"{r.unfinished} of {r.requests} requests ({r.unfinished / r.requests:.1%}) had not finished "
                   f"when the drain ended: the offered load exceeds what the pools can serve")
    if r.deadline_s and r.e2e_at_sla_s > r.deadline_s:
        out.append(f"end-to-end {pct} {_ms(r.e2e_at_sla_s)} ms > {_ms(r.deadline_s)} ms deadline")
    for s in r.llm:
        pools = [p for p in r.pools if p.op.startswith(f"{s.node}.")]
        culprit = max(pools, key=lambda p: p.wait.mean_s, default=None)
        why = (f" — {culprit.op} on {culprit.device}: utilisation {culprit.utilisation:.0%}, mean queue "
               f"{_ms(culprit.wait.mean_s)} ms" if culprit else "")
        if s.ttft_limit_s is not None and s.ttft_at_sla_s > s.ttft_limit_s:
            out.append(f"{s.node} TTFT {pct} {_ms(s.ttft_at_sla_s)} ms > {_ms(s.ttft_limit_s)} ms{why}")
        if s.tbt_limit_s is not None and s.tbt_at_sla_s > s.tbt_limit_s:
            out.append(f"{s.node} TBT {pct} {_ms(s.tbt_at_sla_s)} ms > {_ms(s.tbt_limit_s)} ms{why}")
    if out:
        for p in sorted(r.pools, key=lambda p: -p.utilisation):
            if p.utilisation >= SATURATED:
                out.append(f"{p.op} ({p.device}) is saturated: utilisation {p.utilisation:.0%}, mean queue "
                           f"{_ms(p.wait.mean_s)} ms, p99 queue {_ms(p.wait.p99_s)} ms")
        blame = max(r.pools, key=lambda p: p.wait.mean_s * p.visits_per_request, default=None)
        if blame is not None and blame.wait.mean_s > 0:
            out.append(f"largest queueing per request: {blame.op} ({blame.device}), "
                       f"{_ms(blame.wait.mean_s * blame.visits_per_request)} ms of the "
                       f"{_ms(r.e2e.mean_s)} ms mean")
    return out


@dataclass(frozen=True)
class OpCheck:
    op: str
    kind: str
    device: str
    planned_s: float
    simulated_s: float
    wait_s: float
    ratio: float
    flagged: bool
    why: str


@dataclass
class PlanCheck:
    """Predicted against simulated latency, per op (one visit) and per request, at the planned rate."""

    agent: str
    rate_per_s: float
    tolerance: float
    seed: int
    duration_s: float
    ops: list[OpCheck]
    e2e_planned_s: float
    e2e_simulated_mean_s: float
    e2e_simulated_p99_s: float
    e2e_flagged: bool
    requests_flagged: float
    requests_slower: float
    requests_faster: float
    meets_sla: bool
    report: SimReport = field(repr=False)

    @property
    def ok(self) -> bool:
        return not self.e2e_flagged and not any(o.flagged for o in self.ops)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "report"}
        out["schema"] = "terrazzo.plan-check/v1"
        out["ok"] = self.ok
        out["simulation"] = self.report.to_json()
        return _finite(out)

    def table(self) -> Table:
        t = Table("op", "device", "planned ms", "simulated ms", "of which queue", "sim ÷ plan", "", "why",
                  title=f"plan check: {self.agent} simulated at the planned {self.rate_per_s:g} req/s "
                        f"(tolerance ±{self.tolerance:.0%}, seed {self.seed})")
        for o in self.ops:
            t.add_row(o.op, o.device, _ms(o.planned_s), _ms(o.simulated_s), _ms(o.wait_s), f"{o.ratio:.2f}",
                      "[yellow]flag[/]" if o.flagged else "[green]ok[/]", o.why)
        t.add_section()
        ratio = self.e2e_simulated_mean_s / self.e2e_planned_s if self.e2e_planned_s else math.nan
        t.add_row("end-to-end (mean)", "", _ms(self.e2e_planned_s), _ms(self.e2e_simulated_mean_s), "",
                  f"{ratio:.2f}", "[yellow]flag[/]" if self.e2e_flagged else "[green]ok[/]",
                  f"p99 {_ms(self.e2e_simulated_p99_s)} ms")
        t.caption = (f"{self.requests_flagged:.1%} of requests differ from their own prediction by more than "
                     f"±{self.tolerance:.0%} ({self.requests_slower:.1%} slower, {self.requests_faster:.1%} faster); "
                     f"the SLA is {'met' if self.meets_sla else 'missed'} in simulation")
        return t


def plan_check_from(report: SimReport, tolerance: float) -> PlanCheck:
    """Flag each op whose mean simulated time per visit (queue + service) is off the plan's by more than
    `tolerance`, the mean end-to-end latency likewise, and count the requests whose own latency is off
    the plan's formula applied to their own sampled work (`pred_s`) by more than `tolerance`."""
    ops = []
    for p in report.pools:
        sim_s = p.sojourn_mean_s
        ratio = sim_s / p.planned_latency_s if p.planned_latency_s > 0 else math.nan
        flagged = not abs(ratio - 1) <= tolerance
        ops.append(OpCheck(p.op, p.kind, p.device, p.planned_latency_s, sim_s, p.wait.mean_s, ratio, flagged,
                           _why(p, ratio) if flagged else ""))
    req = report.records.requests
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = req["e2e_s"] / req["pred_s"] - 1
    n = max(report.requests, 1)
    slower = float((rel > tolerance).sum() + report.unfinished) / n
    faster = float((rel < -tolerance).sum()) / n
    planned = report.plan_e2e_s
    e2e_ratio = report.e2e.mean_s / planned if planned else math.nan
    return PlanCheck(report.agent, report.rate_per_s, tolerance, report.seed, report.duration_s, ops, planned,
                     report.e2e.mean_s, report.e2e.p99_s, not abs(e2e_ratio - 1) <= tolerance, slower + faster, slower,
                     faster, report.meets_sla, report)


def _why(p: PoolStats, ratio: float) -> str:
    """The usual reasons a visit's simulated time departs from the plan's."""
    if ratio > 1:
        gap = p.sojourn_mean_s - p.planned_latency_s
        if p.wait.mean_s >= 0.5 * gap:
            return f"queueing: {_ms(p.wait.mean_s)} ms waiting at {p.utilisation:.0%} utilisation"
        return "service slower than planned (longer sampled work, or prefills stalling decode steps)"
    if p.kind.startswith(("llm.", "moe.")) and p.utilisation < 0.9:
        return f"batches fuller in the plan than in simulation ({p.utilisation:.0%} of the planned batch on average)"
    return "sampled work lighter than the planned mean"
