"""Device pools: the stations a request's ops queue at.

- `ServerPool`: replicas × servers-per-replica with one FIFO queue, for every non-LLM op: a CPU's
  cores for host code, an event loop's concurrent waits for HTTP tools, one request at a time for a
  tensor op (embedding, ANN search, speech) on any device — the planner's model of each.
- `LlmPool`: LLM replicas in one of three roles. `prefill` batches prompts under a token budget;
  `decode` runs continuous batching; `aggregated` does both on one replica, a prefill iteration
  stalling the decode steps of the sequences already running (as engines without chunked prefill do).

Continuous batching without an event per token: between two changes of a replica's batch, every step
has the same batch, so the replica sets one timer at the end of the next k steps, k being the steps
until the first sequence finishes. A sequence that arrives meanwhile cancels it for the next step
boundary, where it joins. A sequence's finish is a step number (`end_step`) in a heap and the mean
context a running sum, so a span costs O(1) plus O(log batch) per sequence that finishes or joins.
Each span's step time is the cost model's at the current batch and the span's mean context (the
context grows one token per step).

A pipeline-parallel replica (pp stages) keeps pp micro-batches in flight; it is modelled as pp lanes
that step independently, which gives the pp× throughput the planner assumes.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import numpy as np

from terrazzo.sim.engine import Environment, Timer
from terrazzo.sim.service_times import LlmCost

Done = Callable[[Any, int], None]  # fn(arg, replica) when an item leaves its pool


class Visits:
    """Per visit: when it was submitted, how long it queued, how long it was served."""

    __slots__ = ("service_s", "submit_s", "wait_s")

    def __init__(self) -> None:
        self.submit_s, self.wait_s, self.service_s = array("d"), array("d"), array("d")

    def add(self, submit_s: float, wait_s: float, service_s: float) -> None:
        self.submit_s.append(submit_s)
        self.wait_s.append(wait_s)
        self.service_s.append(service_s)


class ServerPool:
    """`replicas` machines of `per_replica` servers each (cores, concurrent waits): one FIFO queue, like a
    `Resource` of replicas × per_replica servers (inlined: this is the simulator's hottest station).
    A job holds a server for `hold_s`, then waits `after_s` without one (an undecomposed tool's call)."""

    def __init__(self, env: Environment, name: str, replicas: int, per_replica: int) -> None:
        if replicas < 1 or per_replica < 1:
            raise ValueError(f"pool {name} needs at least one server, got {replicas} × {per_replica}")
        self.env, self.name, self.replicas = env, name, replicas
        self.capacity = replicas * per_replica
        self.users = 0
        self.queue: deque[tuple[float, float, float, Done, Any]] = deque()
        self.visits = Visits()
        self._busy_s = 0.0  # ∫ users dt
        self._last_s = env.now
        self._rr = 0

    def submit(self, hold_s: float, after_s: float, fn: Done, arg: Any) -> None:
        env = self.env
        now = env.now
        if self.users < self.capacity:
            self._busy_s += self.users * (now - self._last_s)
            self._last_s = now
            self.users += 1
            self.visits.add(now, 0.0, hold_s + after_s)
            env.schedule(hold_s, self._finish, (fn, arg, after_s))
        else:
            self.queue.append((now, hold_s, after_s, fn, arg))

    def _finish(self, job: tuple[Done, Any, float]) -> None:
        env = self.env
        now = env.now
        if self.queue:  # the server goes straight to the head of the queue
            t, hold, after, fn2, arg2 = self.queue.popleft()
            self.visits.add(t, now - t, hold + after)
            env.schedule(hold, self._finish, (fn2, arg2, after))
        else:
            self._busy_s += self.users * (now - self._last_s)
            self._last_s = now
            self.users -= 1
        self._rr = rr = (self._rr + 1) % self.replicas  # which machine sends the result on
        fn, arg, after_s = job
        if after_s > 0:
            env.schedule(after_s, self._deliver, (fn, arg, rr))
        else:
            fn(arg, rr)

    @staticmethod
    def _deliver(job: tuple[Done, Any, int]) -> None:
        job[0](job[1], job[2])

    def busy_s(self) -> float:
        return self._busy_s + self.users * (self.env.now - self._last_s)

    def occupancy_s(self) -> float:
        return self.busy_s()


class Seq:
    """One LLM call as the pools see it; `fn(seq, lane)` runs when the pool is done with it."""

    __slots__ = ("arg", "ctx0", "end_step", "fn", "isl", "kv", "osl", "t_admit", "t_call", "t_done", "t_first",
                 "t_submit")

    def __init__(self, isl: int, osl: int, fn: Done, arg: Any, now: float) -> None:
        self.isl, self.osl, self.fn, self.arg = isl, osl, fn, arg
        self.kv = isl + osl  # context reserved at admission: the whole sequence's KV
        self.t_call = self.t_submit = now
        self.t_admit = self.t_first = self.t_done = -1.0
        self.ctx0 = 0
        self.end_step = 0


class _Lane:
    __slots__ = ("busy_s", "ctx_base", "dt", "k", "kv_used", "n", "occ_s", "prefilling", "running", "steps", "t0",
                 "timer", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[Seq] = deque()
        self.running: list[tuple[int, int, Seq]] = []  # heap of (end step, tiebreak, seq)
        self.n = 0  # sequences decoding
        self.steps = 0  # decode steps done
        self.ctx_base = 0  # Σ (context at join − step at join): mean context = ctx_base / n + steps
        self.kv_used = 0
        self.t0 = -1.0  # start of the span in progress, -1 when idle
        self.dt = 0.0
        self.k = 0  # steps in the span in progress; 0 while a prefill runs
        self.prefilling: list[Seq] = []
        self.timer: Timer | None = None  # the end of the span in progress
        self.busy_s = 0.0
        self.occ_s = 0.0


class LlmPool:
    """`replicas` × `pp` lanes of one LLM deployment in role `mode` ("prefill", "decode", "aggregated").

    `max_batch`: prompts per prefill batch (prefill) or sequences decoding at once (decode, aggregated);
    `token_budget`: prompt tokens one prefill iteration takes (a longer prompt runs alone);
    `kv_tokens`: context tokens a lane can hold; a sequence reserves isl + osl when admitted.
    """

    def __init__(self, env: Environment, name: str, mode: str, cost: LlmCost, replicas: int, pp: int,
                 max_batch: int, token_budget: float, kv_tokens: float) -> None:
        if mode not in ("prefill", "decode", "aggregated"):
            raise ValueError(f"unknown LLM pool mode {mode!r}")
        self.env, self.name, self.mode, self.cost = env, name, mode, cost
        self.replicas, self.pp = replicas, pp
        self.max_batch, self.token_budget, self.kv_tokens = max(1, max_batch), token_budget, kv_tokens
        self.lanes = [_Lane() for _ in range(replicas * pp)]
        self.capacity = len(self.lanes)
        self.load = np.zeros(len(self.lanes), dtype=np.float64)
        self.visits = Visits()
        self._tiebreak = 0

    # routing ----------------------------------------------------------------------------------

    def submit(self, seq: Seq) -> None:
        """Route to the least-loaded lane (queued prompt tokens for prefill, sequences otherwise)."""
        r = int(self.load.argmin())
        lane = self.lanes[r]
        seq.t_submit = self.env.now
        lane.waiting.append(seq)
        if self.mode == "prefill":
            self.load[r] += seq.isl
            if lane.t0 < 0:
                self._prefill_start(r)
            return
        self.load[r] += 1
        if lane.t0 < 0:
            self._next(r)
        elif lane.k > 1 and self._admissible(lane):
            self._cut_span(r)

    def _admissible(self, lane: _Lane) -> bool:
        head = lane.waiting[0]
        return lane.n < self.max_batch and (lane.kv_used + head.kv <= self.kv_tokens or lane.n == 0)

    # prefill pools ----------------------------------------------------------------------------

    def _prefill_start(self, r: int) -> None:
        lane, now = self.lanes[r], self.env.now
        batch: list[Seq] = []
        tokens = sq = 0
        while lane.waiting and len(batch) < self.max_batch and (
                not batch or tokens + lane.waiting[0].isl <= self.token_budget):
            s = lane.waiting.popleft()
            s.t_admit = now
            batch.append(s)
            tokens += s.isl
            sq += s.isl * s.isl
        dt = self.cost.prefill_s(tokens, sq)
        lane.t0, lane.dt, lane.prefilling = now, dt, batch
        self.env.schedule(dt, self._prefill_end, r)

    def _prefill_end(self, r: int) -> None:
        lane, now = self.lanes[r], self.env.now
        batch, lane.prefilling = lane.prefilling, []
        lane.busy_s += lane.dt
        lane.occ_s += lane.dt * len(batch) / self.max_batch
        lane.t0 = -1.0
        for s in batch:
            s.t_first = s.t_done = now
            self.load[r] -= s.isl
            self.visits.add(s.t_submit, s.t_admit - s.t_submit, now - s.t_admit)
        if lane.waiting:
            self._prefill_start(r)
        for s in batch:
            s.fn(s, r)

    # decode and aggregated pools --------------------------------------------------------------

    def _join(self, lane: _Lane, s: Seq) -> None:
        """Start decoding `s` at the current step boundary: it holds its first token already."""
        s.ctx0 = s.isl + 1 - lane.steps
        s.end_step = lane.steps + s.osl - 1
        lane.ctx_base += s.ctx0
        lane.n += 1
        self._tiebreak += 1
        heappush(lane.running, (s.end_step, self._tiebreak, s))

    def _next(self, r: int) -> None:
        """At a step boundary of lane r: admit what fits, then start a prefill or a decode span."""
        lane, now = self.lanes[r], self.env.now
        if lane.waiting and self._admissible(lane):
            if self.mode == "decode":
                while lane.waiting and self._admissible(lane):
                    s = lane.waiting.popleft()
                    s.t_admit = now
                    lane.kv_used += s.kv
                    self._join(lane, s)
            else:  # aggregated: the newcomers' prefill runs first, the running sequences wait
                batch: list[Seq] = []
                tokens = sq = 0
                while lane.waiting and lane.n + len(batch) < self.max_batch and (
                        lane.kv_used + lane.waiting[0].kv <= self.kv_tokens or lane.n + len(batch) == 0) and (
                        not batch or tokens + lane.waiting[0].isl <= self.token_budget):
                    s = lane.waiting.popleft()
                    s.t_admit = now
                    lane.kv_used += s.kv
                    batch.append(s)
                    tokens += s.isl
                    sq += s.isl * s.isl
                dt = self.cost.prefill_s(tokens, sq)
                lane.t0, lane.dt, lane.k, lane.prefilling = now, dt, 0, batch
                lane.timer = self.env.timer(dt, self._span_end, r)
                return
        if lane.n == 0:
            lane.t0 = -1.0
            return
        k = max(1, lane.running[0][0] - lane.steps)
        if lane.waiting and self._admissible(lane):
            k = 1  # the rest of a token budget joins at the next boundary
        dt = self.cost.decode_step_s(lane.n, lane.ctx_base / lane.n + lane.steps + (k - 1) / 2)
        lane.t0, lane.dt, lane.k = now, dt, k
        lane.timer = self.env.timer(k * dt, self._span_end, r)

    def _cut_span(self, r: int) -> None:
        """A newcomer can join: end the span at the next step boundary instead."""
        lane = self.lanes[r]
        j = int((self.env.now - lane.t0) / lane.dt) + 1
        if j < lane.k:
            lane.k = j
            lane.timer.cancel()  # type: ignore[union-attr]
            lane.timer = self.env.timer(lane.t0 + j * lane.dt - self.env.now, self._span_end, r)

    def _span_end(self, r: int) -> None:
        lane = self.lanes[r]
        now = self.env.now
        span = now - lane.t0
        lane.busy_s += span
        finished: list[Seq] = []
        if lane.k == 0:  # a prefill iteration ended: its prompts have their first token
            batch, lane.prefilling = lane.prefilling, []
            lane.occ_s += span * (lane.n + len(batch)) / self.max_batch
            for s in batch:
                s.t_first = now
                if s.osl <= 1:
                    finished.append(s)
                else:
                    self._join(lane, s)
        else:
            lane.occ_s += span * lane.n / self.max_batch
            lane.steps += lane.k
            running = lane.running
            while running and running[0][0] <= lane.steps:
                s = heappop(running)[2]
                lane.n -= 1
                lane.ctx_base -= s.ctx0
                finished.append(s)
        for s in finished:
            s.t_done = now
            lane.kv_used -= s.kv
            self.load[r] -= 1
            self.visits.add(s.t_submit, s.t_admit - s.t_submit, now - s.t_admit)
        self._next(r)
        for s in finished:
            s.fn(s, r)

    # accounting -------------------------------------------------------------------------------

    def busy_s(self) -> float:
        now = self.env.now
        return sum(lane.busy_s + (now - lane.t0 if lane.t0 >= 0 else 0.0) for lane in self.lanes)

    def occupancy_s(self) -> float:
        """∫ (sequences in the batch ÷ max batch) dt, summed over lanes."""
        now = self.env.now
        total = 0.0
        for lane in self.lanes:
            total += lane.occ_s
            if lane.t0 >= 0:
                n = len(lane.prefilling) if self.mode == "prefill" else lane.n + len(lane.prefilling)
                total += (now - lane.t0) * n / self.max_batch
        return total

    def in_system(self) -> int:
        return sum(len(lane.waiting) + lane.n + len(lane.prefilling) for lane in self.lanes)
