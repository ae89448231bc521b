"""Why a baseline cannot apply or has no feasible plan, in words a fleet owner can act on — never a
bare solver status."""

from __future__ import annotations

from dataclasses import replace

from terrazzo.plan.check import check
from terrazzo.plan.infeasibility import closest_miss, explain_infeasible
from terrazzo.plan.milp import Allow, solve_milp
from terrazzo.plan.planning_graph import PlanEdge, PlanningGraph, VariantGroup


def cannot_apply(graph: PlanningGraph, device: str) -> str:
    """Why a baseline on `device` cannot be priced on this cluster, or '' when it can."""
    if graph.mode == "unconstrained" or device in graph.inventory or device in graph.buy:
        return ""
    have = ", ".join(f"{d} ×{n}" for d, n in graph.inventory.items()) or "nothing"
    buy = f"; may buy {', '.join(graph.buy)}" if graph.buy else ""
    return (f"cannot apply: {device} is not in the cluster (owns {have}{buy}); add it to 'buy' to price this "
            f"reference")


def why_infeasible(graph: PlanningGraph, allow: Allow, variants: dict[str, str], status: str) -> str:
    """The binding limit of a restricted plan: an op no allowed device can serve, the inventory, the
    power or rack limit, or the end-to-end SLA."""
    g = restricted_graph(graph, allow, variants)
    loose = replace(g, mode="unconstrained", max_kw=None, max_devices=None)
    free = solve_milp(loose)
    if free.assignment is None:
        return explain_infeasible(g)
    verdict = check(loose, free.assignment)
    need = verdict.devices
    short = [f"{n} {d} (owns {graph.inventory.get(d, 0)}{'' if d in graph.buy else ', not in the buy list'})"
             for d, n in need.items()
             if graph.mode != "unconstrained" and n > graph.inventory.get(d, 0)
             and not (graph.mode == "own-and-buy" and d in graph.buy)]
    if short:
        return "the inventory binds: it needs " + ", ".join(short)
    total = sum(need.values())
    if graph.max_devices is not None and total > graph.max_devices:
        return f"the rack limit binds: it needs {total} devices, max_devices is {graph.max_devices}"
    if graph.max_kw is not None:
        from terrazzo.plan.power import fleet_power_kw

        kw = fleet_power_kw(loose, verdict.pools)
        if kw > graph.max_kw:
            return f"the power limit binds: it needs {kw:.1f} kW, max_kw is {graph.max_kw:g}"
    return f"{explain_infeasible(g)} (solver: {status})"


def no_allowed_column(graph: PlanningGraph, op: str, allow: Allow) -> str:
    """Why `op` has no column the restriction allows: the closest miss among its allowed candidates."""
    o = graph.op(op)
    mine = [c for c in o.candidates if c.device in graph.cluster_devices and allow(op, c)]
    if not mine:
        return f"{op}: no configuration the baseline allows is priced for a {o.kind} op"
    return closest_miss(o, mine)


def restricted_graph(graph: PlanningGraph, allow: Allow, variants: dict[str, str]) -> PlanningGraph:
    """The graph with disallowed candidates marked infeasible and each forced node's other variants removed."""
    dropped = {op for grp in graph.groups if grp.node in variants
               for v, ops in grp.variants.items() if v != variants[grp.node] for op in ops}
    ops = tuple(o if all(allow(o.name, c) for c in o.candidates) else  # untouched ops are not copied
                replace(o, candidates=tuple(c if allow(o.name, c) else replace(c, feasible=False,
                                                                               reason="excluded by the baseline")
                                            for c in o.candidates))
                for o in graph.ops if o.name not in dropped)
    groups = tuple(VariantGroup(grp.node, {v: vs for v, vs in grp.variants.items()
                                           if grp.node not in variants or v == variants[grp.node]})
                   for grp in graph.groups)
    edges: tuple[PlanEdge, ...] = tuple(e for e in graph.edges if e.src not in dropped and e.dst not in dropped)
    return replace(graph, ops=ops, groups=groups, edges=edges)
