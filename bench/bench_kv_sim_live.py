"""KV reuse, live against simulated: a 3-iteration tool loop with a 2,048-token system prompt on vLLM CPU with
prefix caching on, with reuse (the loop's calls share their growing prefix) and without (every call's
prefix made distinct by its first tokens, so nothing is found), and the simulator's prediction of the
same TTFT ratio from a profile of the same server.

    .venv/bin/python bench/bench_kv_sim_live.py [--reps 8] [--out kv-sim-live] [--sections live,skew,profile]

1. One vLLM server (tiny random-weight Llama, 4 layers × 256, max_position_embeddings raised to 4,096 so
   that a 2k prefix and its loop fit; block size 128, vLLM's CPU default), prefix caching on, holding
   /tmp/vllm.lock. `terrazzo profile --engine vllm` measures it first (prompts with distinct heads, so
   the cache never serves them), which prices the simulated pool (terrazzo/cost/calibration.py).
2. The loop: call k's prompt = system prompt + Σ_{j<k} (new input_j + the tokens call j generated) + new
   input_k (256 new tokens per call, 32 generated, ignore_eos), sent one after another; TTFT is measured at
   the first streamed token. Reuse runs and no-reuse runs alternate. The server's prefix-cache counters
   (/metrics) say how many prompt tokens were served from cache.
3. Printed and written to OUT/kv-live.json: TTFT per iteration with and without reuse, the measured ratio
   (no reuse ÷ reuse, mean over iterations 2 and 3), the simulator's ratio for the same token counts
   (terrazzo.sim.kv_predict.predicted_loop), and predicted ÷ measured.
4. `skew` (simulation only, seconds): 8 replicas, 1,000 Zipf(1.0) sessions each with a 2k-token context,
   cache-aware routing against least loaded (terrazzo.sim.kv_predict.routing_under_skew): p50/p99 TTFT,
   hit rate, calls per replica and the busiest replica's load ÷ the mean.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console

from terrazzo.models.tiny import make_tiny_checkpoint
from terrazzo.profile.profile_command import Options, profile_command
from terrazzo.profile.vllm_load import PromptMaker, metric_sums
from terrazzo.profile.vllm_profile import PREFILL_S, QUEUE_S
from terrazzo.profile.vllm_server import VllmServer, VllmSettings
from terrazzo.sim.kv_predict import LoopShape, SkewSetup, predicted_loop, profiled_pool, routing_under_skew

MAX_LEN = 4096


def stream_call(url: str, model: str, prompt: list[int], osl: int) -> tuple[float, list[int]]:
    """(TTFT in s, generated ids) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": osl, "min_tokens": osl, "ignore_eos": True,
            "temperature": 0.0, "stream": True, "return_token_ids": True}
    ttft, out = -1.0, list[int]()
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line.endswith("[DONE]"):
                continue
            for ch in json.loads(line[6:]).get("choices", []):
                ids = ch.get("token_ids") or []
                if ids and ttft < 0:
                    ttft = time.perf_counter() - t0
                out += ids
    if ttft < 0 or len(out) != osl:
        raise RuntimeError(f"expected {osl} streamed token ids, got {len(out)}")
    return ttft, out


def cache_counters(url: str) -> tuple[float, float]:
    """(prefix-cache queried tokens, hit tokens) from the server's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    got = {"queries": 0.0, "hits": 0.0}
    for line in text.splitlines():
        for k in got:
            if line.startswith(f"vllm:prefix_cache_{k}_total"):
                got[k] += float(line.rsplit(" ", 1)[1])
    return got["queries"], got["hits"]


def reuse_points_of(prof: Path) -> dict[tuple[int, int], float]:
    """The profile's measured cached-prefix prefills: (new, cached) -> seconds."""
    from terrazzo.profile.profile_file import load_profile

    return {(p.new, p.cached): p.timing.median_s for p in load_profile(prof).points.reuse_prefill}


def run_loop(url: str, model: str, pm: PromptMaker, shape: LoopShape, distinct: bool,
             engine: list[float] | None = None) -> list[float]:
    """One request's loop; `distinct`: every call's prompt gets a fresh head (no reuse possible). `engine`
    collects each call's engine-side prefill time (vLLM's request_prefill_time, queue included)."""
    system = pm.ids(shape.shared_tokens)
    conversation: list[int] = []
    ttfts = []
    for _ in range(shape.iterations):
        new = pm.ids(shape.new_tokens)
        prompt = system + conversation + new
        if distinct:
            prompt = pm.ids(8) + prompt[8:]
        before = metric_sums(url, (PREFILL_S, QUEUE_S))
        ttft, gen = stream_call(url, model, prompt, shape.output_tokens)
        after = metric_sums(url, (PREFILL_S, QUEUE_S))
        if engine is not None:
            engine.append(sum(after[f"{m}_sum"] - before[f"{m}_sum"] for m in (PREFILL_S, QUEUE_S)))
        ttfts.append(ttft)
        conversation += new + gen
    return ttfts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=8, help="loops per mode (reuse, no reuse)")
    ap.add_argument("--shared", type=int, default=2048, help="system prompt tokens")
    ap.add_argument("--new", type=int, default=256, help="new input tokens per call")
    ap.add_argument("--output", type=int, default=32, help="generated tokens per call")
    ap.add_argument("--profile", type=Path, default=None, help="reuse a profile of this checkpoint instead")
    ap.add_argument("--out", type=Path, default=Path("kv-sim-live"))
    ap.add_argument("--sections", default="live,skew", help="live, skew, and profile (a profile alone)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="serve this checkpoint (default: make one)")
    ap.add_argument("--max-len", type=int, default=MAX_LEN, help="the server's max_model_len")
    ap.add_argument("--omp-threads", type=int, default=None, help="the server's CPU threads (default: vLLM's)")
    ap.add_argument("--eager", action="store_true", help="serve with -O0 (no torch.compile)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections.split(","))
    if "profile" in sections:
        profile_only(args)
    if "live" in sections:
        live(args)
    if "skew" in sections:
        skew()


def skew() -> None:
    setup = SkewSetup()
    print(f"\nrouting under skew (simulated): {setup.replicas} replicas of {setup.model} on {setup.device}, "
          f"{setup.sessions} sessions Zipf({setup.zipf_s}), {setup.context_tokens}-token contexts, "
          f"{setup.rate_per_s:g} req/s for {setup.duration_s:g} s, {setup.kv_blocks} KV blocks per replica")
    runs = [routing_under_skew(setup, False), routing_under_skew(setup, True)]
    for r in runs:
        print(f"  {'cache-aware ' if r.cache_aware else 'least loaded'}: TTFT p50 {r.p50_ttft_s * 1e3:.1f} ms, "
              f"p99 {r.p99_ttft_s * 1e3:.1f} ms, hit rate {r.hit_rate:.1%}, busiest replica "
              f"{r.max_over_mean_load:.2f}× the mean, calls per replica {r.calls_per_replica}")
    print(f"  cache-aware ÷ least loaded: p99 TTFT {runs[1].p99_ttft_s / runs[0].p99_ttft_s:.2f}×, hit rate "
          f"{runs[1].hit_rate:.1%} vs {runs[0].hit_rate:.1%}")


def tiny_kv_checkpoint(out: Path, max_len: int = MAX_LEN) -> Path:
    """The benchmarks' tiny random-weight Llama (4 layers × 256), positions raised so a 2k prefix and its
    loop fit (rotary positions: any length works)."""
    ckpt = Path(make_tiny_checkpoint(out / "tiny", hidden=256, layers=4, heads=8, kv_heads=4))
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["max_position_embeddings"] = max_len
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=1))
    return ckpt


def server_settings(max_len: int = MAX_LEN, omp_threads: int | None = None, eager: bool = False) -> VllmSettings:
    """Prefix caching on (after the launcher's --no-enable-...: it wins), block size 128 (vLLM's CPU default)."""
    return VllmSettings(max_num_seqs=16, max_num_batched_tokens=2048, block_size=128, max_model_len=max_len,
                        omp_threads=omp_threads, extra=["--enable-prefix-caching", *(["-O0"] if eager else [])])


def profile_server(srv: VllmServer, ckpt: Path, out: Path) -> Path:
    """`terrazzo profile --engine vllm` of the running server, on the grid the KV loops need."""
    opts = Options.vllm(model=ckpt, model_name="tiny-random-llama-l4-h256", vllm_server=srv, warmup=1,
                        repeats=3, isl=(16, 256, 1024, 2048), prefill_batch=(1, 4), decode_batch=(1, 8),
                        decode_context=(64, 1024), gemm_n=512, copy_mb=32,
                        command="terrazzo profile --engine vllm (bench/bench_kv_sim_live.py)")
    profile_command(opts, out, Console(quiet=True))
    return out


def profile_only(args: argparse.Namespace) -> None:
    """A profile of a server set up as `--omp-threads` / `--eager` / `--max-len` say (bench/bench_kv.py asks
    for one of its replicas' set-up)."""
    ckpt = args.checkpoint or tiny_kv_checkpoint(args.out, args.max_len)
    with VllmServer(ckpt, server_settings(args.max_len, args.omp_threads, args.eager), args.out / "vllm.log") as srv:
        print(f"vLLM {srv.version} up in {srv.startup_s:.0f} s, {srv.kv_blocks:,} KV blocks, prefix caching on")
        print(f"profiled: {profile_server(srv, ckpt, args.out / 'vllm-profile.yaml')}")


def live(args: argparse.Namespace) -> None:
    shape = LoopShape(args.shared, args.new, args.output, 3)
    ckpt = args.checkpoint or tiny_kv_checkpoint(args.out, args.max_len)
    settings = server_settings(args.max_len, args.omp_threads, args.eager)
    model = str(ckpt)
    with VllmServer(ckpt, settings, args.out / "vllm.log") as srv:
        print(f"vLLM {srv.version} up in {srv.startup_s:.0f} s, {srv.kv_blocks:,} KV blocks, prefix caching on")
        prof = args.profile
        if prof is None:
            prof = profile_server(srv, ckpt, args.out / "vllm-profile.yaml")
            print(f"profiled: {prof}")
        pm = PromptMaker(srv.base_url, model, 11)
        run_loop(srv.base_url, model, pm, shape, True)  # warm-up
        q0, h0 = cache_counters(srv.base_url)
        reuse, cold = [], []
        engine_reuse: list[float] = []
        engine_cold: list[float] = []
        for _ in range(args.reps):
            reuse.append(run_loop(srv.base_url, model, pm, shape, False, engine_reuse))
            cold.append(run_loop(srv.base_url, model, pm, shape, True, engine_cold))
        q1, h1 = cache_counters(srv.base_url)
    reuse_a, cold_a = np.array(reuse), np.array(cold)
    measured = float(np.median(cold_a[:, 1:]) / np.median(reuse_a[:, 1:]))
    # this client posts token ids with httpx (0.25 ms for 2,600 ids), not through the openai client whose
    # per-id request transform the profile's front end measured (21.8 ms for 2,600 ids, measured)
    pool = profiled_pool(prof, client_sends_ids=False)
    pred = predicted_loop(pool, shape)
    pred_frontend_ms = pool.frontend_s * 1e3
    for (n, k), t in sorted(reuse_points_of(prof).items()):
        modelled_s = pool.cost.prefill_s(n, n * n + 2 * n * k)
        read = pool.cost.context_read_s(k, n * k)
        print(f"reuse prefill point: {n} new behind {k} cached, measured {t * 1e3:.1f} ms, prefill model "
              f"{modelled_s * 1e3:.1f} ms, with the fitted read term {(modelled_s + read) * 1e3:.1f} ms")
    if pool.front is not None:
        f = pool.front
        print(f"front-end core ({f.source}): {f.request_cpu_s * 1e3:.2f} ms per request + "
              f"{f.prompt_token_cpu_s * 1e6:.2f} µs per prompt token, {f.step_cpu_s * 1e3:.3f} ms per step, "
              f"{f.token_cpu_s * 1e3:.3f} ms per token, {f.latency_s * 1e3:.1f} ms latency")
    result = {
        "shape": shape.__dict__, "reps": args.reps, "vllm": srv.version,
        "ttft_s": {"reuse": np.median(reuse_a, axis=0).tolist(), "no_reuse": np.median(cold_a, axis=0).tolist()},
        "measured_ratio": measured, "predicted_ttft_s": {"reuse": pred.reuse_ttft_s, "no_reuse": pred.cold_ttft_s},
        "predicted_ratio": pred.ratio, "predicted_over_measured": pred.ratio / measured,
        "engine_prefill_s": {"reuse": np.median(np.reshape(engine_reuse, (args.reps, -1)), axis=0).tolist(),
                             "no_reuse": np.median(np.reshape(engine_cold, (args.reps, -1)), axis=0).tolist()},
        "live_prefix_cache_hit_tokens": h1 - h0, "live_prefix_cache_queried_tokens": q1 - q0,
        "profile": str(prof),
    }
    (args.out / "kv-live.json").write_text(json.dumps(result, indent=1))
    it = ", ".join
    ms = result["ttft_s"]
    print(f"TTFT per iteration (median of {args.reps}), ms: reuse {it(f'{x * 1e3:.0f}' for x in ms['reuse'])}"
          f"; no reuse {it(f'{x * 1e3:.0f}' for x in ms['no_reuse'])}")
    eng = result["engine_prefill_s"]
    print(f"  of which in the engine (vLLM's queue + prefill time), ms: reuse "
          f"{it(f'{x * 1e3:.0f}' for x in eng['reuse'])}; no reuse {it(f'{x * 1e3:.0f}' for x in eng['no_reuse'])}")
    print(f"simulated (front end included; {pred_frontend_ms:.0f} ms for a lone request), ms: reuse "
          f"{it(f'{x * 1e3:.0f}' for x in pred.reuse_ttft_s)}; no reuse "
          f"{it(f'{x * 1e3:.0f}' for x in pred.cold_ttft_s)}")
    print(f"iterations 2-3, no reuse ÷ reuse: measured {measured:.2f}×, simulated {pred.ratio:.2f}×, "
          f"predicted ÷ measured {pred.ratio / measured:.2f}; live prefix-cache hits {h1 - h0:,.0f} of "
          f"{q1 - q0:,.0f} queried tokens")
    print(f"wrote {args.out / 'kv-live.json'}")


if __name__ == "__main__":
    main()
