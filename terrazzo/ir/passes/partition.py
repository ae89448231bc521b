"""partition: one `tz.pool` per device pool, with a transfer on every edge between pools and on no other.

Sub-agents are inlined first (their ops may sit in different pools). Each op goes to its placement's pool;
MoE riders go with their phase; a router (branch, loop) goes with the op that feeds it, else with the op it
feeds. A `tz.kv.transfer` whose prefill and decode share a pool disappears (the cache stays in place);
otherwise it is the transfer of that edge. Every other edge between pools gets a `tz.transfer` carrying the
edge's bytes, its link kind (`scale-out` between accelerators, `host` when a CPU pool is involved) and the
time the bytes take on the slower side's network link. The graph's body then holds only the request, the
pools, the transfers and the output: a dataflow network of pools, cycles included. Prefix KV ops
(decompose-kv) go with the prefill that reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Block, Operation, OpResult, Region, SSAValue, Use
from xdsl.passes import ModulePass

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.cost.network import scale_out_link
from terrazzo.errors import IRError, TerrazzoError
from terrazzo.ir.candidate_pricing import PLACEABLE
from terrazzo.ir.context import inputs_of
from terrazzo.ir.dialects.agent_dialect import BranchOp, GraphOp, LoopOp, OutputOp, SubagentOp
from terrazzo.ir.dialects.granular_dialect import (
    AllReduceOp,
    KvOp,
    KvTransferOp,
    MoeRider,
    PoolOp,
    TransferOp,
    YieldOp,
)
from terrazzo.ir.dialects.node_op import NodeOp, count_attr, f64_attr, float_prop, name_hint, str_prop
from terrazzo.spec.cluster import Fabric

TOP = ""  # home of values that live in the graph's body: the request and the transfers


def inline_subagents(graph: GraphOp) -> None:
    """Replace every sub-agent by its body: arguments become its operands, its result its sinks' values."""
    block = graph.body.block
    while subs := [op for op in block.ops if isinstance(op, SubagentOp)]:
        for sub in subs:
            inner = sub.body.block
            out = inner.last_op
            assert isinstance(out, OutputOp)
            for arg, value in zip(inner.args, sub.inputs, strict=True):
                arg.replace_all_uses_with(value)
            sinks = list(out.operands)
            users = dict.fromkeys(use.operation for use in sub.out.uses)
            for user in users:
                _expand_operand(user, sub.out, sinks)
            out.detach()
            out.erase()
            for op in list(inner.ops):
                op.detach()
                block.insert_op_before(op, sub)
            sub.detach()
            sub.erase()


def _expand_operand(user: Operation, old: SSAValue, new: list[SSAValue]) -> None:
    """Each use of `old` becomes uses of all of `new`, each edge keeping the old edge's size."""
    operands: list[SSAValue] = []
    sizes: list[float] = []
    old_sizes = user.bytes_in if isinstance(user, NodeOp) else [0.0] * len(user.operands)
    for value, size in zip(user.operands, old_sizes, strict=True):
        group = new if value is old else [value]
        operands += group
        sizes += [size] * len(group)
    user.operands = operands
    if isinstance(user, NodeOp):
        user.set_bytes_in(sizes)


def assign_pools(block: Block) -> dict[Operation, str]:
    """Pool of every op in the graph's body; transfers, the request and the output stay at TOP."""
    home: dict[Operation, str] = {}
    by_id = {op.node_id: op for op in block.ops if isinstance(op, NodeOp)}
    unplaced = []
    for op in block.ops:
        if isinstance(op, PLACEABLE):
            place = op.placement
            if place is None:
                unplaced.append(op.node_id)
            else:
                home[op] = place.pool.data
    if unplaced:
        raise IRError(f"partition needs every op placed; unplaced: {', '.join(unplaced[:8])}"
                      + (" …" if len(unplaced) > 8 else "") + " (run apply-plan with a plan that places them)")
    for op in block.ops:
        if isinstance(op, MoeRider | AllReduceOp | KvOp):
            anchor = by_id.get(op.anchor.data)
            if anchor not in home:
                raise IRError(f"{op.name} '{op.node_id}' rides with '{op.anchor.data}', which is not placed")
            home[op] = home[anchor]
    routers = [op for op in block.ops if isinstance(op, BranchOp | LoopOp)]
    while pending := [r for r in routers if r not in home]:
        progress = False
        for r in pending:
            near = [v.owner for v in r.operands] + [u.operation for res in r.results for u in res.uses]
            pool = next((home[o] for o in near if o in home), None)
            if pool is not None:
                home[r] = pool
                progress = True
        if not progress:
            raise IRError(f"cannot tell which pool runs router '{pending[0].node_id}': nothing it touches is placed")
    for op in block.ops:
        if isinstance(op, NodeOp) and op not in home and not isinstance(op, KvTransferOp | TransferOp):
            raise IRError(f"partition does not know where {op.name} '{op.node_id}' runs")
    return home


@dataclass
class Partitioner:
    graph: GraphOp
    catalog: Catalog
    fabric: Fabric
    device: dict[str, str] = field(default_factory=dict)  # pool → device type

    def run(self) -> None:
        block = self.graph.body.block
        inline_subagents(self.graph)
        home = assign_pools(block)
        for op in home:
            if isinstance(op, PLACEABLE):
                place = op.placement
                assert place is not None  # assign_pools checked every placeable op
                device = place.device.data
                if self.device.setdefault(home[op], device) != device:
                    raise IRError(f"pool '{home[op]}' mixes devices {self.device[home[op]]} and {device} "
                                  f"('{op.node_id}'); one pool is one device type")
        self._drop_local_kv(block, home)
        pools = list(dict.fromkeys(home[op] for op in block.ops if op in home))
        members = {p: [op for op in block.ops if home.get(op) == p] for p in pools}
        where = {res: home.get(op, TOP) for op in block.ops for res in op.results}

        exports: dict[str, list[SSAValue]] = {p: [] for p in pools}
        crossings: list[tuple[NodeOp, int, str, str]] = []  # (consumer, operand, from pool, to pool)
        for op in block.ops:
            dst = home.get(op, TOP)
            for i, v in enumerate(op.operands):
                src = where[v]
                if src in (dst, TOP):
                    continue
                exports[src] += [v] if v not in exports[src] else []
                if dst != TOP and isinstance(op, NodeOp) and not isinstance(op, KvTransferOp):
                    crossings.append((op, i, src, dst))
        pool_ops = {p: self._pool(p, members[p], exports[p]) for p in pools}
        result_of = {(p, v): pool_ops[p].outs[k] for p in pools for k, v in enumerate(exports[p])}

        transfers: dict[str, list[Operation]] = {p: [] for p in pools}
        for op, i, src, dst in crossings:
            move = self._transfer(result_of[(src, op.operands[i])], op, i, src, dst)
            transfers[src].append(move)
            op.operands[i] = move.out
        for op in list(block.ops):
            if home.get(op, TOP) != TOP:
                continue
            for i, v in enumerate(op.operands):
                if where[v] != TOP:
                    op.operands[i] = result_of[(where[v], v)]
            if isinstance(op, KvTransferOp):
                kv_src, kv_dst = str_prop(op, "src"), str_prop(op, "dst")
                assert kv_src is not None and kv_dst is not None  # _drop_local_kv set both
                self._set_link(op, kv_src, kv_dst)
        self._wire_imports(pool_ops, members)
        self._layout(block, pool_ops, transfers)

    def _drop_local_kv(self, block: Block, home: dict[Operation, str]) -> None:
        for op in list(block.ops):
            if not isinstance(op, KvTransferOp):
                continue
            producer = op.operands[0].owner
            src = home.get(producer) if isinstance(producer, Operation) else None
            dsts = {home.get(u.operation) for u in op.out.uses}
            if dsts == {src}:
                op.out.replace_all_uses_with(op.operands[0])
                op.detach()
                op.erase()
                continue
            dst = dsts.pop() if len(dsts) == 1 else None
            if src is None or dst is None:
                raise IRError(f"tz.kv.transfer '{op.node_id}' must feed one decode in one pool")
            op.properties["src"], op.properties["dst"] = StringAttr(src), StringAttr(dst)

    def _pool(self, pool: str, ops: list[Operation], exports: list[SSAValue]) -> PoolOp:
        body = Block()
        for op in ops:
            op.detach()
            body.add_op(op)
        body.add_op(YieldOp(operands=[exports]))
        props = {"pool": StringAttr(pool), "device": StringAttr(self.device.get(pool, ""))}
        op = PoolOp(operands=[[]], result_types=[[v.type for v in exports]], properties=props, regions=[Region(body)])
        for res, v in zip(op.outs, exports, strict=True):
            res.name_hint = v.name_hint
        return op

    def _transfer(self, value: SSAValue, consumer: NodeOp, index: int, src: str, dst: str) -> TransferOp:
        producer = _producer(value)
        edge_id = f"{producer}->{consumer.node_id}#{index}"
        size = consumer.bytes_in[index]
        move = TransferOp.make(edge_id, [value], value_visits(consumer.operands[index]), [size],
                               props={"bytes": count_attr(size), "src": StringAttr(src), "dst": StringAttr(dst)},
                               result_types=[value.type])
        move.out.name_hint = name_hint(f"{producer}.to.{consumer.node_id}")
        self._set_link(move, src, dst)
        return move

    def _set_link(self, op: NodeOp, src: str, dst: str) -> None:
        a, b = self.catalog.device(self.device[src]), self.catalog.device(self.device[dst])
        kind = "host" if "cpu" in (a.kind, b.kind) else "scale-out"
        la, lb = scale_out_link(a, self.fabric), scale_out_link(b, self.fabric)
        link = la if la.bw_bytes_s <= lb.bw_bytes_s else lb
        eff = self.catalog.efficiency_for(a.name, "network").network
        op.properties["link"] = StringAttr(kind)
        op.properties["latency_s"] = f64_attr(link.transfer_s(float_prop(op, "bytes"), eff))

    def _wire_imports(self, pool_ops: dict[str, PoolOp], members: dict[str, list[Operation]]) -> None:
        """Values a pool uses from outside become its operands and its block's arguments."""
        for pool, pool_op in pool_ops.items():
            inside = set(members[pool])
            imports: list[SSAValue] = []
            for op in members[pool]:
                for v in op.operands:
                    if v.owner not in inside and isinstance(v, OpResult) and v not in imports:
                        imports.append(v)
            body = pool_op.body.block
            for v in imports:
                arg = body.insert_arg(v.type, len(body.args))
                arg.name_hint = v.name_hint
                v.replace_uses_with_if(arg, _used_in(inside))
            pool_op.operands = imports

    def _layout(self, block: Block, pool_ops: dict[str, PoolOp], transfers: dict[str, list[Operation]]) -> None:
        out = block.last_op
        assert out is not None
        for pool, pool_op in pool_ops.items():
            block.insert_op_before(pool_op, out)
            kv = [op for op in block.ops if isinstance(op, KvTransferOp) and str_prop(op, "src") == pool]
            for op in kv:
                op.detach()
            for moved in [*transfers[pool], *kv]:
                block.insert_op_before(moved, out)


def _used_in(ops: set[Operation]) -> Callable[[Use], bool]:
    return lambda use: use.operation in ops


def _result_index(value: SSAValue) -> int:
    return value.index if isinstance(value, OpResult) else 0


def _producer(value: SSAValue) -> str:
    owner = value.owner
    if isinstance(owner, PoolOp):
        term = owner.body.block.last_op
        assert term is not None
        return _producer(term.operands[_result_index(value)])
    return owner.node_id if isinstance(owner, NodeOp) else "input"


def value_visits(value: SSAValue) -> float:
    """Expected messages per request along a value's edges: the producer's visits, split at routers."""
    owner = value.owner
    if isinstance(owner, PoolOp):
        term = owner.body.block.last_op
        assert term is not None
        return value_visits(term.operands[_result_index(value)])
    if isinstance(owner, BranchOp):
        return owner.visit_count * owner.probabilities[_result_index(value)]
    if isinstance(owner, LoopOp):
        share = float_prop(owner, "repeat_share")
        return owner.visit_count * (share if _result_index(value) == 0 else 1 - share)
    return owner.visit_count if isinstance(owner, NodeOp) else 1.0


def _graphs(module: ModuleOp) -> Iterable[GraphOp]:
    return [op for op in module.ops if isinstance(op, GraphOp)]


@dataclass(frozen=True)
class Partition(ModulePass):
    name = "partition"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        inputs = inputs_of(ctx)
        catalog, fabric = inputs.catalog, inputs.cluster.fabric if inputs.cluster else Fabric()
        for graph in _graphs(op):
            if any(isinstance(o, PoolOp) for o in graph.body.block.ops):
                continue  # already partitioned
            try:
                Partitioner(graph, catalog, fabric).run()
            except TerrazzoError as exc:
                raise IRError(str(exc)) from None

