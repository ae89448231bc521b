"""A request's walk through the agent graph, with the semantics of `AgentGraph.visits()`:

- entry nodes (no inputs) start once per request; a work node passes its output to every out-edge;
- a branch sends each visit down one out-edge, drawn with the edges' probabilities;
- a loop node sends an arrival back along its edge to `body` while the arrival's count for that loop
  is under `bound`, and otherwise along its other out-edges (ending there when it has none); the count
  travels with the token, restarts on leaving the loop, and restarts for the loops nested inside a
  loop each time that loop repeats;
- `join: all` runs a node once per full set of inputs (every `fan_in` arrivals by its ordinary edges;
  a loop's repeat runs it at once), `join: any` once per arrival;
- a sub-agent runs its graph once per visit and continues when the last of its tokens ends.

A request ends when it has no token left. A work node's token goes to `dispatch(token, node.station)`,
and the station calls `Flow.leave(token, node)` when the node's ops are done; control nodes take no time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from terrazzo.spec.agent import AgentGraph, BranchNode, LoopNode, SubagentNode

WORK, BRANCH, LOOP, SUBAGENT = 0, 1, 2, 3
EDGE_DEFAULT_BYTES = 4096.0  # an edge without data_bytes, when the planner priced no edge between the ops


class CNode:
    """A node compiled for fast walking: successors are (node, edge bytes) pairs."""

    __slots__ = ("body", "bound", "cum", "exits", "fan_in", "id", "kind", "path", "resets", "slot", "station", "sub",
                 "succ", "visits")

    def __init__(self, node_id: str, path: str, kind: int) -> None:
        self.id, self.path, self.kind = node_id, path, kind
        self.succ: tuple[tuple[CNode, float], ...] = ()
        self.cum: tuple[float, ...] = ()
        self.slot, self.bound = -1, 0
        self.body: tuple[CNode, float] | None = None
        self.exits: tuple[tuple[CNode, float], ...] = ()
        self.resets: tuple[int, ...] = ()
        self.fan_in = 1
        self.sub: CGraph | None = None
        self.station: Any = None  # what runs a work node; set by the simulator
        self.visits = 0  # runs of this node so far (all requests)


class CGraph:
    __slots__ = ("entries", "nodes", "zero")

    def __init__(self, nodes: list[CNode], entries: tuple[CNode, ...], n_loops: int) -> None:
        self.nodes, self.entries, self.zero = nodes, entries, (0,) * n_loops

    def visits(self) -> dict[str, int]:
        """Runs per node path so far, sub-agents' nodes included."""
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.path] = n.visits
            if n.sub is not None:
                out.update(n.sub.visits())
        return out

    def work_nodes(self) -> list[CNode]:
        """Every work node, sub-agents' included."""
        out = []
        for n in self.nodes:
            if n.kind == WORK:
                out.append(n)
            elif n.sub is not None:
                out.extend(n.sub.work_nodes())
        return out


def compile_graph(graph: AgentGraph, prefix: str = "") -> CGraph:
    repeat = graph.repeat_edges()
    loops = [n.id for n in graph.nodes if isinstance(n, LoopNode)]
    slot = {nid: i for i, nid in enumerate(loops)}
    nodes: dict[str, CNode] = {}
    for n in graph.nodes:
        kind = (BRANCH if isinstance(n, BranchNode) else LOOP if isinstance(n, LoopNode)
                else SUBAGENT if isinstance(n, SubagentNode) else WORK)
        c = nodes[n.id] = CNode(n.id, f"{prefix}{n.id}", kind)
        if isinstance(n, SubagentNode) and n.graph is not None:
            c.sub = compile_graph(n.graph, f"{prefix}{n.id}/")
    fan_in = dict.fromkeys(nodes, 0)
    for j, e in enumerate(graph.edges):
        if j not in repeat:
            fan_in[e.dst] += 1
    dag = {nid: [e.dst for j, e in enumerate(graph.edges) if e.src == nid and j not in repeat] for nid in nodes}
    for n in graph.nodes:
        c = nodes[n.id]
        out = [e for e in graph.edges if e.src == n.id]
        c.succ = tuple((nodes[e.dst], e.data_bytes or EDGE_DEFAULT_BYTES) for e in out)
        if n.join == "all" and fan_in[n.id] > 1:
            c.fan_in = fan_in[n.id]
        if isinstance(n, BranchNode):
            acc, cum = 0.0, []
            for e in out:
                acc += e.probability or 0.0
                cum.append(acc)
            c.cum = tuple(cum)
        elif isinstance(n, LoopNode):
            c.slot, c.bound = slot[n.id], n.bound
            body = next(e for e in out if e.dst == n.body)
            c.body = (nodes[body.dst], body.data_bytes or EDGE_DEFAULT_BYTES)
            c.exits = tuple((nodes[e.dst], e.data_bytes or EDGE_DEFAULT_BYTES) for e in out if e is not body)
            inside = _reach(dag, n.body) & _reach_back(dag, n.id)
            c.resets = tuple(slot[x] for x in loops if x in inside and x != n.id)
    entries = tuple(nodes[n.id] for n in graph.nodes if fan_in[n.id] == 0)
    return CGraph(list(nodes.values()), entries, len(loops))


def _reach(dag: dict[str, list[str]], start: str) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for d in dag[stack.pop()]:
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen


def _reach_back(dag: dict[str, list[str]], end: str) -> set[str]:
    back: dict[str, list[str]] = {k: [] for k in dag}
    for s, ds in dag.items():
        for d in ds:
            back[d].append(s)
    return _reach(back, end)


class Request:
    """One request; `session` (its id) and `history` (new input, output of its earlier LLM calls and its
    session's, oldest first) size its conversation prefix; `pins`: KV it holds pinned between calls."""

    __slots__ = ("done_s", "history", "id", "llm_ok", "pins", "session", "t_arrival", "tokens")

    def __init__(self, rid: int, t_arrival: float, tokens: tuple[int, int] | None, session: Any = None,
                 history: list[tuple[int, int]] | None = None) -> None:
        self.id, self.t_arrival, self.tokens = rid, t_arrival, tokens
        self.llm_ok = True  # every LLM call met its TTFT and TBT limits
        self.done_s = -1.0
        self.session = session if session is not None else ("request", rid)
        self.history: list[tuple[int, int]] = history if history is not None else []
        self.pins: list[tuple[Any, int, list[Any], bool]] = []  # (pool KV, lane, keys, whole prefix)


class Run:
    """One execution of a graph (the request's top level, or one visit of a sub-agent)."""

    __slots__ = ("active", "graph", "joins", "node", "parent", "pred_s", "req", "src", "token")

    def __init__(self, req: Request, graph: CGraph, parent: Run | None, node: CNode | None, token: Token) -> None:
        self.req, self.graph, self.parent, self.node, self.token = req, graph, parent, node, token
        self.active = 0
        self.joins: dict[int, tuple[int, float]] | None = None
        self.pred_s = token.pred_s
        self.src = token.src


class Token:
    """A unit of control flow: its run, its loop counts, the latency the plan predicts for the path it
    took (`pred_s`), where its data sits (`src`: op and replica) and how many bytes the last edge carries."""

    __slots__ = ("loops", "nbytes", "pred_s", "run", "src")

    def __init__(self, run: Run | None, loops: tuple[int, ...], pred_s: float, src: Any, nbytes: float) -> None:
        self.run, self.loops, self.pred_s, self.src, self.nbytes = run, loops, pred_s, src, nbytes


class Flow:
    def __init__(self, graph: CGraph, dispatch: Callable[[Token, Any], None], uniform: Callable[[], float],
                 on_done: Callable[[Request, float], None]) -> None:
        self.graph, self.dispatch, self.uniform, self.on_done = graph, dispatch, uniform, on_done

    @property
    def visits(self) -> dict[str, int]:
        return self.graph.visits()

    def start(self, req: Request) -> None:
        self._start_run(req, self.graph, None, None, Token(None, (), 0.0, None, 0.0))

    def _start_run(self, req: Request, graph: CGraph, parent: Run | None, node: CNode | None, tok: Token) -> None:
        run = Run(req, graph, parent, node, tok)
        run.active = len(graph.entries)
        for entry in graph.entries:
            self.arrive(Token(run, graph.zero, tok.pred_s, tok.src, tok.nbytes), entry)

    def arrive(self, tok: Token, node: CNode, repeat: bool = False) -> None:
        """`tok` reaches `node`; `repeat`: by a loop's edge to its body, which no join waits for."""
        if node.fan_in > 1 and not repeat and not self._joined(tok, node):
            return
        node.visits += 1
        kind = node.kind
        if kind == WORK:
            self.dispatch(tok, node.station)
        elif kind == BRANCH:
            cum = node.cum
            i = min(bisect_right(cum, self.uniform() * cum[-1]), len(cum) - 1)
            dst, tok.nbytes = node.succ[i]
            self.arrive(tok, dst)
        elif kind == LOOP:
            loops = list(tok.loops)
            if loops[node.slot] < node.bound:
                loops[node.slot] += 1
                for r in node.resets:
                    loops[r] = 0
                tok.loops = tuple(loops)
                dst, tok.nbytes = node.body  # type: ignore[misc]
                self.arrive(tok, dst, True)
            else:
                loops[node.slot] = 0
                tok.loops = tuple(loops)
                self._fan(tok, node.exits)
        else:
            self._start_run(tok.run.req, node.sub, tok.run, node, tok)  # type: ignore[arg-type, union-attr]

    def _joined(self, tok: Token, node: CNode) -> bool:
        """`join: all`: absorb arrivals until `fan_in` have come; the last continues, with the latest
        predicted time of the set."""
        run = tok.run
        if run.joins is None:  # type: ignore[union-attr]
            run.joins = {}  # type: ignore[union-attr]
        count, pred = run.joins.get(id(node), (0, 0.0))  # type: ignore[union-attr]
        count, pred = count + 1, max(pred, tok.pred_s)
        if count < node.fan_in:
            run.joins[id(node)] = (count, pred)  # type: ignore[union-attr]
            self._end(tok)
            return False
        del run.joins[id(node)]  # type: ignore[union-attr]
        tok.pred_s = pred
        return True

    def leave(self, tok: Token, node: CNode) -> None:
        """A work node's ops are done (or a sub-agent's run ended): pass the token on."""
        self._fan(tok, node.succ)

    def _fan(self, tok: Token, succ: tuple[tuple[CNode, float], ...]) -> None:
        n = len(succ)
        if n == 1:
            dst, tok.nbytes = succ[0]
            self.arrive(tok, dst)
        elif n == 0:
            self._end(tok)
        else:
            run = tok.run
            run.active += n - 1  # type: ignore[union-attr]
            for dst, nbytes in succ:
                self.arrive(Token(run, tok.loops, tok.pred_s, tok.src, nbytes), dst)

    def _end(self, tok: Token) -> None:
        run = tok.run
        assert run is not None
        run.active -= 1
        if tok.pred_s > run.pred_s:
            run.pred_s = tok.pred_s
        if tok.src is not None:
            run.src = tok.src
        if run.active == 0:
            if run.parent is None:
                self.on_done(run.req, run.pred_s)
            else:
                ptok = run.token
                ptok.pred_s, ptok.src = run.pred_s, run.src
                self.leave(ptok, run.node)  # type: ignore[arg-type]
