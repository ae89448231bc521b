"""terrazzo: plan, compile and run agentic AI workloads on heterogeneous hardware at minimum TCO.

The Python API (terrazzo/api.py) is importable from the package itself:

    import terrazzo as tz
    agent = tz.load_agent("examples/agents/voice-agent.yaml")
    plan = tz.plan_agent(agent, "examples/clusters/hetero.yaml", workload="examples/workloads/steady-200rps.yaml",
                         sla="examples/slas/interactive.yaml")
    plan.to_pandas()

Names are loaded on first use, so `import terrazzo` (and the CLI) stay fast. Planning is `plan_agent`
here (`terrazzo.api.plan` is the same function): `terrazzo.plan` is the planner's package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = (
    "AgentBuilder", "ClusterSpec", "Comparison", "PlanResult", "RunResult", "SimResult", "build_agent", "compare",
    "load_agent", "load_cluster", "load_sla", "load_workload", "plan_agent", "run", "simulate",
)
_IMPORTERS = {"import_langgraph": "terrazzo.importers.langgraph_import", "import_hf": "terrazzo.importers.hf_config"}
__all__ = [
    "AgentBuilder", "ClusterSpec", "Comparison", "PlanResult", "RunResult", "SimResult", "__version__", "build_agent",
    "compare", "import_hf", "import_langgraph", "load_agent", "load_cluster", "load_sla", "load_workload",
    "plan_agent", "run", "simulate",
]

if TYPE_CHECKING:
    from terrazzo.api import (
        AgentBuilder,
        ClusterSpec,
        Comparison,
        PlanResult,
        RunResult,
        SimResult,
        build_agent,
        compare,
        load_agent,
        load_cluster,
        load_sla,
        load_workload,
        plan_agent,
        run,
        simulate,
    )
    from terrazzo.importers.hf_config import import_hf
    from terrazzo.importers.langgraph_import import import_langgraph


def __getattr__(name: str) -> Any:
    import importlib

    if name in _API:
        return getattr(importlib.import_module("terrazzo.api"), name)
    if name in _IMPORTERS:
        return getattr(importlib.import_module(_IMPORTERS[name]), name)
    raise AttributeError(f"module 'terrazzo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
