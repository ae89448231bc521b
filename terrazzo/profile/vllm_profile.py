"""`terrazzo profile --engine vllm`: prefill and decode of a live vLLM CPU server, under its own scheduler.

- prefill point (isl, batch): `batch` requests of exactly `isl` prompt tokens and one output token, sent
  together; the engine's own prefill time per request (vLLM's `request_prefill_time_seconds`, from the
  step that schedules it to its first token). What the client sees beyond the engine's queue and
  prefill (HTTP, the API server, hand-offs to the engine process) is the front-end latency, measured on
  the one-request points and kept beside the fit (`engine_settings.frontend_ms`): it is per request,
  not per engine iteration, so it is not folded into the prefill's fixed cost.
- decode point (batch, context): `batch` requests with `context`-token prompts generating together; the
  step time is the engine's decode time per token (vLLM's `request_decode_time_seconds`, engine-core
  timestamps from first to last token, over the tokens after the first), and the point's context the
  prompt plus half the tokens generated. The client's stream is not used: a busy API server delivers
  tokens in bursts, so its gaps are not the engine's steps.

- reuse prefill point (new, cached), when the server caches prefixes: a `cached`-token prompt is sent
  once, then the same prefix followed by `new` fresh tokens; the engine's prefill time of the second,
  whose cache hits (vLLM's prefix_cache_hits counter) must equal the prefix.
- front end: the API server's CPU per request, per engine step and per streamed token, and the load
  generator's, by CPU-time accounting at several concurrencies (vllm_front_end.py), after the grid.

Points are measured in rounds that visit every point in a new random order (as the built-in engine's
profile does), so a slow spell on the shared machine spreads over all points. Then points whose repeats
disagree (interquartile range over a quarter of the median) are measured again, up to twice the rounds in
all, so that one slow spell does not set a point's median. The fit is the same roofline fit; the profile
records the engine and its version.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from terrazzo.errors import ProfileError
from terrazzo.profile import vllm_load as L
from terrazzo.profile.measure import timing
from terrazzo.profile.profile_file import DecodePoint, LlmShape, PrefillPoint, ReusePrefillPoint
from terrazzo.profile.vllm_front_end import FrontEndFit
from terrazzo.profile.vllm_front_end import measure as measure_front_end
from terrazzo.profile.vllm_server import VllmServer, VllmSettings

DECODE_TOKENS = 64  # tokens each decode stream generates; the window is where all streams decode
PREFILL_S, QUEUE_S = "vllm:request_prefill_time_seconds", "vllm:request_queue_time_seconds"
DECODE_S = "vllm:request_decode_time_seconds"  # engine-core timestamps, first token to last
HITS = "vllm:prefix_cache_hits"  # prompt tokens the engine served from its prefix cache (a counter)
REUSE_POINTS = ((64, 1024), (256, 1024), (256, 2048))  # (new, cached) tokens, when prefix caching is on
# A point is settled when its middle repeats agree within this share of their median. On a 2-core machine
# a point whose few repeats met a busy spell is priced by that spell: one 2,048-token prefill measured
# 119-418 ms over three repeats (median 200 ms, while the same prefill ran in 128-182 ms minutes later),
# and the simulator then carried that median into every long prompt.
SETTLED_SPREAD = 0.25


@dataclass
class VllmMeasured:
    shape: LlmShape
    prefill: list[PrefillPoint]
    decode: list[DecodePoint]
    reuse_prefill: list[ReusePrefillPoint]
    version: str
    settings: VllmSettings
    kv_blocks: int
    startup_s: float
    frontend_s: float  # a request's time outside the engine: HTTP, API server, ZMQ hand-offs (median)
    front_end: FrontEndFit | None = None  # the API server's (and client's) CPU per request, step, token


def checkpoint_shape(checkpoint: Path, name: str, random_weights: bool) -> LlmShape:
    """The model's shape from its config.json, the parameter count from its safetensors headers."""
    from safetensors import safe_open

    cfg = json.loads((checkpoint / "config.json").read_text())
    params = 0
    for f in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            params += sum(int(np.prod(st.get_slice(k).get_shape())) for k in st.keys())  # noqa: SIM118
    heads = int(cfg["num_attention_heads"])
    return LlmShape(name=name, checkpoint=str(checkpoint), random_weights=random_weights, dtype="fp32",
                    layers=int(cfg["num_hidden_layers"]), hidden=int(cfg["hidden_size"]), heads=heads,
                    kv_heads=int(cfg.get("num_key_value_heads") or heads),
                    head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads), ffn=int(cfg["intermediate_size"]),
                    vocab=int(cfg["vocab_size"]), params=params, max_context=int(cfg["max_position_embeddings"]))


def measure(checkpoint: Path, name: str, random_weights: bool, isl: tuple[int, ...], prefill_batch: tuple[int, ...],
            decode_batch: tuple[int, ...], decode_context: tuple[int, ...], warmup: int, repeats: int, seed: int,
            log: Path, settings: VllmSettings | None = None, python: str | None = None,
            server: VllmServer | None = None, eager: bool = False,
            say: Callable[[str], None] = lambda _: None) -> VllmMeasured:
    """Start a server on `checkpoint` (or use `server`, already running on it) and measure the grid."""
    shape = checkpoint_shape(checkpoint, name, random_weights)
    longest = max((*isl, *(c + DECODE_TOKENS for c in decode_context)), default=64)
    if server is not None:
        settings = server.settings
    settings = settings or VllmSettings(max_num_seqs=max(max(decode_batch, default=1), max(prefill_batch, default=1)),
                                        max_model_len=min(shape.max_context, max(2048, longest + 16)),
                                        extra=["-O0"] if eager else [])
    if longest + 1 > settings.max_model_len:
        raise ProfileError(f"a point needs {longest + 1} tokens of context; the server allows "
                           f"{settings.max_model_len}", field="--isl/--decode-context",
                           fix="measure shorter prompts or contexts")
    if server is not None:
        return _measure_on(server, shape, checkpoint, isl, prefill_batch, decode_batch, decode_context, warmup,
                           repeats, seed, say)
    say(f"starting vLLM on {checkpoint} (log: {log}) ...")
    with VllmServer(checkpoint, settings, log, python) as srv:
        return _measure_on(srv, shape, checkpoint, isl, prefill_batch, decode_batch, decode_context, warmup, repeats,
                           seed, say)


def _measure_on(srv: VllmServer, shape: LlmShape, checkpoint: Path, isl: tuple[int, ...],
                prefill_batch: tuple[int, ...], decode_batch: tuple[int, ...], decode_context: tuple[int, ...],
                warmup: int, repeats: int, seed: int, say: Callable[[str], None]) -> VllmMeasured:
    settings = srv.settings
    prefill_pts = [(i, b) for i in isl for b in prefill_batch if i * b <= settings.max_num_batched_tokens]
    decode_pts = [(b, c) for b in decode_batch for c in decode_context if b <= settings.max_num_seqs]
    say(f"vLLM {srv.version} ready in {srv.startup_s:.0f} s ({srv.kv_tokens:,} KV tokens); measuring "
        f"{len(prefill_pts)} prefill and {len(decode_pts)} decode points, {repeats} rounds")
    pm = L.PromptMaker(srv.base_url, str(checkpoint), seed)
    model = str(checkpoint)

    frontend: list[tuple[int, float]] = []  # one-request prefill points: (prompt tokens, time outside the engine)

    def prefill(i: int, b: int) -> float:
        before = L.metric_sums(srv.base_url, (PREFILL_S, QUEUE_S))
        recs = L.open_loop(srv.base_url, model, [(0.0, pm.ids(i), 1) for _ in range(b)])
        _raise(recs)
        after = L.metric_sums(srv.base_url, (PREFILL_S, QUEUE_S))
        n = after[PREFILL_S + "_count"] - before[PREFILL_S + "_count"]
        engine = (after[PREFILL_S + "_sum"] - before[PREFILL_S + "_sum"]) / n
        queued = (after[QUEUE_S + "_sum"] - before[QUEUE_S + "_sum"]) / n
        if b == 1:
            frontend.append((i, recs[0].ttft_s - engine - queued))
        return engine

    def decode(b: int, c: int) -> tuple[list[float], float]:
        before = L.metric_sums(srv.base_url, (DECODE_S,))
        recs = L.open_loop(srv.base_url, model, [(0.0, pm.ids(c), DECODE_TOKENS) for _ in range(b)])
        _raise(recs)
        after = L.metric_sums(srv.base_url, (DECODE_S,))
        n = after[DECODE_S + "_count"] - before[DECODE_S + "_count"]
        step = (after[DECODE_S + "_sum"] - before[DECODE_S + "_sum"]) / (n * (DECODE_TOKENS - 1))
        return [step], DECODE_TOKENS / 2

    caching = "--enable-prefix-caching" in settings.extra
    bs = settings.block_size
    reuse_pts = [(n, k) for n, k in REUSE_POINTS if caching and k % bs == 0 and n + k < settings.max_model_len]

    def reuse(n: int, k: int) -> tuple[float, int]:
        """A k-token prefix sent once (cached), then the prefix + n new tokens: the second prefill's engine
        time and the tokens the engine reports it served from cache."""
        prefix = pm.ids(k)
        _raise(L.open_loop(srv.base_url, model, [(0.0, prefix + pm.ids(16), 1)]))
        before = L.metric_sums(srv.base_url, (PREFILL_S,))
        hits0 = L.counter(srv.base_url, HITS)
        _raise(L.open_loop(srv.base_url, model, [(0.0, prefix + pm.ids(n), 1)]))
        after = L.metric_sums(srv.base_url, (PREFILL_S,))
        return after[PREFILL_S + "_sum"] - before[PREFILL_S + "_sum"], round(L.counter(srv.base_url, HITS) - hits0)

    points: list[tuple[str, int, int]] = [("prefill", i, b) for i, b in prefill_pts] + [
        ("decode", b, c) for b, c in decode_pts] + [("reuse", n, k) for n, k in reuse_pts]
    reused: dict[tuple[int, int], list[float]] = {p: [] for p in reuse_pts}
    pre: dict[tuple[int, int], list[float]] = {p: [] for p in prefill_pts}
    dec: dict[tuple[int, int], list[float]] = {p: [] for p in decode_pts}
    made: dict[tuple[int, int], list[float]] = {p: [] for p in decode_pts}

    def one(kind: str, a: int, b: int, keep: bool) -> None:
        if kind == "prefill":
            t = prefill(a, b)
            if keep:
                pre[(a, b)].append(t)
        elif kind == "reuse":
            t, hit = reuse(a, b)
            if hit != b:
                raise ProfileError(f"a {b}-token prefix was sent twice but the engine served {hit} tokens of "
                                   "it from cache", fix="check that the server runs with prefix caching on")
            if keep:
                reused[(a, b)].append(t)
        else:
            steps, m = decode(a, b)
            if keep:
                dec[(a, b)].extend(steps)
                made[(a, b)].append(m)

    def samples(kind: str, a: int, b: int) -> list[float]:
        return {"prefill": pre, "reuse": reused, "decode": dec}[kind][(a, b)]

    rng = random.Random(seed)
    for r in range(warmup + repeats):
        rng.shuffle(points)
        for kind, a, b in points:
            one(kind, a, b, r >= warmup)
        if r >= warmup:
            say(f"  round {r - warmup + 1}/{repeats}")
    for r in range(repeats):  # settle: points whose repeats disagree get more, up to twice as many in all
        noisy = [p for p in points if unsettled(samples(*p))]
        if not noisy:
            break
        rng.shuffle(noisy)
        for kind, a, b in noisy:
            one(kind, a, b, True)
        say(f"  settle round {r + 1}: {len(noisy)} points whose repeats spread over {SETTLED_SPREAD:.0%}")
    lone_s = float(np.median([fe for _, fe in frontend])) if frontend else 0.0
    proc = getattr(srv.process, "proc", None)
    front = (measure_front_end(srv.base_url, model, proc.pid, pm, frontend, min(3, max(2, repeats)), say)
             if proc is not None else None)
    return VllmMeasured(
        shape=shape,
        prefill=[PrefillPoint(isl=i, batch=b, timing=timing(v)) for (i, b), v in sorted(pre.items())],
        decode=[DecodePoint(batch=b, context=round(float(c) + float(np.mean(made[(b, c)]))), timing=timing(v))
                for (b, c), v in sorted(dec.items())],
        reuse_prefill=[ReusePrefillPoint(new=n, cached=k, timing=timing(v)) for (n, k), v in sorted(reused.items())],
        version=srv.version, settings=settings, kv_blocks=srv.kv_blocks, startup_s=srv.startup_s,
        frontend_s=lone_s, front_end=front)


def unsettled(xs: list[float]) -> bool:
    """Whether the repeats' interquartile range exceeds SETTLED_SPREAD of their median (with two or three
    repeats that is their whole range: one slow repeat is enough to ask for more)."""
    if len(xs) < 2:
        return False
    q1, med, q3 = np.percentile(xs, [25, 50, 75]) if len(xs) > 3 else (min(xs), float(np.median(xs)), max(xs))
    return bool(q3 - q1 > SETTLED_SPREAD * med)


def _raise(recs: list[L.Timed]) -> None:
    bad = L.failures(recs)
    if bad:
        raise ProfileError(f"{len(bad)} of {len(recs)} requests to vLLM failed: {bad[0]}",
                           fix="read the server log; the server may have run out of memory")
