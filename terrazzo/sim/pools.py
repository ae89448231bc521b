"""Device pools: the stations a request's ops queue at.

- `ServerPool`: replicas × servers-per-replica with one FIFO queue, for every non-LLM op: a CPU's
  cores for host code, an event loop's concurrent waits for HTTP tools, one request at a time for a
  tensor op (embedding, ANN search, speech) on any device — the planner's model of each.
- `LlmPool`: LLM replicas in one of three roles. `prefill` batches prompts under a token budget;
  `decode` runs continuous batching; `aggregated` does both on one replica. What a decode or aggregated
  replica runs in each iteration, and how it holds KV cache, is its engine's scheduler
  (`schedulers.py`: whole prompts first or chunked prefill; reserved or paged KV with preemption).

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
from typing import Any

import numpy as np

from terrazzo.sim.engine import Environment
from terrazzo.sim.schedulers import IterationCost, Lane, Scheduler

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


class Arrivals:
    """What an LLM pool was sent, in order: when, prompt and output tokens, tokens already cached, and
    whether a router chose the lane: enough to replay the pool alone on the same stream
    (verify/queue_replay.py)."""

    __slots__ = ("cached", "isl", "osl", "routed", "submit_s")

    def __init__(self) -> None:
        self.submit_s, self.isl, self.osl, self.cached = array("d"), array("d"), array("d"), array("d")
        self.routed = 0  # arrivals whose lane a router picked (KV affinity), not the least-loaded rule

    def add(self, seq: Seq, routed: bool) -> None:
        self.submit_s.append(seq.t_submit)
        self.isl.append(seq.isl)
        self.osl.append(seq.osl)
        self.cached.append(seq.done)
        self.routed += routed


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
    """One LLM call as the pools see it; `fn(seq, lane)` runs when the pool is done with it.

    `need` tokens are to be prefilled (the prompt; after a preemption, the prompt and what had been
    generated), `done` of them are computed; `out` tokens are generated. A decode pool receives the
    sequence with its KV (done = need) and its first token (out = 1)."""

    __slots__ = ("arg", "blocks", "ctx0", "done", "end_step", "fn", "gen", "isl", "kv", "need", "note", "osl", "out",
                 "preemptions", "state", "t_admit", "t_call", "t_done", "t_first", "t_submit")

    def __init__(self, isl: int, osl: int, fn: Done, arg: Any, now: float) -> None:
        self.isl, self.osl, self.fn, self.arg = isl, osl, fn, arg
        self.kv = isl + osl  # context reserved at admission under the `reserve` KV policy
        self.t_call = self.t_submit = now
        self.t_admit = self.t_first = self.t_done = -1.0
        self.ctx0 = 0
        self.end_step = 0
        self.need, self.done, self.out = isl, 0, 0
        self.blocks = 0  # paged KV blocks held while prefilling
        self.gen = 0  # bumped on preemption: stale heap and admission entries are skipped
        self.state = 0  # 0 waiting, 1 prefilling, 2 decoding, -1 finished
        self.preemptions = 0
        self.note: Any = None  # the caller's (the KV layer's record of where the call's prefix went)


class _PrefillLane:
    __slots__ = ("busy_s", "dt", "occ_s", "prefilling", "t0", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[Seq] = deque()
        self.t0 = -1.0  # start of the batch in progress, -1 when idle
        self.dt = 0.0
        self.prefilling: list[Seq] = []
        self.busy_s = 0.0
        self.occ_s = 0.0


class LlmPool:
    """`replicas` × `pp` lanes of one LLM deployment in role `mode` ("prefill", "decode", "aggregated").

    `max_batch`: prompts per prefill batch (prefill) or sequences running at once (decode, aggregated);
    `token_budget`: prompt tokens one prefill iteration takes (a longer prompt runs alone);
    `kv_tokens`: context tokens a lane can hold. Decode and aggregated lanes follow `sched`
    (schedulers.py); without one, today's policy: whole prompts first, whole context reserved.
    """

    def __init__(self, env: Environment, name: str, mode: str, cost: IterationCost, replicas: int, pp: int,
                 max_batch: int, token_budget: float, kv_tokens: float, sched: Scheduler | None = None) -> None:
        if mode not in ("prefill", "decode", "aggregated"):
            raise ValueError(f"unknown LLM pool mode {mode!r}")
        self.env, self.name, self.mode, self.cost = env, name, mode, cost
        self.replicas, self.pp = replicas, pp
        self.max_batch, self.token_budget, self.kv_tokens = max(1, max_batch), token_budget, kv_tokens
        self.sched = sched or Scheduler(max_num_seqs=self.max_batch, max_batched_tokens=int(token_budget))
        n = replicas * pp
        self.lanes: list[Any] = ([_PrefillLane() for _ in range(n)] if mode == "prefill"
                                 else [Lane(self.sched, cost, kv_tokens) for _ in range(n)])
        self.capacity = n
        self.load = np.zeros(n, dtype=np.float64)
        self.visits = Visits()
        self.arrivals: Arrivals | None = None  # set to record what the pool is sent (the planner's check)
        self.observer: Any = None  # told of every iteration's emitted tokens (front_end.FrontEnd), if set

    # routing ----------------------------------------------------------------------------------

    def submit(self, seq: Seq, lane_index: int | None = None) -> None:
        """Route to `lane_index` (the KV-aware router's pick, `kv_lanes.PoolKv`), else to the least-loaded
        lane (queued prompt tokens for prefill, sequences otherwise). A sequence whose prefix was found
        in KV arrives with `done` > 0: only `need - done` tokens are prefilled."""
        r = int(self.load.argmin()) if lane_index is None else lane_index
        lane = self.lanes[r]
        seq.t_submit = self.env.now
        if self.arrivals is not None:
            self.arrivals.add(seq, lane_index is not None)
        if self.mode == "prefill":
            lane.waiting.append(seq)
            self.load[r] += seq.isl - seq.done
            if lane.t0 < 0:
                self._prefill_start(r)
            return
        if self.mode == "decode":  # the KV and the first token arrived with it
            seq.done, seq.out = seq.need, max(seq.out, 1)
        lane.check_fits(seq)
        lane.waiting.append(seq)
        self.load[r] += 1
        if lane.t0 < 0:
            self._next(r)
        elif lane.span > 1 and lane.admissible():
            self._cut_span(r)

    # prefill pools ----------------------------------------------------------------------------

    def _prefill_start(self, r: int) -> None:
        lane, now = self.lanes[r], self.env.now
        batch: list[Seq] = []
        tokens = sq = 0
        while lane.waiting and len(batch) < self.max_batch and (
                not batch or tokens + lane.waiting[0].isl - lane.waiting[0].done <= self.token_budget):
            s = lane.waiting.popleft()
            s.t_admit = now
            batch.append(s)
            c = s.isl - s.done  # the new tokens; their attention also reads the cached `done`
            tokens += c
            sq += c * c + 2 * c * s.done
        dt = self.cost.prefill_s(tokens, sq)
        cached = sum(s.done for s in batch)
        if cached:
            dt += self.cost.context_read_s(cached, sum((s.isl - s.done) * s.done for s in batch))
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
            self.load[r] -= s.isl - s.done
            self.visits.add(s.t_submit, s.t_admit - s.t_submit, now - s.t_admit)
        if lane.waiting:
            self._prefill_start(r)
        for s in batch:
            s.fn(s, r)

    # decode and aggregated pools --------------------------------------------------------------

    def _next(self, r: int) -> None:
        """At an iteration boundary of lane r: let its scheduler compose the next iteration and time it."""
        lane = self.lanes[r]
        now = self.env.now
        got = lane.compose(now)
        if got is None:
            lane.t0 = -1.0
            return
        dt, k = got
        lane.t0, lane.dt, lane.span = now, dt, k
        lane.occupied = lane.n + len(lane.prefilling)
        lane.timer = self.env.timer(k * dt, self._span_end, r)

    def _cut_span(self, r: int) -> None:
        """A newcomer can join: end the span at the next step boundary instead."""
        lane = self.lanes[r]
        j = int((self.env.now - lane.t0) / lane.dt) + 1
        if j < lane.span:
            lane.span = j
            lane.timer.cancel()
            lane.timer = self.env.timer(lane.t0 + j * lane.dt - self.env.now, self._span_end, r)

    def _span_end(self, r: int) -> None:
        lane = self.lanes[r]
        now = self.env.now
        span = now - lane.t0
        lane.busy_s += span
        lane.occ_s += span * lane.occupied / self.max_batch
        obs = self.observer
        if obs is not None:
            decoding = lane.n if lane.k else 0
            completing = [s for s, c in lane.chunks if s.done + c >= s.need]
            fresh = [s for s in completing if s.t_first < 0]
            t0, dt, steps = lane.t0, lane.dt, lane.span
        finished = lane.complete(lane.span, now)
        for s in finished:
            s.t_done = now
            self.load[r] -= 1
            self.visits.add(s.t_submit, s.t_admit - s.t_submit, now - s.t_admit)
        if obs is not None:
            obs.on_iteration(r, t0, dt, steps, decoding, fresh, finished, decoding + len(completing))
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
                n = len(lane.prefilling) if self.mode == "prefill" else lane.occupied
                total += (now - lane.t0) * n / self.max_batch
        return total

    def in_system(self) -> int:
        if self.mode == "prefill":
            return sum(len(lane.waiting) + len(lane.prefilling) for lane in self.lanes)
        return sum(lane.in_system() for lane in self.lanes)

    def preemptions(self) -> int:
        return sum(getattr(lane, "preemptions", 0) for lane in self.lanes)
