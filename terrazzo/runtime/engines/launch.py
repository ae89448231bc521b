"""Which LLM pools of a plan run on vLLM, and their servers' specs: the plan's parallelism, its batch as
`--max-num-seqs`, the run config's context length, and the KV cache sized from batch × context."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.engines.engine_pool import AttachedHost, EnginePool, LocalHost, ReplicaHost
from terrazzo.runtime.engines.vllm_server import VllmServerSpec, kv_cache_gib, require_vllm_python
from terrazzo.runtime.failures import ExecutionError
from terrazzo.runtime.kv_cache import KvManager
from terrazzo.runtime.pool_layout import PoolSpec
from terrazzo.runtime.program_setup import ProgramSetup

_CPU_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}  # vLLM's CPU attention
LAUNCHABLE = ("builtin", "vllm")  # the engines this runtime starts


def pool_engine(spec: PoolSpec, config: RunConfig) -> str:
    """The engine a pool's LLM ops run on: the run config's `engine`, else the plan's where this runtime
    can start it, else builtin (a plan priced for TensorRT-LLM or Gaudi; `engine_ops` says so)."""
    return config.engine or (spec.engine if spec.engine in LAUNCHABLE else "") or "builtin"


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
                     served_name: str | None = None, kv_role: str | None = None,
                     kv: KvManager | None = None) -> EnginePool:
    """An EnginePool of `pool.workers` replicas, as local processes or Ray actors; with `kv`, routed by
    its cache manager (prefix and session affinity)."""
    attached = config.vllm.attach.get(pool.name, [])
    spec = server_spec(pool, checkpoint, config, pool.workers, served_name)
    if kv_role is not None:
        spec = replace(spec, kv_transfer_config=kv_connector(kv_role, config))
    hosts: list[ReplicaHost] = [AttachedHost(f"{pool.name}/attached{i}", url) for i, url in enumerate(attached)]
    if len(attached) >= pool.workers:
        return _pool(pool, spec, hosts, config, kv)
    check_checkpoint(checkpoint)
    python = require_vllm_python(config.vllm.python)
    log_dir = config.path(config.vllm.log_dir) or config.path(config.state_dir) / "engines"
    for i in range(len(attached), pool.workers):
        name = f"{pool.name}/vllm{i}"
        log = Path(log_dir) / f"{pool.name}-{i}.log"
        if backend == "ray":
            from terrazzo.runtime.engines.ray_host import RayHost

            hosts.append(RayHost(name, spec, python, log, pool.device,
                                 bind="127.0.0.1" if config.ray_address is None else "0.0.0.0"))
        else:
            hosts.append(LocalHost(name, spec, python, log))
    return _pool(pool, spec, hosts, config, kv)


def _pool(pool: PoolSpec, spec: VllmServerSpec, hosts: list[ReplicaHost], config: RunConfig,
          kv: KvManager | None = None) -> EnginePool:
    pool_kv = kv.pool(pool.name, len(hosts), spec.model, spec.kv_cache_gib) if kv is not None else None
    return EnginePool(pool.name, pool.device, spec, hosts, timeout_s=config.op_timeout_s,
                      start_timeout_s=config.vllm.start_timeout_s, max_restarts=config.vllm.max_restarts,
                      max_attempts=config.max_attempts, extra_body=config.vllm.request_extra, kv=pool_kv)


def without_ops(pool: PoolSpec, ops: set[str]) -> PoolSpec | None:
    """The worker pool left once `ops` go to an engine; None when nothing is left for workers."""
    rest = tuple(op for op in pool.ops if op not in ops)
    return replace(pool, ops=rest) if rest else None


@dataclass(frozen=True)
class EngineUse:
    """What one vLLM pool serves: its model, and its KV role when it takes part in a P/D split."""

    checkpoint: str
    served_name: str | None
    kv_role: str | None = None   # kv_producer (prefill), kv_consumer (decode), kv_both; None: aggregated only


def engine_ops(setup: ProgramSetup, pools: dict[str, PoolSpec], config: RunConfig
               ) -> tuple[dict[str, EngineUse], list[str]]:
    """The LLM ops whose pools run vLLM, as {pool: EngineUse}; and notes on LLM calls that stay on the
    built-in engine (a P/D split with one side not on vLLM)."""
    served: dict[str, EngineUse] = {}
    notes: list[str] = []

    def use(pool: str, model: tuple[str, str | None], role: str | None) -> None:
        have = served.get(pool)
        if have is not None and (have.checkpoint, have.served_name) != model:
            raise ExecutionError(f"pool '{pool}' would serve two models ({have.checkpoint}, {model[0]}) on vLLM",
                                 fix="place the models on different pools, or map them to one checkpoint")
        if have is not None and have.kv_role != role:
            role = "kv_both"
        served[pool] = EngineUse(model[0], model[1], role)

    for prog in setup.programs.values():
        if prog.node.kind != "llm" or "checkpoint" not in prog.ctx["target"]:
            continue
        ops_pools = [setup.plan.placement(op).pool for op in prog.ops]
        for p in ops_pools:
            planned = pools[p].engine
            note = (f"pool '{p}' was priced for {planned}, which this runtime does not start: it runs on the "
                    "built-in engine (set `engine: vllm` in the run config for vLLM)")
            if planned and planned not in LAUNCHABLE and not config.engine and note not in notes:
                notes.append(note)
        on_vllm = [pool_engine(pools[p], config) == "vllm" for p in ops_pools]
        model = (prog.ctx["target"]["checkpoint"], prog.ctx["target"].get("served_name"))
        if prog.ctx["mode"] == "aggregated":
            if on_vllm[0]:
                use(ops_pools[0], model, None)
        elif all(on_vllm):
            use(ops_pools[0], model, "kv_producer")
            use(ops_pools[1], model, "kv_consumer")
        elif any(on_vllm):
            notes.append(f"'{prog.path}' is split into prefill and decode with only one side on vLLM: both run on "
                         "the built-in engine with its KV cache handed over")
    return served, notes


def kv_connector(role: str, config: RunConfig) -> dict:
    """vLLM's shared-storage KV connector (ExampleConnector): the prefill server writes each prompt's KV
    blocks under the store, the decode server loads those of the same prompt instead of computing them.
    The store must be one folder both see (one machine, or a shared filesystem)."""
    store = config.path(config.vllm.kv_store_dir) or config.path(config.state_dir) / "kv-store"
    Path(store).mkdir(parents=True, exist_ok=True)
    return {"kv_connector": "ExampleConnector", "kv_role": role,
            "kv_connector_extra_config": {"shared_storage_path": str(store)}}
