"""Choose one option per stage of a DAG to minimise cost under an end-to-end deadline: a MILP on HiGHS.

This is paper §3.1's placement program in its exact (integer) form: x[s,o] ∈ {0,1} picks option o
for stage s; y[e,a,b] ≥ x[u,a] + x[v,b] − 1 linearises the transfer an edge u→v pays when its ends
sit on pools a ≠ b; finish times f[v] ≥ f[u] + t(v) + transfer(u→v) carry latency along every path;
every sink finishes by the deadline. A missing pool pair on an edge means that route does not exist.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product

from terrazzo.errors import PlanInfeasible
from terrazzo.plan.lp import Model


@dataclass(frozen=True)
class Option:
    pool: str
    latency_s: float
    cost_usd: float


@dataclass(frozen=True)
class Transfer:
    latency_s: float
    cost_usd: float


@dataclass(frozen=True)
class Stage:
    name: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Edge:
    """Dependency src → dst; `transfers[(a, b)]` is the price of moving from pool a to pool b (a ≠ b)."""

    src: str
    dst: str
    transfers: dict[tuple[str, str], Transfer] = field(default_factory=dict)

    def transfer(self, a: str, b: str) -> Transfer | None:
        return Transfer(0.0, 0.0) if a == b else self.transfers.get((a, b))


@dataclass(frozen=True)
class Problem:
    stages: tuple[Stage, ...]
    edges: tuple[Edge, ...]
    deadline_s: float

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


@dataclass(frozen=True)
class Evaluation:
    """A complete assignment judged independently of the solver: its latency, cost and feasibility."""

    choice: dict[str, str]
    latency_s: float
    cost_usd: float
    feasible: bool
    reason: str = ""


def evaluate(problem: Problem, choice: dict[str, str]) -> Evaluation:
    """Critical-path latency and total cost of `choice` (stage → pool), straight from the definitions."""
    opts = {s.name: next(o for o in s.options if o.pool == choice[s.name]) for s in problem.stages}
    finish: dict[str, float] = {}
    cost = sum(o.cost_usd for o in opts.values())
    preds = {s.name: [e for e in problem.edges if e.dst == s.name] for s in problem.stages}
    for name in _topo(problem):
        start = 0.0
        for e in preds[name]:
            t = e.transfer(choice[e.src], choice[e.dst])
            if t is None:
                return Evaluation(choice, math.inf, math.inf, False,
                                  f"no transfer route {choice[e.src]}→{choice[e.dst]} on {e.src}→{e.dst}")
            start = max(start, finish[e.src] + t.latency_s)
            cost += t.cost_usd
        finish[name] = start + opts[name].latency_s
    latency = max(finish.values())
    ok = latency <= problem.deadline_s * (1 + 1e-9)
    reason = "" if ok else f"latency {latency * 1e3:.4g} ms exceeds the {problem.deadline_s * 1e3:.4g} ms deadline"
    return Evaluation(choice, latency, cost, ok, reason)


def enumerate_all(problem: Problem) -> Iterator[Evaluation]:
    """Every assignment, for small problems: the brute force the MILP must agree with."""
    names = [s.name for s in problem.stages]
    for pools in product(*([o.pool for o in s.options] for s in problem.stages)):
        yield evaluate(problem, dict(zip(names, pools, strict=True)))


def _topo(problem: Problem) -> list[str]:
    indeg = {s.name: 0 for s in problem.stages}
    for e in problem.edges:
        indeg[e.dst] += 1
    ready = [n for n, d in indeg.items() if d == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for e in problem.edges:
            if e.src == n:
                indeg[e.dst] -= 1
                if indeg[e.dst] == 0:
                    ready.append(e.dst)
    if len(order) != len(problem.stages):
        raise PlanInfeasible("the stage graph has a cycle; unroll loops into expected visits first")
    return order


def solve(problem: Problem, time_limit_s: float = 60.0) -> Evaluation:
    """Optimal assignment by MILP; raises PlanInfeasible naming the closest miss when there is none."""
    m = Model()
    x = {(s.name, k): m.var(o.cost_usd, 0, 1, integer=True) for s in problem.stages for k, o in enumerate(s.options)}
    finish = {s.name: m.var() for s in problem.stages}
    for s in problem.stages:
        m.row({x[s.name, k]: 1.0 for k in range(len(s.options))}, 1.0, 1.0)  # exactly one option
        # a stage finishes no earlier than its own latency, and by the deadline
        m.row({finish[s.name]: 1.0, **{x[s.name, k]: -o.latency_s for k, o in enumerate(s.options)}}, 0.0)
        m.row({finish[s.name]: 1.0}, hi=problem.deadline_s)
    for e in problem.edges:
        src, dst = problem.stage(e.src), problem.stage(e.dst)
        row = {finish[e.dst]: 1.0, finish[e.src]: -1.0}
        row.update({x[e.dst, k]: -o.latency_s for k, o in enumerate(dst.options)})
        for (i, a), (j, b) in product(enumerate(src.options), enumerate(dst.options)):
            t = e.transfer(a.pool, b.pool)
            if t is None:  # route does not exist: the pair cannot be chosen together
                m.row({x[e.src, i]: 1.0, x[e.dst, j]: 1.0}, hi=1.0)
            elif t.latency_s or t.cost_usd:
                y = m.var(t.cost_usd, 0.0, 1.0)  # y ≥ x_src + x_dst − 1: on when both ends are chosen
                m.row({y: 1.0, x[e.src, i]: -1.0, x[e.dst, j]: -1.0}, lo=-1.0)
                row[y] = -t.latency_s
        m.row(row, lo=0.0)
    status, values, _ = m.solve(time_limit_s)
    if status != "Optimal":
        raise PlanInfeasible(_explain(problem, status))
    def chosen(s: Stage) -> str:
        return s.options[max(range(len(s.options)), key=lambda k: values[x[s.name, k]])].pool

    choice = {s.name: chosen(s) for s in problem.stages}
    return evaluate(problem, choice)


def _explain(problem: Problem, status: str) -> str:
    """Closest assignment and what it misses by, rather than a bare solver status."""
    fastest = {s.name: min(s.options, key=lambda o: o.latency_s).pool for s in problem.stages}
    best = evaluate(problem, fastest)
    if best.feasible:
        return f"solver stopped ({status}) although {fastest} meets the deadline; raise the time limit"
    return (
        f"end-to-end deadline {problem.deadline_s * 1e3:.4g} ms unattainable: the fastest choice "
        f"{', '.join(f'{k}={v}' for k, v in fastest.items())} takes {best.latency_s * 1e3:.4g} ms "
        f"({(best.latency_s - problem.deadline_s) * 1e3:.4g} ms over)"
    )
