"""The API server in front of an LLM engine (vLLM's OpenAI server), as one CPU core that every request
and every streamed token pass through.

Why a FIFO single server: vLLM's API server is one Python process running one asyncio event loop (the
engine core is a separate process). Parsing a request, building the engine request and handing it over
ZMQ is one callback; each engine step's outputs come back as one message that the output handler task
detokenises and pushes to the requests' queues, and each request's streaming generator then formats
its SSE chunk and writes it. asyncio runs ready callbacks in the order they became ready, each to its
next `await`, without preemption: a FIFO queue of CPU work on one core. A load generator on the same
core (this benchmark's one-machine set-up) adds its own parsing of every chunk to the same core's work,
in the same order, so its CPU is added to the same server's job sizes (`FrontEndCost.with_client`).

Jobs: a request's intake (`request_cpu_s` + `prompt_token_cpu_s` per prompt token, on arrival, before
the engine sees it), and one job per
engine step that emits tokens (`step_cpu_s` + `token_cpu_s` per token the step emits). A token reaches
the client when its step's job is done; so a saturated core delays TTFT, stretches E2E, bunches tokens
and caps throughput, while the engine (its own core) runs on. `latency_s` is the per-request delay
that is not this core's work (HTTP and ZMQ hops, wake-ups), added once on the way in.

FIFO on one core needs no event per job: a job's departure is max(arrival, previous departure) + work,
known at arrival. The engine's decode spans (k identical steps, one simulator event) are fed in as k
periodic jobs in closed form; a request arriving mid-span first flushes the steps already done, so
jobs enter the queue in time order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from terrazzo.sim.engine import Environment
from terrazzo.sim.pools import LlmPool, Seq


@dataclass(frozen=True)
class FrontEndCost:
    """CPU seconds on the front end's core per request, per engine step that emits, per streamed token."""

    request_cpu_s: float
    step_cpu_s: float
    token_cpu_s: float
    latency_s: float = 0.0
    source: str = ""
    prompt_token_cpu_s: float = 0.0  # the server parsing and checking the prompt, per token

    def __post_init__(self) -> None:
        if min(self.request_cpu_s, self.step_cpu_s, self.token_cpu_s, self.latency_s, self.prompt_token_cpu_s) < 0:
            raise ValueError(f"front-end costs must be ≥ 0: {self}")

    def with_client(self, request_cpu_s: float, token_cpu_s: float, source: str,
                    prompt_token_cpu_s: float = 0.0) -> FrontEndCost:
        """The same core also runs a client that spends these per request, per prompt token it sends and
        per token it receives."""
        return replace(self, request_cpu_s=self.request_cpu_s + request_cpu_s,
                       prompt_token_cpu_s=self.prompt_token_cpu_s + prompt_token_cpu_s,
                       token_cpu_s=self.token_cpu_s + token_cpu_s, source=f"{self.source}; client: {source}")

    def capacity_tokens_per_s(self, batch: int) -> float:
        """Tokens/s the core can stream when every step emits `batch` tokens (requests' intake aside)."""
        return batch / (self.step_cpu_s + batch * self.token_cpu_s)

    @classmethod
    def from_profile(cls, section: Mapping[str, Any] | None, client_on_core: bool,
                     client_sends_ids: bool = True) -> FrontEndCost | None:
        """From a vLLM profile's `front_end` section (plain data: the simulator does not read profiles
        itself); None when the profile has none. `client_on_core`: the load generator shares the API
        server's core (one machine runs both), so its CPU per request and token is added, and per prompt
        token when it sends token-id prompts through the openai client as the profile's load generator does
        (`client_sends_ids`: that client's request transform walks every id, 21.8 ms of CPU for 2,600 ids
        measured, against 0.25 ms for httpx's own JSON body; a text prompt is one string, which the server
        tokenises, its per-prompt-token cost standing for that)."""
        if not section:
            return None
        src = str(section.get("source", "measured:vllm-profile"))
        cost = cls(request_cpu_s=float(section["request_cpu_ms"]) / 1e3, step_cpu_s=float(section["step_cpu_ms"]) / 1e3,
                   token_cpu_s=float(section["token_cpu_ms"]) / 1e3,
                   latency_s=float(section.get("latency_ms", 0.0)) / 1e3, source=f"API server: {src}",
                   prompt_token_cpu_s=float(section.get("prompt_token_cpu_ms", 0.0)) / 1e3)
        if client_on_core:
            ids_ms = float(section.get("client_prompt_token_cpu_ms", 0.0)) if client_sends_ids else 0.0
            cost = cost.with_client(float(section["client_request_cpu_ms"]) / 1e3,
                                    float(section["client_token_cpu_ms"]) / 1e3, src, ids_ms / 1e3)
        return cost


class _Core:
    """One core serving jobs FIFO: `free_at` is when the work queued so far is done."""

    __slots__ = ("busy_s", "free_at")

    def __init__(self) -> None:
        self.free_at = 0.0
        self.busy_s = 0.0

    def job(self, at: float, work: float) -> float:
        self.free_at = max(at, self.free_at) + work
        self.busy_s += work
        return self.free_at

    def periodic(self, first: float, period: float, m: int, work: float) -> float:
        """m jobs of `work` arriving at first, first + period, …; the last one's departure. FIFO gives
        d_m = max(F + m·w, max_i (a_i + (m − i + 1)·w)), linear in i, so the max is at an end."""
        if m <= 0:
            return self.free_at
        last = first + (m - 1) * period
        self.free_at = max(self.free_at + m * work, first + m * work, last + work)
        self.busy_s += m * work
        return self.free_at

    def backlog_s(self, now: float) -> float:
        return max(0.0, self.free_at - now)


class FrontEnd:
    """An LLM pool behind one API-server core per lane (a vLLM replica runs its own API server).

    `submit(seq)` is a request arriving over HTTP: its intake is queued on the core of the lane it will
    go to, and it reaches the engine when that job is done (+ `latency_s`). The pool reports every
    iteration (`LlmPool.observer`); the tokens it emitted are queued, and `t_first`/`t_done` of the
    sequences become the times their tokens leave the core: what a client sees."""

    def __init__(self, env: Environment, pool: LlmPool, cost: FrontEndCost) -> None:
        if pool.mode == "prefill":
            raise ValueError("a front end streams tokens: it sits before a decode or aggregated pool")
        self.env, self.pool, self.cost = env, pool, cost
        self.cores = [_Core() for _ in pool.lanes]
        self._flushed = [(-1.0, 0)] * len(pool.lanes)  # (t0 of the span, steps of it already queued)
        self._fn: dict[int, Any] = {}
        pool.observer = self

    # requests in ------------------------------------------------------------------------------

    def submit(self, seq: Seq, lane: int | None = None) -> None:
        """`lane`: the replica a KV-aware router picked (else the least loaded, as the pool routes)."""
        env, pool = self.env, self.pool
        r = int(pool.load.argmin()) if lane is None else lane
        self._flush(r, env.now)
        ready = self.cores[r].job(env.now, self.cost.request_cpu_s + seq.isl * self.cost.prompt_token_cpu_s)
        self._fn[id(seq)] = seq.fn
        seq.fn = self._engine_done
        env.at(ready + self.cost.latency_s, self._to_engine, (seq, r))

    def _to_engine(self, job: tuple[Seq, int]) -> None:
        seq, r = job
        self.pool.submit(seq, r)

    def _engine_done(self, seq: Seq, r: int) -> None:
        fn = self._fn.pop(id(seq))
        seq.fn = fn
        self.env.at(seq.t_done, self._deliver, (fn, seq, r))

    @staticmethod
    def _deliver(job: tuple[Any, Seq, int]) -> None:
        fn, seq, r = job
        fn(seq, r)

    # tokens out -------------------------------------------------------------------------------

    def _flush(self, r: int, now: float) -> None:
        """Queue the decode steps of lane r's span in progress that have ended by `now`."""
        lane = self.pool.lanes[r]
        if lane.t0 < 0 or lane.k == 0 or lane.span <= 1:
            return
        t0, done = self._flushed[r]
        if t0 != lane.t0:
            done = 0
        ended = min(int((now - lane.t0) / lane.dt), lane.span - 1)  # the span's last step is queued at its end
        if ended > done:
            self._steps(r, lane.t0 + (done + 1) * lane.dt, lane.dt, ended - done, lane.n)
        self._flushed[r] = (lane.t0, max(ended, done))

    def _steps(self, r: int, first: float, period: float, m: int, tokens: int) -> float:
        c = self.cost
        return self.cores[r].periodic(first, period, m, c.step_cpu_s + tokens * c.token_cpu_s)

    def on_iteration(self, r: int, t0: float, dt: float, steps: int, decoding: int, firsts: list[Seq],
                     finished: list[Seq], emitted_last: int) -> None:
        """Lane r ended an iteration of `steps` steps of `dt` from `t0`; `decoding` sequences emitted a
        token at each step, the last step emitted `emitted_last` (decodes plus prompts that completed)."""
        _, done = self._flushed[r] if self._flushed[r][0] == t0 else (t0, 0)
        if steps - 1 > done:
            self._steps(r, t0 + (done + 1) * dt, dt, steps - 1 - done, decoding)
        self._flushed[r] = (-1.0, 0)
        if emitted_last == 0:
            return
        out = self._steps(r, t0 + steps * dt, dt, 1, emitted_last)
        for s in firsts:
            s.t_first = out
        for s in finished:
            s.t_done = out
            if s.osl <= 1:
                s.t_first = out

    def busy_s(self) -> float:
        return sum(c.busy_s for c in self.cores)
