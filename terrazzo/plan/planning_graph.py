"""The planner's input: granular ops with priced candidates, the edges between them, and what sizes
pools (arrival rate, SLA, inventory). `plan.from_ir.build` fills it from the estimated IR; tests and
benchmarks may build one directly.

An LLM call appears as prefill → decode (KV edge) or as one aggregated op, or both as alternative
variants the MILP chooses between; routers (branch, loop) carry no work and are contracted away,
their effect kept in each op's expected visits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from terrazzo.cost.energy import PowerCurve
from terrazzo.cost.tco import HourlyCost

REFERENCE_DEVICE = "h100-sxm"  # the paper's baseline, always priced so H100::H100 can be reported
T = TypeVar("T")


@dataclass(frozen=True)
class OpCandidate:
    """One way to run an op: `latency_s` per visit on the request's path, `rate_per_s` visits one
    replica sustains, `devices` and `usd_h` per replica. First-token ops (prefill, aggregated) also
    carry `first_token_s`, the service time to the first token at the mean prompt, and how many
    prompts a replica serves at once (`prefill_slots`); the planner sizes their queues from these."""

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
    prefill_slots: int = 1
    source: str = "analytic"  # where the estimate comes from: analytic, fitted:<profile>, profile:<profile>#<points>
    step_s: float | None = None  # an LLM decode or aggregated candidate's time between tokens at `batch`
    spread: tuple[float, float] | None = None  # cross-validated p10/p90 of measured ÷ predicted time; None: unknown

    @property
    def label(self) -> str:
        return f"{self.device} tp{self.tp} pp{self.pp} b{self.batch}"


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {o.name: o for o in self.ops})

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


def prune(cands: list[OpCandidate]) -> tuple[OpCandidate, ...]:
    """Drop feasible candidates another on the same device beats on every count (latency, $/h, rate,
    devices per replica): a plan using the loser can swap in the winner with no more replicas, so the
    optimum is unchanged. Infeasible ones stay, for explanations."""
    ok = non_dominated([c for c in cands if c.feasible], lambda c: c.device,
                       lambda c: (c.latency_s, c.usd_h, -c.rate_per_s, c.devices))
    return tuple(ok + [c for c in cands if not c.feasible])
