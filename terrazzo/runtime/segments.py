"""Fused segments: the longest chain of nodes whose ops all sit on one pool and whose edges need no
decision, run as one worker round trip so their messages never cross a pipe between ops."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass

from terrazzo.runtime.backends.pool_backend import Steps
from terrazzo.runtime.program import NodeProgram
from terrazzo.runtime.program_setup import ProgramSetup
from terrazzo.spec.agent import AgentGraph

MAX_SEGMENT_NODES = 64


@dataclass(frozen=True)
class Segment:
    paths: tuple[str, ...]           # node paths, in order
    last: str                        # id of the last node, where routing continues
    pool: str
    device: str
    steps: Steps                     # its ops with their timeouts and retry policy
    blob: bytes                      # the pickled programs, cached by key in the worker
    key: str


class Segments:
    """Finds (once per start node) and caches the segment that starts there. `fusable(pool)` says whether
    a pool's ops may run in a worker round trip at all (a pool served by an engine process may not)."""

    def __init__(self, setup: ProgramSetup, fusable: Callable[[str], bool] = lambda pool: True) -> None:
        self.setup, self.fusable = setup, fusable
        self._cache: dict[tuple[int, str, str], Segment | None] = {}

    def at(self, graph: AgentGraph, prefix: str, nid: str) -> Segment | None:
        """The segment starting at `nid` when it has ≥ 2 ops (one unconditional out-edge into a node that
        runs per arriving input, all ops on one pool). None: run the node op by op."""
        key = (id(graph), prefix, nid)
        if key in self._cache:
            return self._cache[key]
        setup, config = self.setup, self.setup.config
        g = setup.graphs[id(graph)]
        chain: list[NodeProgram] = []
        pool: str | None = None
        cur: str | None = nid
        while cur is not None and config.fuse_ops and len(chain) < MAX_SEGMENT_NODES:
            node = g.nodes[cur]
            prog = setup.programs.get(prefix + cur)
            pools = {setup.plan.placement(op).pool for op in prog.ops} if prog else set()
            if prog is None or node.kind in ("branch", "loop") or len(pools) != 1 or (pool and pools != {pool}):
                break
            if not self.fusable(next(iter(pools))):
                break
            if chain and node.join == "all" and len(g.fan_in[cur]) > 1:
                break
            chain.append(prog)
            pool = pools.pop()
            nxt = g.out[cur]
            cur = graph.edges[nxt[0]].dst if len(nxt) == 1 and nxt[0] not in g.repeat else None
        ops = [op for prog in chain for op in prog.ops]
        seg = None
        if len(ops) >= 2:
            assert pool is not None
            place = setup.plan.placement(ops[0])
            blob = pickle.dumps(tuple(chain), protocol=pickle.HIGHEST_PROTOCOL)
            seg = Segment(tuple(p.path for p in chain), chain[-1].node.id, pool, place.device,
                          Steps(tuple(ops), tuple(config.timeout_for(op) for op in ops),
                                tuple(p.retryable(op) for p in chain for op in p.ops)),
                          blob, hashlib.sha1(blob).hexdigest())
        self._cache[key] = seg
        return seg
