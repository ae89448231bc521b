"""Per-request sampling of branches and loops follows the same semantics as AgentGraph.visits(): the
simulated mean visits per node match the expected visits, within a 99.9 % batch-means interval."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from terrazzo.sim.engine import Environment
from terrazzo.sim.flow import Flow, Request, compile_graph
from terrazzo.sim.sampling import uniform_draws
from terrazzo.spec.agent import Agent
from terrazzo.spec.builder import AgentBuilder
from terrazzo.spec.spec_loader import load_agent

EXAMPLES = Path(__file__).parent.parent / "examples" / "agents"
T_9995_19 = 3.883  # Student t, 99.95 % quantile, 19 degrees of freedom


class Delay:
    """A station that does nothing but take 10 ms."""

    def __init__(self, env: Environment, node) -> None:
        self.env, self.node, self.flow = env, node, None

    def __call__(self, tok) -> None:
        self.env.schedule(0.01, lambda t: self.flow.leave(t, self.node), tok)


def run_batch(agent: Agent, seed: int, n: int) -> dict[str, int]:
    graph = compile_graph(agent.graph)  # visit counters live on the compiled nodes
    env = Environment()
    ended: list[int] = []
    flow = Flow(graph, lambda tok, station: station(tok), uniform_draws(seed, "branches"),
                lambda req, pred: ended.append(req.id))
    for node in graph.work_nodes():
        node.station = Delay(env, node)
        node.station.flow = flow
    for i in range(n):
        env.at(i * 0.001, flow.start, Request(i, i * 0.001, None))
    env.run()
    assert len(ended) == n  # every request ends
    return flow.visits


def simulated_visits(agent: Agent, batches: int = 20, per_batch: int = 1500) -> dict[str, tuple[float, float]]:
    """Mean visits per request and the 99.9 % half-width, from independent batches (one seed each)."""
    counts = [run_batch(agent, seed, per_batch) for seed in range(batches)]
    out = {}
    for path in agent.graph.visits():
        means = np.array([c.get(path, 0) / per_batch for c in counts])
        out[path] = (float(means.mean()), float(T_9995_19 * means.std(ddof=1) / math.sqrt(batches)))
    return out


def assert_visits_match(agent: Agent) -> None:
    expected = agent.graph.visits()
    got = simulated_visits(agent)
    for path, v in expected.items():
        mean, half = got[path]
        assert abs(mean - v) <= max(half, 1e-12), f"{path}: simulated {mean:.4f} ± {half:.4f}, visits() {v:.4f}"


@pytest.mark.parametrize("name", ["voice-agent", "rag-support", "langchain-agent", "moe-agent"])
def test_example_agents(name, catalog):
    assert_visits_match(load_agent(EXAMPLES / f"{name}.yaml", catalog))


def test_nested_loops_and_a_looping_subagent(catalog):
    inner = (AgentBuilder("inner").node("x", "compute", cpu_s=0.01).node("b", "branch")
             .node("y", "compute", cpu_s=0.01).node("l", "loop", body="x", bound=2)
             .edge("x", "b").edge("b", "y", probability=0.5).edge("b", "l", probability=0.5).edge("l", "x"))
    agent = (AgentBuilder("outer").node("s", "compute", cpu_s=0.01).subagent("sub", inner)
             .node("c", "branch").node("L", "loop", body="s", bound=3).node("e", "compute", cpu_s=0.01)
             .node("a", "compute", cpu_s=0.01).node("in", "loop", body="a", bound=2).node("d", "branch")
             .edge("s", "sub").edge("sub", "c").edge("c", "L", probability=0.4).edge("c", "a", probability=0.6)
             .edge("a", "d").edge("d", "in", probability=0.5).edge("d", "e", probability=0.5).edge("in", "a")
             .edge("in", "e").edge("L", "s").build(catalog))
    assert_visits_match(agent)


def test_parallel_join_all_runs_once_per_set_of_inputs(catalog):
    agent = (AgentBuilder("j").node("a", "compute", cpu_s=0.01).node("b", "compute", cpu_s=0.01)
             .node("c", "compute", cpu_s=0.01, join="all").node("d", "compute", cpu_s=0.01)
             .edge("a", "c").edge("b", "c").edge("a", "d").build(catalog))
    got = simulated_visits(agent, batches=2, per_batch=50)
    assert {k: v[0] for k, v in got.items()} == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
