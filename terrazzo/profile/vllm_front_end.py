"""The CPU a vLLM API server (and the load generator beside it) spends per request, per engine step and
per streamed token: the job sizes of the simulator's front-end stage (terrazzo/sim/front_end.py).

Measured by CPU-time accounting, not by latency: the API server's own process (/proc/<pid>/stat
utime + stime; vLLM's engine core is a child process, whose time is not in it) and this process's CPU
(the openai client streaming the answers), over closed-loop runs at several concurrencies and answer
lengths. The engine steps whose outputs the server handled are vLLM's own count
(`vllm:iteration_tokens_total`, observed once per output batch). A least-squares fit, non-negative,
splits server CPU = request · requests + prompt · prompt tokens + step · steps + token · tokens, and
client CPU = request · requests + prompt · prompt tokens + token · tokens. Runs at several concurrencies make
steps and tokens independent (one stream: a token per step; sixteen: sixteen per step), and two prompt lengths
the per-prompt-token costs: the client sends prompts as token ids, and serialising a 1,024-id prompt took it
four times the CPU of a 16-id one (12.7 against 3.1 ms per request, measured), so a long prompt's TTFT carries
its client's cost too.

The part of a lone request's front-end latency that is not this CPU (HTTP and ZMQ hops, wake-ups) is
what remains of each lone prefill point's front-end latency after the CPU on its path at its prompt length
(median over the points): `latency_ms`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from terrazzo.profile import vllm_load as L

STEPS = "vllm:iteration_tokens_total"
# (concurrent streams, output tokens each, prompt tokens): one stream separates request from token cost,
# many streams the per-step cost from the per-token one, long prompts the per-prompt-token cost (the
# server parses and checks the prompt; the engine, another process, prefills it).
GRID = ((1, 2, 16), (1, 48, 16), (4, 48, 16), (16, 2, 16), (16, 48, 16), (1, 2, 1024), (4, 2, 1024))


@dataclass(frozen=True)
class FrontEndRun:
    concurrency: int
    requests: int
    prompt_tokens: int
    output_tokens: int
    engine_steps: int
    server_cpu_s: float
    client_cpu_s: float
    wall_s: float


@dataclass(frozen=True)
class FrontEndFit:
    request_cpu_ms: float
    prompt_token_cpu_ms: float
    step_cpu_ms: float
    token_cpu_ms: float
    client_request_cpu_ms: float
    client_token_cpu_ms: float
    latency_ms: float
    runs: tuple[FrontEndRun, ...]
    source: str = "measured:vllm-profile"
    client_prompt_token_cpu_ms: float = 0.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, not its children), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(base_url: str, model: str, pid: int, pm: L.PromptMaker, concurrency: int, osl: int, isl: int,
             requests: int) -> FrontEndRun:
    """`requests` requests by `concurrency` closed-loop users; the CPU each side spent on them."""
    reqs = [(pm.ids(isl), osl) for _ in range(requests)]
    before = L.metric_sums(base_url, (STEPS,))  # scraped outside the window: /metrics costs server CPU too
    s0, c0, t0 = process_cpu_s(pid), time.process_time(), time.perf_counter()
    recs, _ = L.closed_loop(base_url, model, reqs, concurrency)
    s1, c1, t1 = process_cpu_s(pid), time.process_time(), time.perf_counter()
    after = L.metric_sums(base_url, (STEPS,))
    bad = L.failures(recs)
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(recs)} requests failed: {bad[0]}")
    steps = round(after[STEPS + "_count"] - before[STEPS + "_count"])
    return FrontEndRun(concurrency, requests, requests * isl, requests * osl, steps, s1 - s0, c1 - c0, t1 - t0)


def fit(runs: list[FrontEndRun], lone: list[tuple[int, float]]) -> FrontEndFit:
    """Non-negative least squares over the runs, each row weighted by 1/requests (relative errors); `lone`:
    the one-request prefill points' (prompt tokens, front-end latency in s)."""
    w = np.array([1.0 / r.requests for r in runs])
    a = np.array([[r.requests, r.prompt_tokens, r.engine_steps, r.output_tokens] for r in runs],
                 dtype=float) * w[:, None]
    server, _ = nnls(a, np.array([r.server_cpu_s for r in runs]) * w)
    client, _ = nnls(a[:, [0, 1, 3]], np.array([r.client_cpu_s for r in runs]) * w)
    # a lone request of the profile's one-request prefill points: its intake, one step, one token, both sides
    fixed = server[0] + server[2] + server[3] + client[0] + client[2]
    rest = [fe - fixed - isl * (server[1] + client[1]) for isl, fe in lone]
    return FrontEndFit(request_cpu_ms=server[0] * 1e3, prompt_token_cpu_ms=server[1] * 1e3,
                       step_cpu_ms=server[2] * 1e3, token_cpu_ms=server[3] * 1e3,
                       client_request_cpu_ms=client[0] * 1e3, client_token_cpu_ms=client[2] * 1e3,
                       client_prompt_token_cpu_ms=client[1] * 1e3,
                       latency_ms=max(0.0, float(np.median(rest)) if rest else 0.0) * 1e3, runs=tuple(runs))


def measure(base_url: str, model: str, pid: int, pm: L.PromptMaker, lone: list[tuple[int, float]], rounds: int,
            say: Callable[[str], None] = lambda _: None) -> FrontEndFit:
    """`rounds` passes over GRID (each pass in the same order: the shared machine's slow spells spread)."""
    runs = []
    for r in range(rounds):
        for conc, osl, isl in GRID:
            # short answers: more requests, so their CPU spans enough clock ticks (10 ms each)
            runs.append(run_once(base_url, model, pid, pm, conc, osl, isl, max(24 if osl <= 2 else 8, 2 * conc)))
        say(f"  front end round {r + 1}/{rounds}")
    return fit(runs, lone)
