"""The one fleet model: pools are the unit the planner prices, the checker judges, the simulator runs,
the runtime starts and `deploy` provisions.

A candidate belongs to a pool: a dedicated one for an LLM phase (one model deployment serving one
op: its device, parallelism, batch and engine), or the shared pool of its (device, parallelism,
engine) for every other op. An op places shares of its demand on one or more candidates (a split
across device types). A pool is sized once for everything placed on it:

- a shared pool: the fewest replicas whose busy time Σ share·demand / rate stays under the
  utilisation cap (at least one);
- a dedicated pool: the same for its share, and for a first-token op also the fewest replicas
  whose percentile TTFT, queueing for a slot included, stays within the limit (plan/queueing.py).

TCO is the sum over pools of replicas × $/h per replica. A split op's shares are proportional to
the capacity of its pools (`capacity_per_s`), which is how the runtime's router divides it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from terrazzo.plan.planning_graph import OpCandidate, PlanningGraph, PlanOp, is_dedicated
from terrazzo.plan.queueing import clump_wait_s, servers_for, wait_quantile_s

TOLERANCE = 1e-6
BUILTIN_ENGINE = "builtin"


@dataclass(frozen=True)
class Share:
    """A share of an op's demand placed on one of its candidates (an index into `PlanOp.candidates`)."""

    candidate: int
    share: float = 1.0


@dataclass(frozen=True)
class Assignment:
    """Active ops only: op → its shares. `replicas` fixes pool sizes (pool name → replicas), as a plan
    file does; pools it does not name get the fewest replicas that carry their load."""

    placements: dict[str, tuple[Share, ...]]
    replicas: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, chosen: Mapping[str, int]) -> Assignment:
        """Each op wholly on one candidate."""
        return cls({op: (Share(k, 1.0),) for op, k in chosen.items()})

    def shares(self, op: str) -> tuple[Share, ...]:
        return self.placements[op]

    def candidate(self, graph: PlanningGraph, op: str) -> OpCandidate:
        """The candidate carrying the largest share of `op`."""
        best = max(self.placements[op], key=lambda s: s.share)
        return graph.op(op).candidates[best.candidate]

    def candidates(self, graph: PlanningGraph, op: str) -> list[OpCandidate]:
        return [graph.op(op).candidates[s.candidate] for s in self.placements[op]]

    def devices_of(self, graph: PlanningGraph, op: str) -> frozenset[str]:
        return frozenset(c.device for c in self.candidates(graph, op))


@dataclass(frozen=True)
class PoolKey:
    device: str
    tp: int
    pp: int
    engine: str = BUILTIN_ENGINE
    engine_version: str = ""
    op: str | None = None  # a dedicated (LLM) pool's op
    batch: int = 0  # a dedicated pool's sequences per lane
    kv: str = ""  # a first-token pool's prefix policy (plan/kv_candidates.py) other than recompute: its own pool

    @property
    def name(self) -> str:
        base = f"{self.device}-tp{self.tp}-pp{self.pp}"
        if self.engine != BUILTIN_ENGINE or self.engine_version:
            base += f"-{self.engine}" + (f"-{self.engine_version}" if self.engine_version else "")
        return f"{self.op}@{base}-b{self.batch}" + (f"-kv-{self.kv}" if self.kv else "") if self.op else base


def pool_key(op: PlanOp, c: OpCandidate) -> PoolKey:
    if is_dedicated(op.kind):
        kv = c.kv.policy if c.kv is not None and c.kv.policy != "recompute" else ""
        return PoolKey(c.device, c.tp, c.pp, c.engine, c.engine_version, op.name, c.batch, kv)
    return PoolKey(c.device, c.tp, c.pp, c.engine, c.engine_version)


@dataclass(frozen=True)
class Member:
    op: str
    candidate: int
    share: float
    load: float  # replica-equivalents of busy time: share · demand / rate


@dataclass(frozen=True)
class PoolSize:
    key: PoolKey
    replicas: int
    min_replicas: int
    devices_per_replica: int
    usd_h_per_replica: float
    members: tuple[Member, ...]

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def devices(self) -> int:
        return self.replicas * self.devices_per_replica

    @property
    def usd_h(self) -> float:
        return self.replicas * self.usd_h_per_replica

    @property
    def load(self) -> float:
        return sum(m.load for m in self.members)


def demand_per_s(graph: PlanningGraph, op: str) -> float:
    return graph.rate_per_s * graph.op(op).visits


def load_of(graph: PlanningGraph, op: str, c: OpCandidate, share: float) -> float:
    d = demand_per_s(graph, op) * share
    if d <= 0 or math.isinf(c.rate_per_s):
        return 0.0
    return d / c.rate_per_s if c.rate_per_s > 0 else math.inf


def throughput_replicas(load: float, utilisation_cap: float) -> int:
    """Fewest replicas whose busy share stays under the cap (at least one)."""
    if load <= 0:
        return 1
    if math.isinf(load):
        return 1_000_000_000
    return max(1, math.ceil(load / utilisation_cap - TOLERANCE))


def first_token_service_s(op: PlanOp, c: OpCandidate) -> float:
    """Percentile service to the first token on an idle replica: the percentile prompt, plus the running
    batch a batched prefill waits out."""
    if c.first_token_s is None:
        return c.latency_s
    extra = 1.0 if c.batch > 1 and op.kind != "llm.aggregated" else 0.0
    return c.first_token_s * (op.work_tail_ratio + extra)


def queues_for_first_token(op: PlanOp, c: OpCandidate) -> bool:
    return op.first_token_limit_s is not None and c.first_token_s is not None


def first_token_attainable(graph: PlanningGraph, op: str, c: OpCandidate) -> bool:
    """Whether an idle pool meets the op's percentile TTFT limit (queueing can only add to it)."""
    o = graph.op(op)
    return not queues_for_first_token(o, c) or first_token_service_s(o, c) <= o.first_token_limit_s * (  # type: ignore
        1 + TOLERANCE)


def first_token_tail_s(graph: PlanningGraph, op: str, c: OpCandidate, replicas: int | None = None,
                       share: float = 1.0) -> float:
    """Percentile time to first token: idle service, and with `replicas` given, the percentile wait for
    one of the pool's replicas × slots slots, each held `slot_s`, and for the prompts of its own clump
    served before it (`clump_service`)."""
    o = graph.op(op)
    service = first_token_service_s(o, c)
    if replicas is None or c.first_token_s is None:
        return service
    lanes, each_s = clump_service(o, c)
    return service + wait_quantile_s(replicas * c.slots, demand_per_s(graph, op) * share, c.slot_s, o.arrival_scv,
                                     _hold_scv(o), graph.percentile) + clump_wait_s(
        o.arrival_clump, replicas * lanes, each_s, graph.percentile)


def clump_service(o: PlanOp, c: OpCandidate) -> tuple[int, float]:
    """How a replica works through a clump of prompts: (prompts at once, seconds each). A prefill
    replica takes `slots` prompts per batch of `slot_s`; an aggregated one prefills on each of its pp
    lanes one prompt's worth at a time (its first token less the decode step it waits out)."""
    if o.kind == "llm.aggregated" and c.first_token_s is not None:
        return max(c.pp, 1), max(c.first_token_s - (c.tbt_s or 0.0), 0.0)
    return c.slots, c.slot_s


def _hold_scv(o: PlanOp) -> float:
    return o.work_scv if o.hold_scv is None else o.hold_scv


def dedicated_replicas(graph: PlanningGraph, op: str, c: OpCandidate, share: float = 1.0) -> int:
    """Replicas of a dedicated pool carrying `share` of the op: its load within the utilisation cap and,
    for a first-token op, its percentile TTFT within the limit (unattainable: the throughput count,
    which `check` then rejects)."""
    o = graph.op(op)
    n = throughput_replicas(load_of(graph, op, c, share), graph.utilisation_cap)
    if c.kv is not None:  # KV reuse: room for the prefixes the pool parks (plan/kv_candidates.py)
        n = max(n, kv_replicas(graph, op, c, share))
    lam = demand_per_s(graph, op) * share
    if (not queues_for_first_token(o, c) or lam <= 0 or math.isinf(c.rate_per_s) or not c.feasible
            or not c.rate_per_s > 0 or not math.isfinite(c.slot_s)):
        return n  # an infeasible candidate is never sized by its queue (check rejects it anyway)
    lanes, each_s = clump_service(o, c)
    need = servers_for(lam, c.slot_s, first_token_service_s(o, c), o.arrival_scv, _hold_scv(o), graph.percentile,
                       o.first_token_limit_s * (1 + TOLERANCE), n, c.slots,  # type: ignore[operator]
                       o.arrival_clump, lanes, each_s)
    return n if need is None else need


def kv_replicas(graph: PlanningGraph, op: str, c: OpCandidate, share: float = 1.0) -> int:
    """Replicas a pool needs to park its prefixes (KV reuse): λ · byte-seconds per visit over each
    replica's room (0 when the candidate parks nothing)."""
    ch = c.kv
    if ch is None or ch.policy == "recompute" or ch.byte_s_per_visit <= 0:
        return 0
    if not math.isfinite(ch.room_bytes):
        return 1
    if ch.room_bytes <= 0:
        return 1_000_000_000
    resident = demand_per_s(graph, op) * share * ch.byte_s_per_visit
    return max(1, math.ceil(resident / ch.room_bytes - TOLERANCE))


def min_replicas(graph: PlanningGraph, op: str, c: OpCandidate) -> int:
    """Replicas the op needs on `c` alone: a dedicated pool's size, or its own load on a shared one."""
    if is_dedicated(graph.op(op).kind):
        return dedicated_replicas(graph, op, c)
    return throughput_replicas(load_of(graph, op, c, 1.0), graph.utilisation_cap)


def capacity_per_s(graph: PlanningGraph, op: str, c: OpCandidate, replicas: int) -> float:
    """Arrivals/s of `op` that `replicas` replicas of dedicated candidate `c` carry: within the utilisation
    cap and, for a first-token op, within the percentile TTFT limit (0 when unattainable)."""
    if replicas <= 0 or not c.feasible:
        return 0.0
    o = graph.op(op)
    if math.isinf(c.rate_per_s):
        return math.inf
    throughput = graph.utilisation_cap * c.rate_per_s * (replicas + TOLERANCE)
    if c.kv is not None and c.kv.byte_s_per_visit > 0:  # KV reuse: the prefixes parked must fit the pool
        throughput = min(throughput, replicas * c.kv.room_bytes / c.kv.byte_s_per_visit * (1 + TOLERANCE))
    if not queues_for_first_token(o, c):
        return throughput
    if not first_token_attainable(graph, op, c):
        return 0.0
    lanes, each_s = clump_service(o, c)
    own_clump_s = clump_wait_s(o.arrival_clump, replicas * lanes, each_s, graph.percentile)  # whatever the rate
    return min(throughput, _queue_capacity(replicas * c.slots, c.slot_s, first_token_service_s(o, c) + own_clump_s,
                                           o.arrival_scv, _hold_scv(o), graph.percentile,
                                           o.first_token_limit_s * (1 + TOLERANCE)))  # type: ignore[operator]


@lru_cache(maxsize=65536)
def _queue_capacity(servers: int, service_s: float, tail_s: float, arrival_scv: float, service_scv: float,
                    percentile: float, limit_s: float) -> float:
    """Largest arrival rate whose percentile wait plus `tail_s` stays within `limit_s` (the wait grows
    monotonically with the rate), by bisection on the feasible side."""
    lo, hi = 0.0, servers / service_s
    for _ in range(60):
        mid = (lo + hi) / 2
        if tail_s + wait_quantile_s(servers, mid, service_s, arrival_scv, service_scv, percentile) <= limit_s:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    return lo


def capacity_shares(graph: PlanningGraph, op: str, replicas: dict[int, int]) -> tuple[Share, ...]:
    """Shares of a split op proportional to its pools' capacities (candidate → replicas)."""
    o = graph.op(op)
    caps = {k: capacity_per_s(graph, op, o.candidates[k], n) for k, n in replicas.items() if n > 0}
    caps = {k: v for k, v in caps.items() if v > 0}
    if not caps:
        return tuple(Share(k, 1.0 / len(replicas)) for k in replicas)
    if any(math.isinf(v) for v in caps.values()):
        k = next(k for k, v in caps.items() if math.isinf(v))
        return (Share(k, 1.0),)
    total = sum(caps.values())
    return tuple(Share(k, v / total) for k, v in sorted(caps.items()))


def size_pools(graph: PlanningGraph, a: Assignment) -> dict[str, PoolSize]:
    """Every pool the assignment uses, sized once for all its members: the fewest replicas that carry
    them, or the size `a.replicas` fixes (which `check` holds against that minimum)."""
    members: dict[PoolKey, list[Member]] = {}
    cands: dict[PoolKey, OpCandidate] = {}
    for op, shares in a.placements.items():
        o = graph.op(op)
        for s in shares:
            c = o.candidates[s.candidate]
            key = pool_key(o, c)
            members.setdefault(key, []).append(Member(op, s.candidate, s.share, load_of(graph, op, c, s.share)))
            cands.setdefault(key, c)
    out = {}
    for key, ms in members.items():
        c = cands[key]
        if key.op is not None:
            least = max(dedicated_replicas(graph, m.op, graph.op(m.op).candidates[m.candidate], m.share) for m in ms)
        else:
            least = throughput_replicas(sum(m.load for m in ms), graph.utilisation_cap)
        n = a.replicas.get(key.name, least)
        out[key.name] = PoolSize(key, n, least, c.devices, c.usd_h, tuple(ms))
    return out


def devices_used(graph: PlanningGraph, pools: Mapping[str, PoolSize]) -> dict[str, int]:
    used: dict[str, int] = {}
    for p in pools.values():
        used[p.key.device] = used.get(p.key.device, 0) + p.devices
    return used


def fleet_usd_h(graph: PlanningGraph, used: Mapping[str, int], pools: Mapping[str, PoolSize] | None = None) -> float:
    """$/h of a fleet: the sum over pools of replicas × $/h per replica; in own-and-buy mode owned
    devices cost only power, bought ones their full TCO (per device type)."""
    if graph.mode != "own-and-buy" and pools is not None:
        return sum(p.usd_h for p in pools.values())
    total = 0.0
    for device, n in used.items():
        cost = graph.device_costs[device]
        if graph.mode == "own-and-buy":
            owned = min(n, graph.inventory.get(device, 0))
            total += owned * (cost.power_usd_h + cost.host_usd_h) + (n - owned) * cost.usd_h
        else:
            total += n * cost.usd_h
    return total


def link_s(graph: PlanningGraph, data_bytes: float, device: str) -> float:
    return graph.link_latency_s + data_bytes / graph.link_bytes_s[device]


def edge_transfer_s(graph: PlanningGraph, kind: str, data_bytes: float, src: frozenset[str],
                    dst: frozenset[str]) -> float:
    """An edge's transfer between ops on device sets `src` and `dst`: KV always moves (separate pools);
    data moves when some share of it lands on another device type, at the slower NIC of any such pair."""
    if kind == "kv":
        return max((link_s(graph, data_bytes, d) for d in src | dst), default=0.0)
    t = 0.0
    for d in src:
        if dst != {d}:
            t = max(t, link_s(graph, data_bytes, d))
    for d in dst:
        if src != {d}:
            t = max(t, link_s(graph, data_bytes, d))
    return t
