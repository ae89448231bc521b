"""Which LLM pools of a plan run on vLLM, and their servers' specs: the plan's parallelism, its batch as
`--max-num-seqs`, the run config's context length, and the KV cache sized from batch × context."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.engines.engine_pool import AttachedHost, EnginePool, LocalHost, ReplicaHost
from terrazzo.runtime.engines.vllm_server import VllmServerSpec, kv_cache_gib, require_vllm_python
from terrazzo.runtime.failures import ExecutionError
from terrazzo.runtime.pool_layout import PoolSpec
from terrazzo.runtime.program_setup import ProgramSetup

_CPU_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}  # vLLM's CPU attention


def pool_engine(spec: PoolSpec, config: RunConfig) -> str:
    """The engine a pool's LLM ops run on: the run config's `engine`, else the plan's, else builtin."""
    return config.engine or spec.engine or "builtin"


def server_spec(pool: PoolSpec, checkpoint: str, config: RunConfig, replicas: int,
                served_name: str | None = None) -> VllmServerSpec:
    v = config.vllm
    tp, pp = (pool.tp, pool.pp) if v.parallelism == "plan" else (1, 1)
    batch = v.max_num_seqs or max(1, pool.batch)
    local = (Path(checkpoint) / "config.json").is_file()
    kv = v.kv_cache_gib or (kv_cache_gib(checkpoint, batch, v.max_model_len, cap_gib=v.max_kv_cache_gib) if local
                            else v.max_kv_cache_gib)
    threads = v.omp_threads or max(1, (os.cpu_count() or 1) // max(1, replicas))
    extra = tuple(v.extra_args) + (() if v.compile else ("-O0",))
    return VllmServerSpec(model=checkpoint, served_name=served_name or Path(checkpoint).name, tensor_parallel=tp,
                          pipeline_parallel=pp, max_num_seqs=batch, max_model_len=v.max_model_len,
                          prefix_caching=v.prefix_caching, dtype=v.dtype, kv_cache_gib=kv, omp_threads=threads,
                          extra_args=extra)


def check_checkpoint(checkpoint: str) -> None:
    """Refuse, with the fix, a checkpoint vLLM's CPU attention cannot run (it would fail on the first call)."""
    import json

    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    heads = int(cfg.get("num_attention_heads", 1))
    head = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    if head not in _CPU_HEAD_SIZES:
        raise ExecutionError(f"checkpoint '{checkpoint}' has head size {head}; vLLM's CPU attention takes "
                             f"{sorted(_CPU_HEAD_SIZES)}",
                             fix="remake it with `terrazzo models make-tiny` (head size 32), or use engine: builtin")


def make_engine_pool(pool: PoolSpec, checkpoint: str, config: RunConfig, backend: str,
                     served_name: str | None = None) -> EnginePool:
    """An EnginePool of `pool.workers` replicas, as local processes or Ray actors."""
    attached = config.vllm.attach.get(pool.name, [])
    spec = server_spec(pool, checkpoint, config, pool.workers, served_name)
    hosts: list[ReplicaHost] = [AttachedHost(f"{pool.name}/attached{i}", url) for i, url in enumerate(attached)]
    if len(attached) >= pool.workers:
        return _pool(pool, spec, hosts, config)
    check_checkpoint(checkpoint)
    python = require_vllm_python(config.vllm.python)
    log_dir = config.path(config.vllm.log_dir) or config.path(config.state_dir) / "engines"  # type: ignore[operator]
    for i in range(len(attached), pool.workers):
        name = f"{pool.name}/vllm{i}"
        log = Path(log_dir) / f"{pool.name}-{i}.log"
        if backend == "ray":
            from terrazzo.runtime.engines.ray_host import RayHost

            hosts.append(RayHost(name, spec, python, log, pool.device,
                                 bind="127.0.0.1" if config.ray_address is None else "0.0.0.0"))
        else:
            hosts.append(LocalHost(name, spec, python, log))
    return _pool(pool, spec, hosts, config)


def _pool(pool: PoolSpec, spec: VllmServerSpec, hosts: list[ReplicaHost], config: RunConfig) -> EnginePool:
    return EnginePool(pool.name, pool.device, spec, hosts, timeout_s=config.op_timeout_s,
                      start_timeout_s=config.vllm.start_timeout_s, max_restarts=config.vllm.max_restarts,
                      max_attempts=config.max_attempts, extra_body=config.vllm.request_extra)


def without_ops(pool: PoolSpec, ops: set[str]) -> PoolSpec | None:
    """The worker pool left once `ops` go to an engine; None when nothing is left for workers."""
    rest = tuple(op for op in pool.ops if op not in ops)
    return replace(pool, ops=rest) if rest else None


def engine_ops(setup: ProgramSetup, pools: dict[str, PoolSpec], config: RunConfig
               ) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """The aggregated LLM ops whose pool runs vLLM, as {pool: (checkpoint, served name)}; and notes on LLM calls that
    stay on the built-in engine (a P/D split: no vLLM KV connector runs on CPU, docs/runtime.md)."""
    served: dict[str, tuple[str, str | None]] = {}
    notes: list[str] = []
    for prog in setup.programs.values():
        if prog.node.kind != "llm" or "checkpoint" not in prog.ctx["target"]:
            continue
        pool = setup.plan.placement(prog.ops[0]).pool
        if pool_engine(pools[pool], config) != "vllm":
            continue
        if prog.ctx["mode"] != "aggregated":
            notes.append(f"'{prog.path}' is split into prefill and decode: it runs on the built-in engine with its "
                         "KV cache handed over (vLLM's KV connectors do not run on CPU; docs/runtime.md)")
            continue
        model = (prog.ctx["target"]["checkpoint"], prog.ctx["target"].get("served_name"))
        if served.setdefault(pool, model) != model:
            raise ExecutionError(f"pool '{pool}' would serve two models ({served[pool][0]}, {model[0]}) on vLLM",
                                 fix="place the models on different pools, or map them to one checkpoint")
    return served, notes
