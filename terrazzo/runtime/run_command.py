"""Plain functions behind `terrazzo run` and `terrazzo models make-tiny` (the CLI wires them in)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from terrazzo.runtime.config import load_config
from terrazzo.runtime.failures import ExecutionError
from terrazzo.runtime.orchestrator import Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.runtime.run_report import RunReport
from terrazzo.spec.agent import Agent


def make_tiny(directory: str | Path) -> str:
    """Write the tiny random-weight Llama checkpoint; returns a message that says it is random weights."""
    from terrazzo.models.tiny import RANDOM_WEIGHTS_NOTE, make_tiny_checkpoint

    path = make_tiny_checkpoint(directory)
    return f"wrote {path}\n{RANDOM_WEIGHTS_NOTE}"


async def run_async(agent_path: str | Path | Agent, plan_path: str | Path | None, inputs: list[str],
                    backend: str = "local", config_path: str | Path | None = None, concurrency: int = 8,
                    on_engine_progress: Any = None, **overrides: object) -> RunReport:
    """`agent_path`: an agent YAML, or an Agent already loaded (the Python API passes built agents)."""
    from terrazzo.spec.spec_loader import load_agent

    agent = agent_path if isinstance(agent_path, Agent) else load_agent(agent_path)
    plan = load_plan(plan_path)
    if plan.agent and plan.agent != agent.name:
        raise ExecutionError(f"plan '{plan_path}' is for agent '{plan.agent}', not '{agent.name}'",
                             fix="plan this agent with `terrazzo plan` and pass that file to --plan")
    config = load_config(config_path, **overrides)
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(concurrency)
    run_id = uuid.uuid4().hex[:8]  # request ids of separate runs never meet in the idempotency store
    runtime = Runtime(agent, plan, config, backend)
    runtime.on_engine_progress = on_engine_progress
    async with runtime as rt:
        async def one(i: int, text: str):
            async with sem:
                return await rt.run(text, request_id=f"req{i}-{run_id}")

        results = await asyncio.gather(*(one(i, t) for i, t in enumerate(inputs)))
        stats = rt.stats()
        notes = list(rt.notes)
    return RunReport.build(agent.name, backend, plan, list(results), stats, notes, time.perf_counter() - t0)


def run_command(agent_path: str | Path, plan_path: str | Path | None, inputs: list[str], backend: str = "local",
                config_path: str | Path | None = None, concurrency: int = 8, on_engine_progress: Any = None,
                **overrides: object) -> RunReport:
    """Run `inputs` through the agent as placed by the plan; returns the report (never a bare traceback:
    bad input raises ExecutionError / SpecError, failed requests are reported per request)."""
    if not inputs:
        raise ExecutionError("no inputs", fix="pass at least one --input TEXT")
    return asyncio.run(run_async(agent_path, plan_path, inputs, backend, config_path, concurrency, on_engine_progress,
                                 **overrides))
