"""What the simulator predicts for KV reuse, as functions a benchmark calls (bench/bench_kv.py):

- `predicted_loop(profile, shape)`: TTFT per iteration of an agent's tool loop (a shared system prompt, a
  conversation growing by each call's new input and output) on one vLLM replica priced by a `terrazzo
  profile --engine vllm` file, with reuse (the pool keeps each call's KV, `kv_lanes.PoolKv`) and without;
  the ratio of iterations 2.. is what the live server is measured against (bench/bench_kv_sim_live.py).
- `ttft_ratio(profile, live)`: the same for the prompt sizes a live run sent (bench/bench_kv.py's hook).
- `routing_under_skew(...)`: 8 replicas, sessions drawn from a Zipf law, each with its own 2k-token
  context; cache-aware routing (kv.routing.Router with the residency affinity) against least loaded
  (the cache kept, routing blind to it): p99 TTFT, hit rate, calls per replica.

Both drive the simulator's own pool (`pools.LlmPool`, its engine's scheduler) and KV layer; nothing here
is a separate model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import kv_bytes_per_token
from terrazzo.cost.reuse_calibration import reuse_points
from terrazzo.sim.engine import Environment
from terrazzo.sim.front_end import FrontEnd, FrontEndCost
from terrazzo.sim.kv_lanes import PoolKv, Shared, call_chain
from terrazzo.sim.pools import LlmPool, Seq
from terrazzo.sim.schedulers import Scheduler, engine_scheduler
from terrazzo.sim.service_times import LlmCost


@dataclass(frozen=True)
class LoopShape:
    shared_tokens: int = 2048   # system prompt
    new_tokens: int = 256       # new input per call (the question, then each tool result)
    output_tokens: int = 32     # generated per call
    iterations: int = 3


@dataclass(frozen=True)
class LoopPrediction:
    reuse_ttft_s: list[float]
    cold_ttft_s: list[float]

    @property
    def ratio(self) -> float:
        """Mean TTFT without reuse ÷ with reuse, over the iterations after the first."""
        return float(np.mean(self.cold_ttft_s[1:]) / np.mean(self.reuse_ttft_s[1:]))


@dataclass
class ProfiledPool:
    cost: LlmCost
    sched: Scheduler
    kv_tokens: float
    kv_bytes_per_token: float
    frontend_s: float
    front: FrontEndCost | None = None  # the API server's core, when the profile measured it


def profiled_pool(profile: Path, client_sends_ids: bool = True) -> ProfiledPool:
    """The pool a vLLM profile describes: its cost on the profiled device (the catalog layers the profile),
    its engine's scheduler settings and front-end latency (read from the file's `engine_settings`), with a
    client on the API server's core that sends prompts as token ids (`client_sends_ids`) or as text."""
    import yaml

    doc = yaml.safe_load(profile.read_text())
    try:
        llm, st, device, engine = doc["llm"], doc["engine_settings"], doc["device"]["name"], str(doc["engine"])
        name, dtype, seqs = str(llm["name"]), str(llm["dtype"]), int(st["max_num_seqs"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{profile}: not a vLLM profile (llm, device, engine, engine_settings); write one with "
                         f"`terrazzo profile --engine vllm -o FILE`") from None
    if not engine.startswith("vllm"):
        raise ValueError(f"{profile}: a profile of engine {engine!r}, not vLLM")
    cat = load_catalog([], [profile])
    dep = deployment(cat, name, device, dtype, 1, 1)
    sched = engine_scheduler(EngineVersion(Engine.VLLM, engine.removeprefix("vllm-")), seqs,
                             max_batched_tokens=int(st["max_batched_tokens"]), block_size=int(st["block_size"]),
                             kv_blocks=int(st["kv_blocks"]))
    grid = reuse_points(cat, device, name, dtype)  # measured cached-prefix prefills, when profiled
    cost = LlmCost(dep, {(c[0], c[1]): t for c, t in grid.measured_s.items()} if grid is not None else None)
    return ProfiledPool(cost, sched, cost.kv_capacity_tokens(seqs), _kv_bytes(cat, name, dtype),
                        float(st.get("frontend_ms", 0.0)) / 1e3,
                        FrontEndCost.from_profile(doc.get("front_end"), client_on_core=True,
                                                  client_sends_ids=client_sends_ids))


def catalog_pool(cat: Catalog, model: str, device: str, dtype: str = "bf16", max_num_seqs: int = 64) -> ProfiledPool:
    """A vLLM replica of `model` on a catalog device (no front end): for a prediction without a profile."""
    engine = EngineVersion(Engine.VLLM, "0.32.0")
    sched = engine_scheduler(engine, max_num_seqs)
    cost = LlmCost(deployment(cat, model, device, dtype, 1, 1, engine=engine))
    return ProfiledPool(cost, sched, cost.kv_capacity_tokens(max_num_seqs), _kv_bytes(cat, model, dtype), 0.0)


def _kv_bytes(cat: Catalog, model: str, dtype: str) -> float:
    return kv_bytes_per_token(cat.model(model), dtype)


def predicted_loop(pool: Path | ProfiledPool, shape: LoopShape = LoopShape(), tool_s: float = 0.2) -> LoopPrediction:
    """TTFT per iteration of one loop at a time on the replica (a vLLM profile's, or `catalog_pool`), with
    and without reuse (each request its own system prompt, as the live run sends them), the front end's
    latency included."""
    prompts = [shape.shared_tokens + k * (shape.new_tokens + shape.output_tokens) + shape.new_tokens
               for k in range(shape.iterations)]
    return predicted_prompts(pool, shape.shared_tokens, prompts, shape.output_tokens, tool_s)


def predicted_prompts(pool: Path | ProfiledPool, shared_tokens: int, prompt_tokens: list[int], output_tokens: int,
                      tool_s: float = 0.2) -> LoopPrediction:
    """The same for calls of given prompt sizes: call k re-sends call k-1's prompt and its output, then new
    tokens (prompt_tokens[k] - prompt_tokens[k-1] - output_tokens of them); call 0 has `shared_tokens` in front."""
    pp = profiled_pool(pool) if isinstance(pool, Path) else pool
    news = [prompt_tokens[0] - shared_tokens] + [b - a - output_tokens for a, b in itertools.pairwise(prompt_tokens)]
    if min(news) < 1:
        raise ValueError(f"prompts {prompt_tokens} do not each re-send the previous one and its {output_tokens} "
                         f"output tokens behind a {shared_tokens}-token prefix")
    return LoopPrediction(_loop(pp, shared_tokens, news, output_tokens, True, tool_s),
                          _loop(pp, shared_tokens, news, output_tokens, False, tool_s))


def _loop(pp: ProfiledPool, shared_tokens: int, news: list[int], output_tokens: int, reuse: bool,
          tool_s: float) -> list[float]:
    env = Environment()
    pool = LlmPool(env, "pool", "aggregated", pp.cost, 1, 1, pp.sched.max_num_seqs, pp.sched.max_batched_tokens,
                   pp.kv_tokens, pp.sched)
    bs = pp.sched.block_size
    pkv = PoolKv(pool.lanes, bs, pool.lanes[0].blocks.capacity, pp.kv_bytes_per_token)
    front = FrontEnd(env, pool, pp.front) if pp.front is not None else None
    fixed_s = 0.0 if front is not None else pp.frontend_s
    shared = [Shared("system", shared_tokens)]
    history: list[tuple[int, int]] = []
    ttfts: list[float] = []

    def call(_: object) -> None:
        chain, prefix = call_chain(shared, "loop", history, bs)
        isl = prefix + news[len(ttfts)]
        seq = Seq(isl, output_tokens, done, None, env.now)
        look = pkv.route(chain, prefix, isl, env.now, reuse)
        seq.done = look.cached_tokens
        if front is not None:
            front.submit(seq, look.lane)
        else:
            pool.submit(seq, look.lane)

    def done(seq: Seq, lane: int) -> None:
        new = news[len(ttfts)]
        ttfts.append(seq.t_first - seq.t_call + fixed_s)
        if reuse:
            chain, _ = call_chain(shared, "loop", history, bs, (new, output_tokens))
            pkv.keep(lane, chain, env.now, "retain", pin=False)  # one loop at a time: nothing evicts it
        history.append((new, output_tokens))
        if len(ttfts) < len(news):
            env.schedule(tool_s, call, None)

    env.at(0.0, call, None)
    env.run()
    return ttfts


def ttft_ratio(profile: Path, live: dict[str, Any] | None = None, output_tokens: int = 32,
               client_sends_ids: bool = True) -> dict[str, Any]:
    """bench/bench_kv.py's hook: per live workload ({name: {prefix_tokens, prompt_tokens, ratio, ...}}), the
    simulated TTFT per iteration with and without reuse and the ratio over iterations ≥ 2, against the
    measured one. Priced by a vLLM profile of the tiny checkpoint on this machine kind (bench_kv.py makes
    one of its replicas' set-up). Without `live`: the 3-iteration loop of `LoopShape()`."""
    if not profile.is_file():
        return {"error": f"no vLLM profile at {profile}: run bench/bench_kv_sim_live.py (it records one)"}
    pp = profiled_pool(profile, client_sends_ids)
    work = live or {"tool loop": {"prefix_tokens": LoopShape().shared_tokens, "prompt_tokens": [
        LoopShape().shared_tokens + k * (LoopShape().new_tokens + output_tokens) + LoopShape().new_tokens
        for k in range(3)]}}
    out: dict[str, Any] = {"profile": str(profile)}
    for name, w in work.items():
        osl = int(w.get("output_tokens", output_tokens))
        pred = predicted_prompts(pp, int(w["prefix_tokens"]), [int(x) for x in w["prompt_tokens"]], osl)
        row: dict[str, Any] = {"predicted_ratio": pred.ratio, "predicted_ttft_on_s": pred.reuse_ttft_s,
                               "predicted_ttft_off_s": pred.cold_ttft_s}
        if w.get("ratio"):
            row["measured_ratio"] = float(w["ratio"])
            row["predicted_over_measured"] = pred.ratio / float(w["ratio"])
        out[name] = row
    return out


# routing under skew ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkewRun:
    cache_aware: bool
    p50_ttft_s: float
    p99_ttft_s: float
    hit_rate: float
    calls_per_replica: list[int]

    @property
    def max_over_mean_load(self) -> float:
        return max(self.calls_per_replica) / float(np.mean(self.calls_per_replica))


@dataclass(frozen=True)
class SkewSetup:
    replicas: int = 8
    sessions: int = 1000
    zipf_s: float = 1.0           # P(session i) ∝ 1 / i^s
    context_tokens: int = 2048    # each session's own context, in front of every request of it
    new_tokens: int = 256
    output_tokens: int = 128
    rate_per_s: float = 60.0
    duration_s: float = 120.0
    model: str = "llama-3-8b"
    dtype: str = "bf16"
    device: str = "h100-sxm"
    max_num_seqs: int = 64
    kv_blocks: int = 8192         # per replica, 16-token blocks (131k tokens: ~60 session contexts)
    seed: int = 0


def routing_under_skew(setup: SkewSetup, cache_aware: bool, catalog: Catalog | None = None) -> SkewRun:
    """Poisson requests at `rate_per_s`, each of a session drawn from Zipf(s) over `sessions`; a request's
    prompt is its session's context + its new tokens. The pool keeps KV (LRU in each replica's blocks) either
    way; `cache_aware` decides whether the router looks at it."""
    cat = catalog or load_catalog()
    engine = EngineVersion(Engine.VLLM, "0.32.0")
    sched = engine_scheduler(engine, setup.max_num_seqs, kv_blocks=setup.kv_blocks)
    cost = LlmCost(deployment(cat, setup.model, setup.device, setup.dtype, 1, 1, engine=engine))
    env = Environment()
    pool = LlmPool(env, "skew", "aggregated", cost, setup.replicas, 1, setup.max_num_seqs, sched.max_batched_tokens,
                   setup.kv_blocks * sched.block_size, sched)
    bs = sched.block_size
    pkv = PoolKv(pool.lanes, bs, setup.kv_blocks, _kv_bytes(cat, setup.model, setup.dtype), cache_aware=cache_aware)
    rng = np.random.default_rng(setup.seed)
    weights = 1.0 / np.arange(1, setup.sessions + 1) ** setup.zipf_s
    n = rng.poisson(setup.rate_per_s * setup.duration_s)
    arrivals = np.sort(rng.uniform(0.0, setup.duration_s, n))
    who = rng.choice(setup.sessions, size=n, p=weights / weights.sum())
    ttft = np.full(n, np.nan)

    def arrive(i: int) -> None:
        shared = [Shared(f"session-{who[i]}", setup.context_tokens)]
        chain, prefix = call_chain(shared, who[i], (), bs)
        isl = prefix + setup.new_tokens
        seq = Seq(isl, setup.output_tokens, finished, (i, chain), env.now)
        look = pkv.route(chain, prefix, isl, env.now, True)
        seq.done = look.cached_tokens
        pool.submit(seq, look.lane)

    def finished(seq: Seq, lane: int) -> None:
        i, chain = seq.arg
        ttft[i] = seq.t_first - seq.t_call
        pkv.keep(lane, chain, env.now, "retain", pin=False)

    for i, t in enumerate(arrivals):
        env.at(float(t), arrive, i)
    env.run()
    measured = ttft[arrivals >= 0.1 * setup.duration_s]  # past the cold start
    return SkewRun(cache_aware, float(np.percentile(measured, 50)), float(np.percentile(measured, 99)),
                   pkv.stats()["hit_rate"], list(pkv.calls_per_lane))
