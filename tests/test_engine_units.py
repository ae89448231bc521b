"""The router's policy, and the vLLM flags a pool's plan turns into (no server needed)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from terrazzo.kv.routing import Held, PoolShare, ReplicaLoad, Router
from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.engines.launch import check_checkpoint, server_spec
from terrazzo.runtime.engines.vllm_server import VllmServerSpec, kv_cache_gib
from terrazzo.runtime.failures import ExecutionError
from terrazzo.runtime.pool_layout import PoolSpec, load_plan


@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(1, 300))
def test_shares_are_honoured_over_any_prefix(weights: list[int], calls: int) -> None:
    shares = [PoolShare(f"p{i}", w / sum(weights)) for i, w in enumerate(weights)]
    sent: Counter[str] = Counter()
    for n in range(1, calls + 1):
        sent[Router.pick_pool(shares, sent)] += 1
        for s in shares:  # deficit round robin: never more than one call off its share
            assert abs(sent[s.pool] - s.share * n) < 1.0 + 1e-9


def test_least_loaded_healthy_replica() -> None:
    r = Router()
    loads = [ReplicaLoad(0, 3), ReplicaLoad(1, 1), ReplicaLoad(2, 0, healthy=False), ReplicaLoad(3, 1)]
    assert r.pick_replica(loads) == 1
    assert r.pick_replica(loads, exclude=frozenset({1})) == 3
    assert r.pick_replica(loads, exclude=frozenset({0, 1, 3})) is None


def test_affinity_hook_wins_unless_that_replica_has_too_much_work_queued() -> None:
    """Replica 0 holds 500 of the call's tokens: kept while its queued work is within 500 + 100 tokens of
    the least loaded's."""
    r = Router(affinity=lambda key, loads: Held(0, 500.0), affinity_slack_tokens=100)
    assert r.pick_replica([ReplicaLoad(0, 2, work_tokens=600), ReplicaLoad(1, 0)], key="session-a") == 0
    assert r.pick_replica([ReplicaLoad(0, 2, work_tokens=601), ReplicaLoad(1, 0)], key="session-a") == 1
    assert r.pick_replica([ReplicaLoad(0, 0), ReplicaLoad(1, 2)]) == 0  # no key: least work, then fewest calls
    assert r.pick_replica([ReplicaLoad(0, 0, work_tokens=5), ReplicaLoad(1, 2)]) == 1


def test_flags_follow_the_plan(tmp_path: Path) -> None:
    from terrazzo.models.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny")
    pool = PoolSpec("gaudi3-tp2-pp2", "gaudi3", 2, ("a.aggregated",), 4, "vllm", tp=2, pp=2, batch=24)
    spec = server_spec(pool, ckpt, RunConfig(), replicas=2)
    args = spec.args()
    flag = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert flag["--tensor-parallel-size"] == "2" and flag["--pipeline-parallel-size"] == "2"
    assert flag["--max-num-seqs"] == "24" and flag["--max-model-len"] == "2048"
    assert "--enable-prefix-caching" in args and "-O0" in args
    single = server_spec(pool, ckpt, RunConfig(vllm={"parallelism": "single", "compile": True}), replicas=2)
    assert "--tensor-parallel-size" in single.args() and single.tensor_parallel == single.pipeline_parallel == 1
    assert "-O0" not in single.args()
    assert spec.cpu_env()["VLLM_CPU_KVCACHE_SPACE"] == str(spec.kv_cache_gib)
    # the server keeps idle connections longer than the client does, so the client always closes first
    assert float(spec.cpu_env()["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) > httpx.Limits().keepalive_expiry
    pd = VllmServerSpec("m", "m", kv_transfer_config={"kv_connector": "NixlConnector", "kv_role": "kv_both"})
    assert json.loads(pd.args()[pd.args().index("--kv-transfer-config") + 1])["kv_connector"] == "NixlConnector"


def test_kv_cache_is_sized_from_batch_and_context(tmp_path: Path) -> None:
    cfg = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
           "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    per_token = 2 * 32 * 8 * 128 * 2  # Llama-3-8B: 128 KiB per token
    assert per_token * 16 * 2048 == 4 << 30
    assert kv_cache_gib(tmp_path, 16, 2048, cap_gib=64) == 4
    assert kv_cache_gib(tmp_path, 17, 2048, cap_gib=64) == 5   # rounded up to whole GiB
    assert kv_cache_gib(tmp_path, 64, 8192, cap_gib=8) == 8    # capped
    assert kv_cache_gib(tmp_path, 1, 16) == 1                   # at least the floor


def test_checkpoint_vllm_cpu_cannot_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "hidden_size": 64}))
    with pytest.raises(ExecutionError, match="head size 16"):
        check_checkpoint(str(tmp_path))


def test_plan_engine_and_batch_reach_the_pool(tmp_path: Path) -> None:
    doc = {"schema": "terrazzo.placement/v1", "placements": {
        "a.aggregated": {"pool": "p", "device": "h100", "replicas": 3, "engine": "vllm", "batch": 32, "tp": 2}}}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    pool = load_plan(tmp_path / "p.json").pools(1, 8)["p"]
    assert (pool.engine, pool.batch, pool.tp, pool.workers, pool.devices_per_worker) == ("vllm", 32, 2, 3, 2)


def test_a_pd_split_on_vllm_gets_producer_and_consumer_roles(tmp_path: Path) -> None:
    from terrazzo.models.tiny import make_tiny_checkpoint
    from terrazzo.runtime.engines.launch import engine_ops, kv_connector
    from terrazzo.runtime.program_setup import ProgramSetup
    from terrazzo.spec.spec_loader import agent_from_text

    ckpt = make_tiny_checkpoint(tmp_path / "tiny")
    doc = {"schema": "terrazzo.placement/v1", "placements": {
        "think.prefill": {"pool": "pre", "device": "cpu", "engine": "vllm"},
        "think.decode": {"pool": "dec", "device": "cpu", "engine": "vllm"},
        "again.aggregated": {"pool": "pre", "device": "cpu", "engine": "vllm"}}}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    agent = agent_from_text("name: pd\nnodes:\n  - {id: think, kind: llm, model: llama-3-8b, input_tokens: 8, "
                            "output_tokens: 8}\n  - {id: again, kind: llm, model: llama-3-8b, input_tokens: 8, "
                            "output_tokens: 8}\nedges:\n  - {from: think, to: again}\n")
    config = RunConfig(state_dir=str(tmp_path), models={"llama-3-8b": {"checkpoint": ckpt}})
    plan = load_plan(tmp_path / "p.json")
    setup = ProgramSetup(plan, config, [])
    setup.build(agent.graph)
    served, notes = engine_ops(setup, plan.pools(1, 2), config)
    assert {p: u.kv_role for p, u in served.items()} == {"pre": "kv_both", "dec": "kv_consumer"} and not notes
    conn = kv_connector("kv_consumer", config)
    assert conn["kv_connector"] == "ExampleConnector" and Path(conn["kv_connector_extra_config"]
                                                                ["shared_storage_path"]).is_dir()
    builtin = RunConfig(state_dir=str(tmp_path), engine="builtin", models={"llama-3-8b": {"checkpoint": ckpt}})
    assert engine_ops(setup, plan.pools(1, 2), builtin) == ({}, [])


def test_a_pool_priced_for_an_engine_this_runtime_cannot_start_runs_builtin_and_says_so(tmp_path: Path) -> None:
    from terrazzo.models.tiny import make_tiny_checkpoint
    from terrazzo.runtime.engines.launch import engine_ops, pool_engine
    from terrazzo.runtime.program_setup import ProgramSetup
    from terrazzo.spec.spec_loader import agent_from_text

    ckpt = make_tiny_checkpoint(tmp_path / "tiny")
    doc = {"schema": "terrazzo.placement/v1", "placements": {
        "think.aggregated": {"pool": "b200-trt", "device": "cpu", "engine": "trtllm"}}}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    agent = agent_from_text("name: one\nnodes:\n  - {id: think, kind: llm, model: llama-3-8b, input_tokens: 8, "
                            "output_tokens: 8}\n")
    plan = load_plan(tmp_path / "p.json")
    pools = plan.pools(1, 2)
    config = RunConfig(state_dir=str(tmp_path), models={"llama-3-8b": {"checkpoint": ckpt}})
    assert pools["b200-trt"].engine == "trtllm" and pool_engine(pools["b200-trt"], config) == "builtin"
    setup = ProgramSetup(plan, config, [])
    setup.build(agent.graph)
    served, notes = engine_ops(setup, pools, config)
    assert served == {} and len(notes) == 1 and "priced for trtllm" in notes[0] and "built-in" in notes[0]
    chosen = RunConfig(state_dir=str(tmp_path), engine="builtin", models={"llama-3-8b": {"checkpoint": ckpt}})
    assert engine_ops(setup, pools, chosen) == ({}, [])  # the run config chose the engine: nothing to say
