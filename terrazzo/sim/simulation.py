"""A plan wired into the simulator: one station per plan pool (shared by the ops the plan places on
it), one stage per work node, links between devices, arrivals, and the records a report is made of.
An op split over several pools goes to each by the plan's shares (smooth weighted round-robin, as
the runtime's router does).

Each work node of the agent becomes a chain of stages, one per planned op (an LLM call: prefill → KV
transfer → decode, or one aggregated stage; a tool: lookup → compute; a memory lookup: embed → search). Data moves
between stages on different device types over a link of the sending replica (bandwidth the slower
NIC's, as the planner prices it, shared by that replica's concurrent transfers to the same device
type); on one device type it is free, as in the planner. KV always moves between prefill and decode.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from terrazzo.cost.candidates import deployment
from terrazzo.cost.kv_reuse_pricing import replica_kv_bytes
from terrazzo.cost.kv_tiers import tier_link
from terrazzo.cost.llm import Deployment, kv_bytes_per_token
from terrazzo.cost.network import scale_out_link
from terrazzo.cost.reuse_calibration import read_term
from terrazzo.errors import SimError, TerrazzoError
from terrazzo.sim.arrivals import renewal_times, trace_times
from terrazzo.sim.engine import Environment
from terrazzo.sim.flow import CNode, Flow, Request, Token, compile_graph
from terrazzo.sim.kv_lanes import PoolKv, Shared, call_chain
from terrazzo.sim.links import Link
from terrazzo.sim.pools import Arrivals, LlmPool, Seq, ServerPool
from terrazzo.sim.sampling import dist_draws, stream, token_draws, uniform_draws
from terrazzo.sim.service_times import LlmCost, OpService
from terrazzo.sim.sim_inputs import PREVIOUS_TOKEN_BUDGET, PlannedOp, SimModel
from terrazzo.sim.traces import Trace
from terrazzo.spec.agent import SHARED_SOURCES, LlmNode, Node
from terrazzo.spec.distributions import Dist
from terrazzo.spec.prefix import has_conversation, prefix_tokens

PREFILL_TOKEN_BUDGET = 8192  # prompt tokens per prefill iteration of an aggregated replica (engine setting)
# KV tiers below the device, as multiples of the replica's device KV: what a GPU server has per GPU of HBM.
# derived: NVIDIA DGX H100 datasheet (https://resources.nvidia.com/en-us-dgx-systems/ai-enterprise-dgx):
# 2 TB system memory and 30.72 TB internal NVMe for 8 × 80 GB HBM3 = 640 GB, i.e. 3.2× and 48×.
HOST_PER_DEVICE_KV, DISK_PER_DEVICE_KV = 3.2, 48.0


@dataclass(frozen=True)
class SimConfig:
    """How to drive a model. `rate_per_s` None: the plan's rate. `arrival`: poisson, gamma (cv > 1 is
    bursty) or trace. Requests arriving in [warmup_s, duration_s) are measured; the run then drains
    for up to `drain_s` so that they finish. Defaults: warm-up 5 % of the duration (at most 60 s),
    drain four durations plus a minute."""

    duration_s: float = 300.0
    rate_per_s: float | None = None
    arrival: str = "poisson"
    cv: float = 1.0
    trace: Trace | None = None
    seed: int = 0
    warmup_s: float | None = None
    drain_s: float | None = None
    progress: bool = False
    prefill_token_budget: int = PREFILL_TOKEN_BUDGET
    kv_policy: str | None = None  # every LLM op's KV policy instead of the plan's (recompute, retain, host, disk)
    cache_aware: bool = True  # route an LLM call to the replica holding its prefix (False: least loaded)
    record_arrivals: bool = False  # LLM pools keep what they were sent (verify/queue_replay.py replays it)

    @property
    def warmup(self) -> float:
        return self.warmup_s if self.warmup_s is not None else min(0.05 * self.duration_s, 60.0)

    @property
    def drain(self) -> float:
        return self.drain_s if self.drain_s is not None else 4 * self.duration_s + 60.0


class Op:
    """A planned op and the pool that runs it; `link()` gives a replica's link towards a device type."""

    def __init__(self, sim: Simulation, planned: PlannedOp, pool: Any) -> None:
        self.sim, self.planned, self.pool = sim, planned, pool
        self.name, self.device = planned.name, planned.device
        self.links: dict[tuple[int, str], Link] = {}

    def link(self, replica: int, dst_device: str) -> Link:
        key = (replica, dst_device)
        link = self.links.get(key)
        if link is None:
            bw = min(self.sim.nic_bytes_s(self.device), self.sim.nic_bytes_s(dst_device))
            where = self.name if self.planned.share >= 1.0 else f"{self.name}@{self.planned.pool}"
            link = self.links[key] = Link(self.sim.env, f"{where}#{replica}→{dst_device}", bw,
                                          self.sim.fabric_latency_s)
        return link


class Stage:
    """One step of a work node's chain; `next` is the following stage or None (then the node is done)."""

    device: str
    op: Op
    next: Stage | None = None

    @property
    def op_name(self) -> str:
        return self.op.name

    def __init__(self, sim: Simulation, node: CNode) -> None:
        self.sim, self.node = sim, node

    def start(self, tok: Token) -> None:
        raise NotImplementedError

    def finish(self, tok: Token, op: Op, replica: int) -> None:
        tok.src = (op, replica)
        if self.next is None:
            self.sim.flow.leave(tok, self.node)
        else:
            self.sim.goto(tok, self.next)


class Router:
    """Smooth weighted round-robin over an op's pools by the plan's shares: each pool gets its share of
    the visits, interleaved."""

    def __init__(self, choices: list[tuple[Op, float]]) -> None:
        self.choices = choices
        self.current = [0.0] * len(choices)
        self.total = sum(w for _, w in choices)

    def pick(self) -> Op:
        if len(self.choices) == 1:
            return self.choices[0][0]
        cur = self.current
        for i, (_, w) in enumerate(self.choices):
            cur[i] += w
        best = max(range(len(cur)), key=cur.__getitem__)
        cur[best] -= self.total
        return self.choices[best][0]


class OpStage(Stage):
    """A non-LLM op: hold one of its pool's servers for the visit's service time (then `after_s` off it).
    On a pool shared with ops of more servers per replica (cores vs concurrent HTTP waits), a visit holds
    a server for its share of one (servers of the pool ÷ the op's own), the rest off it: the busy time the
    planner sized the pool for, the same latency."""

    def __init__(self, sim: Simulation, node: CNode, op: Op, service: OpService) -> None:
        super().__init__(sim, node)
        self.op, self.device, self.service = op, op.device, service
        self.scale = min(1.0, sim.pool_servers.get(op.planned.pool, service.servers) / service.servers)

    def start(self, tok: Token) -> None:
        hold, after = self.service()
        tok.pred_s += hold + after  # the planner's formula on this visit's work, without queueing
        on = hold * self.scale
        self.op.pool.submit(on, after + hold - on, self._done, tok)

    def _done(self, tok: Token, replica: int) -> None:
        self.finish(tok, self.op, replica)


class SplitStage(Stage):
    """A non-LLM op split over pools: each visit goes to one of them by share."""

    def __init__(self, sim: Simulation, node: CNode, stages: list[tuple[OpStage, float]]) -> None:
        super().__init__(sim, node)
        self.stages = stages
        self.op = stages[0][0].op
        self.device = stages[0][0].device
        self.router = Router([(st.op, w) for st, w in stages])
        self.by_op = {id(st.op): st for st, _ in stages}

    def start(self, tok: Token) -> None:
        self.by_op[id(self.router.pick())].start(tok)


class LlmStage(Stage):
    """An LLM call: aggregated, or prefill → KV transfer → decode; records TTFT and TBT per call."""

    def __init__(self, sim: Simulation, node: CNode, spec: LlmNode, ops: dict[str, Op], isl: Dist, osl: Dist,
                 ttft_limit_s: float | None, tbt_limit_s: float | None,
                 routes: dict[str, list[tuple[Op, float]]] | None = None) -> None:
        super().__init__(sim, node)
        self.agg, self.pre, self.dec = ops.get("aggregated"), ops.get("prefill"), ops.get("decode")
        routes = routes or {}
        self.routers = {role: Router(routes.get(op.name) or [(op, 1.0)]) for role, op in ops.items()}
        self._callbacks: dict[tuple[int, str], Any] = {}
        if self.agg is None and (self.pre is None or self.dec is None):
            raise SimError(f"the plan serves LLM node '{node.path}' with neither an aggregated op nor a "
                           f"prefill and a decode op; re-plan it")
        first = self.agg or self.pre
        assert first is not None  # checked just above
        self.device, self.op = first.device, first
        seed = sim.config.seed
        self.isl_draw, self.osl_draw = token_draws(isl, seed, f"{node.path}.isl"), token_draws(osl, seed,
                                                                                              f"{node.path}.osl")
        self.isl_mean, self.osl_mean = max(isl.expected, 1.0), max(osl.expected, 1.0)
        # The planned KV edge carries the mean full context; with a prefix, `isl` is only the new part of it,
        # so the per-token bytes come from the model instead of edge ÷ mean new input.
        kv_edge = sim.edge_bytes.get((self.pre.name, self.dec.name)) if self.pre and self.dec else None
        self.kv_bytes_per_token = (kv_edge / self.isl_mean if kv_edge and not spec.prefix
                                   else kv_bytes_per_token(sim.model.catalog.model(spec.model), spec.dtype))
        self.ttft_limit = ttft_limit_s if ttft_limit_s is not None else math.inf
        self.tbt_limit = tbt_limit_s if tbt_limit_s is not None else math.inf
        self.ttft_limit_s, self.tbt_limit_s = ttft_limit_s, tbt_limit_s
        self.calls = {k: array("d") for k in ("arrival_s", "request", "ttft_s", "tbt_s", "isl", "osl", "cached",
                                              "pinned", "prefix")}
        self.spec = spec
        self.shared = [Shared(p.name or "", max(0, round(p.tokens.expected if p.tokens else 0)))
                       for p in spec.prefix if p.source in SHARED_SOURCES]
        self.conversation = has_conversation(spec)
        self.kv_policy = sim.config.kv_policy or first.planned.kv.policy

    def start(self, tok: Token) -> None:
        req = tok.run.req  # type: ignore[union-attr]
        if req.tokens is not None:
            new_in, osl = req.tokens
        else:
            new_in, osl = int(self.isl_draw()), int(self.osl_draw())
        history = req.history
        isl = new_in + round(prefix_tokens(self.spec, history).total)  # the full input: prefix + what is new
        env = self.sim.env
        if self.agg is not None:
            op = self.routers["aggregated"].pick()
            tok.pred_s += op.planned.latency_s * osl / self.osl_mean
            seq = Seq(isl, osl, self._callback(op, self._decoded), tok, env.now)
        else:
            op = self.routers["prefill"].pick()
            tok.pred_s += op.planned.latency_s * new_in / self.isl_mean
            seq = Seq(isl, osl, self._callback(op, self._prefilled), tok, env.now)
        pkv = self.sim.pool_kv(op, self) if self.kv_policy != "recompute" else None
        seq.note = (pkv, -1, new_in, len(history), 0, False)
        if pkv is None:
            op.pool.submit(seq)
            return
        chain, _ = call_chain(self.shared, req.session, history if self.conversation else (), pkv.block_size)
        look = pkv.route(chain, isl - new_in, isl, env.now, True)
        held = [h for h in req.pins if h[0] is pkv]
        for h in held:  # the request's next call here has read its prefix: the pin's job is done
            req.pins.remove(h)
            pkv.release(h[1], h[2])
        pinned_here = any(h[1] == look.lane and h[3] for h in held)  # its whole prefix was pinned there
        seq.done = look.cached_tokens
        seq.note = (pkv, look.lane, new_in, len(history), look.cached_tokens, pinned_here)
        if look.transfer_s > 0:  # read back from host or disk before the prefill
            env.schedule(look.transfer_s, self._submit_at, (op, seq, look.lane))
        else:
            op.pool.submit(seq, look.lane)

    @staticmethod
    def _submit_at(item: tuple[Op, Seq, int]) -> None:
        op, seq, lane = item
        op.pool.submit(seq, lane)

    def _keep(self, seq: Seq, tok: Token, generated: int) -> None:
        """The call is done on its lane: keep its context there as the op's KV policy says."""
        pkv, lane, new_in, n_hist, _, _ = seq.note
        req = tok.run.req  # type: ignore[union-attr]
        if pkv is None or lane < 0:
            return
        history = req.history[:n_hist] if self.conversation else ()
        chain, _ = call_chain(self.shared, req.session, history, pkv.block_size,
                              (new_in, generated) if self.conversation else None)
        pinned = pkv.keep(lane, chain, self.sim.env.now, self.kv_policy, pin=self.kv_policy == "retain")
        if pinned:
            req.pins.append((pkv, lane, pinned, len(pinned) == len(chain)))

    def _callback(self, op: Op, fn: Any) -> Any:
        """`fn(seq, lane, op)` as the pool's `fn(seq, lane)`, made once per pool and step."""
        key = (id(op), fn.__name__)
        cb = self._callbacks.get(key)
        if cb is None:
            cb = self._callbacks[key] = lambda seq, lane: fn(seq, lane, op)
        return cb

    def _prefilled(self, seq: Seq, lane: int, pre: Op) -> None:
        tok: Token = seq.arg
        self._keep(seq, tok, 0)  # the prompt's KV stays on the prefill replica; the output's is decoded elsewhere
        if seq.osl <= 1:
            self._record(seq, tok)
            self.finish(tok, pre, lane // pre.planned.pp)
            return
        dec = self.routers["decode"].pick()
        link = pre.link(lane // pre.planned.pp, dec.device)
        n_bytes = seq.isl * self.kv_bytes_per_token
        tok.pred_s += link.latency_s + n_bytes / link.bw_bytes_s + dec.planned.latency_s * (seq.osl / self.osl_mean)
        link.send(n_bytes, self._kv_arrived, (seq, dec))

    def _kv_arrived(self, item: tuple[Seq, Op]) -> None:
        seq, dec = item
        seq.fn = self._callback(dec, self._decoded)
        dec.pool.submit(seq)

    def _decoded(self, seq: Seq, lane: int, op: Op) -> None:
        tok: Token = seq.arg
        if self.agg is not None:
            self._keep(seq, tok, seq.osl)
        self._record(seq, tok)
        self.finish(tok, op, lane // op.planned.pp)

    def _record(self, seq: Seq, tok: Token) -> None:
        req = tok.run.req  # type: ignore[union-attr]
        ttft = seq.t_first - seq.t_call
        tbt = (seq.t_done - seq.t_first) / (seq.osl - 1) if seq.osl > 1 else math.nan
        if ttft > self.ttft_limit or tbt > self.tbt_limit:
            req.llm_ok = False
        c = self.calls
        c["arrival_s"].append(req.t_arrival)
        c["request"].append(req.id)
        c["ttft_s"].append(ttft)
        c["tbt_s"].append(tbt)
        c["isl"].append(seq.isl)
        c["osl"].append(seq.osl)
        note = seq.note
        c["cached"].append(float(note[4]))
        c["pinned"].append(1.0 if note[5] else 0.0)
        c["prefix"].append(float(seq.isl - note[2]))
        req.history.append((note[2], seq.osl))  # the conversation grows by this call's new input and output


_CHAIN_ORDER = {"lookup": 0, "embed": 0, "compute": 1, "search": 1}


def _llm_role(p: PlannedOp) -> str:
    """prefill, decode or aggregated: from the kind, or for MoE expert ops (moe.expert) from the name."""
    if p.kind in ("llm.prefill", "llm.decode", "llm.aggregated"):
        return p.kind.removeprefix("llm.")
    return "prefill" if p.name.endswith(".prefill") else "decode" if p.name.endswith(".decode") else "aggregated"


def planned_edges(model: SimModel) -> dict[tuple[str, str], float]:
    """Bytes per visit between two ops, as the planner priced them (from the planning graph it solved)."""
    if model.edge_bytes is not None:
        return dict(model.edge_bytes)
    from terrazzo.plan.from_ir import build

    try:
        graph = build(model.agent, model.workload, model.sla, model.cluster, model.catalog)
    except TerrazzoError as exc:
        raise SimError(f"could not rebuild the plan's graph from its specs: {exc}") from None
    return {(e.src, e.dst): e.data_bytes for e in graph.edges}


class Simulation:
    def __init__(self, model: SimModel, config: SimConfig) -> None:
        if config.duration_s <= 0:
            raise SimError(f"duration must be positive, got {config.duration_s:g} s; pass --duration")
        self.model, self.config = model, config
        self.env = Environment()
        self.fabric = model.cluster.fabric
        self.fabric_latency_s = self.fabric.scale_out_latency_s
        self._nic: dict[str, float] = {}
        self.leaves = dict(model.agent.graph.leaves())
        self.edge_bytes = planned_edges(model)
        self.services: dict[tuple[str, str], OpService] = {}
        self.notes: list[str] = []
        self.pools: dict[str, Any] = {}
        self.deployments: dict[str, Deployment] = {}  # each LLM pool's, for its KV residency
        self.pool_servers: dict[str, int] = {}
        self._build_pools()
        self.routes: dict[str, list[tuple[Op, float]]] = {
            name: [(Op(self, p, self.pools[p.pool]), p.share) for p in places]
            for name, places in model.placements.items()}
        self.ops: dict[str, Op] = {name: r[0][0] for name, r in self.routes.items()}
        self.graph = compile_graph(model.agent.graph)
        self.flow = Flow(self.graph, self.goto, uniform_draws(config.seed, "branches"), self._done)
        self.llm_stages: list[LlmStage] = []
        for node in self.graph.work_nodes():
            node.station = self._stages(node, self.leaves[node.path])
        self.requests = {k: array("d") for k in ("id", "arrival_s", "e2e_s", "pred_s", "ok")}
        self.arrived = 0
        self.measured = 0  # arrivals in [warmup, duration)
        self.snapshots: dict[str, dict[str, tuple[float, float]]] = {}
        self.wall_s = 0.0
        self.kv_pools: dict[str, PoolKv] = {}
        self.sessions = model.workload.sessions if config.arrival != "trace" else None
        self._turns_left: dict[Any, int] = {}
        if self.sessions is not None:
            self._turn_rng = stream(config.seed, "session.turns")
            self._think = dist_draws(self.sessions.think_time_s, config.seed, "session.think_time_s")

    # building ---------------------------------------------------------------------------------

    def nic_bytes_s(self, device: str) -> float:
        if device not in self._nic:
            self._nic[device] = scale_out_link(self.model.catalog.device(device), self.fabric).bw_bytes_s
        return self._nic[device]

    def _build_pools(self) -> None:
        """One station per plan pool: an LLM pool per dedicated pool, a server pool shared by the non-LLM
        ops on it (servers per replica: the fewest of its ops')."""
        cat, env, leaves = self.model.catalog, self.env, self.leaves
        servers: dict[str, list[int]] = {}
        for places in self.model.placements.values():
            for p in places:
                node = leaves[p.node]
                if isinstance(node, LlmNode):
                    if p.pool not in self.pools:
                        dep = deployment(cat, node.model, p.device, node.dtype, p.tp, p.pp, self.fabric)
                        cost = LlmCost(dep, read=read_term(cat, dep))  # the planner's reuse read term
                        self.deployments[p.pool] = dep
                        mode = _llm_role(p)
                        isl = self._tokens(p.node, node)[0].expected
                        sched = p.scheduler
                        if sched.engine is None and sched.max_batched_tokens == PREVIOUS_TOKEN_BUDGET:
                            sched = replace(sched, max_batched_tokens=self.config.prefill_token_budget)
                        budget = p.batch * isl if mode == "prefill" else sched.max_batched_tokens
                        llm = self.pools[p.pool] = LlmPool(env, p.pool, mode, cost, p.replicas, p.pp, p.batch,
                                                           budget, cost.kv_capacity_tokens(p.batch), sched)
                        if self.config.record_arrivals:
                            llm.arrivals = Arrivals()
                    continue
                service = OpService(cat, node, p.kind, p.device, self.config.seed, p.name)
                self.services[p.name, p.pool] = service
                servers.setdefault(p.pool, []).append(service.servers)
                if p.batch > 1:
                    self.notes.append(f"{p.name}: the plan batches {p.batch} requests per replica, which the "
                                      f"planner's current cost model does not price for a {p.kind} op; simulated "
                                      f"one at a time per server (re-plan to refresh the plan)")
        for pool, counts in servers.items():
            self.pool_servers[pool] = min(counts)
            self.pools[pool] = ServerPool(env, pool, self.model.pools[pool].replicas, min(counts))

    def _tokens(self, path: str, node: LlmNode) -> tuple[Dist, Dist]:
        over = self.model.workload.tokens.get(path)
        return ((over.input_tokens if over and over.input_tokens else node.input_tokens),
                (over.output_tokens if over and over.output_tokens else node.output_tokens))

    def _stages(self, node: CNode, spec: Node) -> Stage:
        ops = [self.ops[o.name] for o in self.model.by_node.get(node.path, [])]
        if isinstance(spec, LlmNode):
            roles = {_llm_role(o.planned): o for o in ops}
            use = {"aggregated": roles["aggregated"]} if "aggregated" in roles else roles
            limits = self.model.sla.limits_for(node.path)
            isl, osl = self._tokens(node.path, spec)
            stage = LlmStage(self, node, spec, use, isl, osl, limits.ttft_s, limits.tbt_s, self.routes)
            self.llm_stages.append(stage)
            return stage
        ops.sort(key=lambda o: _CHAIN_ORDER.get(o.name.rsplit(".", 1)[-1], 0) if o.name != node.path else 0)
        stages: list[Stage] = []
        for o in ops:
            route = self.routes[o.name]
            parts = [(OpStage(self, node, op, self.services[op.name, op.planned.pool]), w) for op, w in route]
            stages.append(parts[0][0] if len(parts) == 1 else SplitStage(self, node, parts))
        for a, b in itertools.pairwise(stages):
            a.next = b
        return stages[0]

    def pool_kv(self, op: Op, stage: LlmStage) -> PoolKv:
        """The KV residency and router of `op`'s pool, made on its first call that reuses KV. The device tier
        is the lane's KV; host and disk tiers are enabled by the policy that needs them."""
        pkv = self.kv_pools.get(op.planned.pool)
        if pkv is None:
            pool: LlmPool = op.pool
            bs = pool.sched.block_size
            lane = pool.lanes[0]
            device = lane.blocks.capacity if hasattr(lane, "blocks") else int(min(pool.kv_tokens, 1 << 40) // bs)
            policy = stage.kv_policy
            dev = self.model.catalog.device(op.device)
            dep = self.deployments[op.planned.pool]
            pkv = self.kv_pools[op.planned.pool] = PoolKv(
                pool.lanes, bs, device, replica_kv_bytes(dep, 1.0),
                host_blocks=int(HOST_PER_DEVICE_KV * device) if policy == "host" else 0,
                disk_blocks=int(DISK_PER_DEVICE_KV * device) if policy == "disk" else 0,
                host=tier_link(dev, "host"), disk=tier_link(dev, "disk"), cache_aware=self.config.cache_aware,
                devices=dep.devices)
        return pkv

    # running ----------------------------------------------------------------------------------

    def goto(self, tok: Token, stage: Stage) -> None:
        """Move a token's data to `stage`'s device if it is elsewhere, then start the stage. The bytes are
        the planner's for that pair of ops, else the agent edge's."""
        src = tok.src
        if src is not None and src[0].device != stage.device:
            op = src[0]
            link = op.link(src[1], stage.device)
            n_bytes = self.edge_bytes.get((op.name, stage.op_name), tok.nbytes)
            tok.pred_s += link.latency_s + n_bytes / link.bw_bytes_s
            link.send(n_bytes, stage.start, tok)
        else:
            stage.start(tok)

    def _done(self, req: Request, pred_s: float) -> None:
        for pkv, lane, keys, _ in req.pins:  # the request's loop is over: its prefix is no longer pinned
            pkv.release(lane, keys)
        req.pins.clear()
        left = self._turns_left.pop(req.session, 0)
        if left > 0:  # the session's next turn, after the user's think time
            think = self._think()
            if self.env.now + think < self.config.duration_s:
                self._turns_left[req.session] = left - 1
                self.env.schedule(think, self._turn, (req.session, req.history))
        r = self.requests
        r["id"].append(req.id)
        r["arrival_s"].append(req.t_arrival)
        r["e2e_s"].append(self.env.now - req.t_arrival)
        r["pred_s"].append(pred_s)
        r["ok"].append(1.0 if req.llm_ok else 0.0)

    def _arrivals(self) -> Iterator[tuple[float, tuple[int, int] | None]]:
        c = self.config
        if c.arrival == "trace":
            if c.trace is None:
                raise SimError("a trace arrival needs a trace file; pass --trace FILE")
            trace = c.trace.scaled_to(c.rate_per_s) if c.rate_per_s else c.trace
            return trace_times(trace, c.duration_s)
        if c.arrival not in ("poisson", "gamma"):
            raise SimError(f"unknown arrival process {c.arrival!r}; use poisson, gamma or trace")
        rate = c.rate_per_s if c.rate_per_s is not None else self.model.rate_per_s
        if self.sessions is not None:  # the rate counts turns; sessions open at rate / E[turns]
            rate = self.sessions.session_rate_per_s(rate)
        return renewal_times(rate, c.cv if c.arrival == "gamma" else 1.0, c.duration_s, c.seed)

    def _arrive(self, item: tuple[Iterator, tuple[int, int] | None]) -> None:
        it, tokens = item
        session = None
        if self.sessions is not None:
            session = ("session", self.arrived)
            self._turns_left[session] = self.sessions.draw_turns(self._turn_rng) - 1
        self._start(tokens, session, None)
        nxt = next(it, None)
        if nxt is not None:
            self.env.at(nxt[0], self._arrive, (it, nxt[1]))

    def _turn(self, item: tuple[Any, list[tuple[int, int]]]) -> None:
        self._start(None, item[0], item[1])

    def _start(self, tokens: tuple[int, int] | None, session: Any, history: list[tuple[int, int]] | None) -> None:
        req = Request(self.arrived, self.env.now, tokens, session, history)
        self.arrived += 1
        if self.config.warmup <= req.t_arrival < self.config.duration_s:
            self.measured += 1
        self.flow.start(req)

    def _snapshot(self, label: str) -> None:
        snap = {name: (pool.busy_s(), pool.occupancy_s()) for name, pool in self.pools.items()}
        for route in self.routes.values():
            for op, _ in route:
                for link in op.links.values():
                    snap[f"link:{link.name}"] = (link.busy_s(), link.bytes_total)
        self.snapshots[label] = snap

    def run(self) -> Simulation:
        c = self.config
        it = self._arrivals()
        first = next(it, None)
        if first is None:
            raise SimError("no request arrives within the duration; lengthen --duration or check the trace")
        self.env.at(first[0], self._arrive, (it, first[1]))
        self.env.at(c.warmup, self._snapshot, "warmup")
        self.env.at(c.duration_s, self._snapshot, "end")
        horizon = c.duration_s + c.drain
        t0 = time.perf_counter()
        with _rare_gc():
            self._loop(horizon)
        self.wall_s = time.perf_counter() - t0
        if "end" not in self.snapshots:
            self._snapshot("end")
        return self

    def _loop(self, horizon: float) -> None:
        c = self.config
        if c.progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("simulating {task.description}"), BarColumn(),
                          TextColumn("{task.completed:.0f}/{task.total:.0f} s simulated"), TimeElapsedColumn(),
                          transient=True) as bar:
                task = bar.add_task(self.model.name, total=c.duration_s)
                self.env.run(horizon, lambda: bar.update(task, completed=min(self.env.now, c.duration_s)))
        else:
            self.env.run(horizon)


@contextmanager
def _rare_gc() -> Iterator[None]:
    """Per event the simulator allocates a few small objects that reference counting frees (none form
    cycles); the cyclic collector's passes over the large live heap would cost about a third of the run
    time, so during a run the objects made before it are frozen and collections are rarer."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
