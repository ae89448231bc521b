"""The planner's input: granular ops with priced candidates, the edges between them, and what sizes
pools (arrival rate, SLA, inventory). `plan.from_ir.build` fills it from the estimated IR; tests and
benchmarks may build one directly.

An LLM call appears as prefill → decode (KV edge) or as one aggregated op, or both as alternative
variants the MILP chooses between; routers (branch, loop) carry no work and are contracted away,
their effect kept in each op's expected visits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, TypeVar

from terrazzo.cost.energy import PowerCurve
from terrazzo.cost.tco import HourlyCost
from terrazzo.plan.kv_choice import KvChoice

REFERENCE_DEVICE = "h100-sxm"  # the paper's baseline, always priced so H100::H100 can be reported
T = TypeVar("T")


@dataclass(frozen=True)
class OpCandidate:
    """One way to run an op: `latency_s` per visit on the request's path, `rate_per_s` visits one
    replica sustains, `devices` and `usd_h` per replica.

    One definition of a replica's capacity, used by the planner, the checker, the simulator and the
    runtime: a replica has `pp` lanes (pipeline stages, each with a micro-batch in flight) of `batch`
    sequences, so it holds `slots` = batch × pp requests at once, each for `hold_s`; its rate is
    slots / hold_s. First-token ops (prefill, aggregated) also carry `first_token_s`, the service time
    to the first token at the mean prompt; their TTFT queue has replicas × slots servers of service
    `hold_s` (an aggregated replica's slot is held for the whole answer, so a prompt waits for a
    free decode slot). New fields must have defaults: other layers extend this type."""

    device: str
    tp: int
    pp: int
    batch: int
    latency_s: float
    rate_per_s: float
    devices: int
    usd_h: float
    feasible: bool = True
    reason: str = ""
    detail: str = ""
    first_token_s: float | None = None
    slots: int = 1  # requests one replica holds at once (batch × pp for LLM phases)
    source: str = "analytic"  # where the estimate comes from: analytic, fitted:<profile>, profile:<profile>#<points>
    hold_s: float | None = None  # how long a slot is held per request (None: latency_s)
    engine: str = "builtin"  # terrazzo.catalog.engines.Engine value serving this candidate
    engine_version: str = ""
    tbt_s: float | None = None  # an LLM decode step (decode, aggregated): time between tokens at `batch`
    spread: tuple[float, float] | None = None  # cross-validated p10/p90 of measured ÷ predicted time; None: unknown
    kv: KvChoice | None = None  # prefix reuse of a first-token op's candidate (plan/kv_candidates.py); None: none

    @property
    def label(self) -> str:
        kv = f" kv:{self.kv.policy}" if self.kv is not None and self.kv.policy != "recompute" else ""
        return f"{self.device} tp{self.tp} pp{self.pp} b{self.batch}{kv}"

    @property
    def lanes(self) -> int:
        return self.pp

    @property
    def slot_s(self) -> float:
        return self.latency_s if self.hold_s is None else self.hold_s

    @property
    def prefill_slots(self) -> int:
        """Back-compatible name for `slots`."""
        return self.slots


def llm_capacity(batch: int, pp: int, hold_s: float) -> tuple[int, float]:
    """(slots, requests/s) of one LLM replica: pp lanes of `batch` sequences, each slot held `hold_s`."""
    slots = max(batch, 1) * max(pp, 1)
    return slots, (slots / hold_s if hold_s > 0 and math.isfinite(hold_s) else 0.0)


@dataclass(frozen=True)
class PlanOp:
    """A placeable op. A first-token op with a TTFT limit also carries its prompt's tail: the SLA
    percentile of its work over the mean (`work_tail_ratio`), the work's squared coefficient of
    variation (`work_scv`), and its arrivals' (`arrival_scv`: 1 for Poisson)."""

    name: str
    kind: str
    node: str
    visits: float
    candidates: tuple[OpCandidate, ...]
    variant: str | None = None
    output_tokens: float = 0.0
    model: str | None = None
    dtype: str | None = None
    first_token_limit_s: float | None = None
    work_tail_ratio: float = 1.0
    work_scv: float = 0.0
    arrival_scv: float = 1.0
    hold_scv: float | None = None  # squared CV of how long a slot is held (None: work_scv)
    arrival_clump: float = 1.0  # size-biased mean requests arriving at one instant (plan/queueing.clump_wait_s)


@dataclass(frozen=True)
class PlanEdge:
    src: str
    dst: str
    data_bytes: float
    kind: Literal["data", "kv"] = "data"


@dataclass(frozen=True)
class VariantGroup:
    """Mutually exclusive ways to serve one agent node: variant name → its ops."""

    node: str
    variants: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class PlanningGraph:
    ops: tuple[PlanOp, ...]
    edges: tuple[PlanEdge, ...]
    groups: tuple[VariantGroup, ...]
    rate_per_s: float
    deadline_s: float | None
    utilisation_cap: float
    penalty_usd_h_per_s: float
    device_costs: dict[str, HourlyCost]
    link_bytes_s: dict[str, float]
    link_latency_s: float
    cluster_devices: tuple[str, ...]
    inventory: dict[str, int] = field(default_factory=dict)
    buy: tuple[str, ...] = ()
    mode: str = "unconstrained"
    percentile: float = 99.0  # the SLA's: first-token limits hold at this percentile
    power: dict[str, PowerCurve] = field(default_factory=dict)  # per device: idle and TDP watts (energy, max_kw)
    pue: float = 1.0
    max_kw: float | None = None  # device power limit (utilisation-weighted), kW
    max_devices: int | None = None  # rack limit: devices of every type together
    financing: str = ""  # the TCO profile's terms in words, for the keep-or-buy report
    _by_name: dict[str, PlanOp] = field(init=False, repr=False, compare=False)
    split: bool | None = None  # may an LLM op be split across pools? None: only when an inventory binds the fleet
    notes: tuple[str, ...] = ()  # what building the graph assumed (a trace's measured rate, ...)
    share_steps: int = 20  # a split non-LLM op's shares are multiples of 1/share_steps

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {o.name: o for o in self.ops})

    @property
    def splits(self) -> bool:
        """Whether the MILP may split an op's demand across several pools (an LLM op by its pools'
        capacities, any other op in steps of 1/share_steps)."""
        return self.mode != "unconstrained" if self.split is None else self.split

    def op(self, name: str) -> PlanOp:
        return self._by_name[name]

    def transfer_s(self, edge: PlanEdge, src_device: str, dst_device: str) -> float:
        """Time an edge's data takes between the ends' devices; KV always moves (different pools)."""
        if edge.kind == "data" and src_device == dst_device:
            return 0.0
        bw = min(self.link_bytes_s[src_device], self.link_bytes_s[dst_device])
        return self.link_latency_s + edge.data_bytes / bw

    def sinks(self) -> list[str]:
        has_out = {e.src for e in self.edges}
        return [o.name for o in self.ops if o.name not in has_out]


def non_dominated(items: list[T], group: Callable[[T], str], costs: Callable[[T], tuple[float, ...]]) -> list[T]:
    """Items no other item of the same group matches or beats on every cost (first kept on ties)."""
    kept: dict[str, list[tuple[float, ...]]] = {}
    out = []
    for item in sorted(items, key=costs):
        mine, c = kept.setdefault(group(item), []), costs(item)
        if not any(all(a <= b for a, b in zip(k, c, strict=True)) for k in mine):
            mine.append(c)
            out.append(item)
    return out


def is_dedicated(kind: str) -> bool:
    """LLM phases run on pools of their own (one model deployment serving one op); every other op
    shares the pool of its (device, parallelism, engine) with the other ops placed there."""
    return kind.startswith(("llm.", "moe."))


def prune(cands: list[OpCandidate] | tuple[OpCandidate, ...], kind: str = "", first_token: bool = False
          ) -> tuple[OpCandidate, ...]:
    """Drop feasible candidates that another beats on every quantity the MILP's constraints read, for
    any demand: latency, $/h, devices and rate per replica, and for a first-token op its queue (more
    slots held for less time) and its first-token time. Both candidates must sit in the same pool
    class (device and engine for a dedicated LLM pool; device, parallelism and engine for a shared
    one), so the swap leaves every other pool's load, the inventory and every transfer unchanged and
    never needs more replicas: the optimum is unchanged at every rate and share. Infeasible ones stay,
    for explanations."""
    return _prune(tuple(cands), is_dedicated(kind), first_token)


@lru_cache(maxsize=4096)
def _prune(cands: tuple[OpCandidate, ...], dedicated: bool, first_token: bool) -> tuple[OpCandidate, ...]:
    """`prune` on one candidate list (identical ops of a large agent share the answer)."""

    def group(c: OpCandidate) -> str:
        return f"{c.device}/{c.engine}/{c.engine_version}" + ("" if dedicated else f"/{c.tp}/{c.pp}")

    def costs(c: OpCandidate) -> tuple[float, ...]:
        base = (c.latency_s, c.usd_h, float(c.devices), -c.rate_per_s)
        if not first_token or c.first_token_s is None:
            return base
        extra = 1.0 if c.batch > 1 else 0.0
        return (*base, -float(c.slots), c.slot_s, c.first_token_s, c.first_token_s * (1.0 + extra))

    ok = non_dominated([c for c in cands if c.feasible], group, costs)
    return tuple(ok + [c for c in cands if not c.feasible])
