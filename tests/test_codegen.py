"""IREE code generation: the compiled CPU artifacts compute what PyTorch computes, every target family
yields a module in its own executable format, the cache keys what it should, and the runtime uses
the artifacts with PyTorch as the fallback."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from terrazzo.codegen.compile import (
    Target,
    artifact_format_ok,
    built_operator,
    cache_dir,
    compile_operator,
    parse_target,
    target_for_device,
)
from terrazzo.codegen.emit import emit_vmfb
from terrazzo.codegen.encoder import load_encoder, minilm_dir
from terrazzo.codegen.operators import embed_operator, pii_operator
from terrazzo.codegen.pii import encode, synthetic, train
from terrazzo.codegen.runner import IreeFunction
from terrazzo.errors import CodegenError
from terrazzo.runtime.failures import ExecutionError

HOST = Target("llvm-cpu", "host")
TEXTS = ["Where is my order 1234?", "my email is ana12@example.com", "x",
         "the quick brown fox jumps over the lazy dog " * 20]  # ~200 tokens: longer than the 128 bucket


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def pii_host(root):
    return compile_operator(pii_operator(4, root), HOST, root)


@pytest.fixture(scope="module")
def embed_host(root):
    return compile_operator(embed_operator(1, 128), HOST, root)


def test_the_privacy_filter_learns_its_synthetic_task(root):
    trained = train(cache_dir(root) / "weights")  # trained here once; the artifact tests below load it
    assert trained.heldout_accuracy >= 0.95  # held-out synthetic texts, not seen in training
    scores = trained.net(torch.from_numpy(encode(["write to ana12@example.com", "where is my parcel"])))
    assert scores[0] > 0.5 > scores[1]


def test_cpu_artifact_matches_pytorch_for_the_privacy_filter(root, pii_host):
    net, _, _ = built_operator(pii_operator(4, root))
    rng = np.random.default_rng(0)
    for x in (rng.integers(0, 256, (4, 128)), encode(synthetic(4, random.Random(5))[0])):
        with torch.no_grad():
            ref = net(torch.from_numpy(x.astype(np.int64))).numpy()
        np.testing.assert_allclose(IreeFunction(pii_host.path)(x.astype(np.int64)), ref, atol=1e-5)


def test_cpu_artifact_matches_pytorch_and_sentence_transformers_for_minilm(embed_host):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    folder = minilm_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(TEXTS[:1], padding="max_length", max_length=128, return_tensors="np")
    got = IreeFunction(embed_host.path)(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))
    reference = SentenceTransformer(str(folder), device="cpu").encode(TEXTS[:1], normalize_embeddings=True)
    np.testing.assert_allclose(got, reference, atol=2e-5)  # tolerance: float32 reassociation in 6 layers
    rng = np.random.default_rng(1)  # random token ids, half the positions masked
    ids, mask = rng.integers(1000, 30000, (1, 128)), (np.arange(128) < 64).astype(np.int64)[None]
    with torch.no_grad():
        ref = load_encoder(folder)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(IreeFunction(embed_host.path)(ids, mask), ref, atol=2e-5)


@pytest.mark.parametrize("family", ["llvm-cpu", "cuda", "rocm", "vulkan"])
def test_every_target_family_yields_a_module_in_its_format(root, family):
    target = Target(family, parse_target(family)[0].arch if family != "llvm-cpu" else "znver4")
    art = compile_operator(pii_operator(4, root), target, root)
    assert artifact_format_ok(art.path, target)
    others = [Target(f, parse_target(f)[0].arch) for f in ("llvm-cpu", "cuda", "rocm", "vulkan") if f != family]
    assert not any(artifact_format_ok(art.path, t) for t in others)  # the check can tell them apart


def test_the_cache_hits_and_keys_on_target_and_shapes(root, pii_host):
    again = compile_operator(pii_operator(4, root), HOST, root)
    assert again.cache_hit and again.path == pii_host.path
    other = compile_operator(pii_operator(4, root), Target("llvm-cpu", "sapphirerapids"), root)
    assert other.key != pii_host.key
    assert pii_operator(8, root).key("w", HOST.flags) != pii_operator(4, root).key("w", HOST.flags)
    assert pii_operator(4, root).key("w", HOST.flags) != pii_operator(4, root).key("v", HOST.flags)


def test_bad_targets_are_refused_clearly(root):
    with pytest.raises(CodegenError, match="not one of llvm-cpu, cuda, rocm, vulkan"):
        parse_target("metal")
    with pytest.raises(CodegenError, match="arch 'sm_90' is not one of"):
        parse_target("cuda:sm_90")
    with pytest.raises(CodegenError, match="iree-compile failed"):
        compile_operator(pii_operator(4, root), Target("llvm-cpu", "notacpu"), root)
    assert target_for_device("mi300x") == Target("rocm", "gfx942")
    assert target_for_device("gaudi3") is None


def test_the_runtime_embedder_uses_the_artifact_and_falls_back(root, embed_host):
    from terrazzo.runtime.executors.vector import Embedder

    torch_emb = Embedder(minilm_dir())
    iree_emb = Embedder(minilm_dir(), "iree", root)
    ref = np.asarray(torch_emb.encode(TEXTS))
    got = np.asarray(iree_emb.encode(TEXTS[:1]))
    assert iree_emb.backend_used == "iree"
    np.testing.assert_allclose(got, ref[:1], atol=2e-5)
    mixed = np.asarray(iree_emb.encode(TEXTS))  # one text at a time; the long one fits no compiled bucket
    assert iree_emb.backend_used == "iree+torch"
    np.testing.assert_allclose(mixed, ref, atol=2e-5)
    with pytest.raises(ExecutionError, match="no compiled embedding artifact"):
        Embedder(minilm_dir(), "iree", root / "empty")
    assert Embedder(minilm_dir(), "auto", root / "empty").backend_used == "torch"


def test_compile_emits_a_manifest_mapping_pools_to_artifacts(tmp_path, root):
    agent = tmp_path / "screen.yaml"
    agent.write_text("name: screen\nnodes:\n  - {id: screen, kind: compute, cpu_s: 2 ms,"
                     " function: \"terrazzo.runtime.executors.classifier:pii_filter\"}\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": {
        "screen": {"device": "epyc-9654", "tp": 1, "pp": 1, "replicas": 2, "pool": "epyc-9654-tp1-pp1"}}}))
    done = emit_vmfb(agent, "llvm-cpu:host", tmp_path / "out", plan, root)
    doc = json.loads(done.manifest.read_text())
    assert doc["schema"] == "terrazzo.artifacts/v1"
    files = doc["pools"]["epyc-9654-tp1-pp1"]
    assert files and all(".llvm-cpu-znver4." in f for f in files)  # EPYC 9654 is Zen 4
    assert {a["target"] for a in doc["artifacts"]} == {"llvm-cpu-host", "llvm-cpu-znver4"}
    assert all((tmp_path / "out" / a["file"]).is_file() for a in doc["artifacts"])
    on_gpu = tmp_path / "gpu-plan.json"  # the plan runs the filter on a GPU: nothing for llvm-cpu is needed
    on_gpu.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": {
        "screen": {"device": "h100-sxm", "tp": 1, "pp": 1, "replicas": 1, "pool": "h100-sxm-tp1-pp1"}}}))
    none = emit_vmfb(agent, "llvm-cpu", tmp_path / "out3", on_gpu, root)
    assert none.manifest is None and not none.artifacts and not (tmp_path / "out3").exists()
    assert "needs no llvm-cpu artifact" in none.skipped[0] and "h100-sxm-tp1-pp1 (h100-sxm: cuda)" in none.skipped[0]
    agent.write_text("name: plain\nnodes:\n  - {id: only, kind: compute, cpu_s: 1 ms}\n")
    plain = emit_vmfb(agent, "llvm-cpu", tmp_path / "out2", None, root)
    assert plain.manifest is None and "no node runs a tensor operator" in plain.skipped[0]
    assert not (tmp_path / "out2").exists()


def test_the_privacy_filter_node_runs_on_the_artifact(root, monkeypatch):
    from terrazzo.runtime.executors import classifier

    compile_operator(pii_operator(1, root), HOST, root)
    monkeypatch.setenv("TERRAZZO_ARTIFACTS", str(root))
    monkeypatch.setattr(classifier, "_MODEL", {})
    flagged = classifier.pii_filter({"text": "call me on +44 207 946 0958"})
    clean = classifier.pii_filter({"text": "where is my parcel"})
    assert flagged["pii"]["backend"] == "iree" and flagged["pii"]["flagged"] and not clean["pii"]["flagged"]
