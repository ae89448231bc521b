"""One LLM pool driven by a list of requests (arrival time, prompt tokens, output tokens): what a live
engine sees from a load generator, simulated. The sim-to-real benchmark replays the very arrivals it
sent to a live server; the Vidur scenario drives one replica with a synthetic stream.

Per request it records TTFT (arrival to first token, queueing included), E2E (arrival to last token),
TBT (mean gap between output tokens) and the queue it found on arrival (sequences waiting for
admission): by PASTA, for Poisson arrivals the time-average queue.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from terrazzo.sim.engine import Environment
from terrazzo.sim.front_end import FrontEnd
from terrazzo.sim.pools import LlmPool, Seq


@dataclass
class PoolRun:
    arrival_s: np.ndarray
    isl: np.ndarray
    osl: np.ndarray
    ttft_s: np.ndarray
    e2e_s: np.ndarray
    tbt_s: np.ndarray  # NaN for one-token answers
    queue_at_arrival: np.ndarray  # sequences waiting for admission when each request arrived
    queue_sampled: np.ndarray  # sequences waiting at each of `sample_at`
    preemptions: int
    wall_s: float
    events: int
    end_s: float  # simulated time when the last request finished
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def throughput_rps(self) -> float:
        """Finished requests per second over the span from the first arrival to the last finish."""
        span = self.end_s - float(self.arrival_s.min())
        return len(self.arrival_s) / span if span > 0 else math.nan

    @property
    def output_tokens_per_s(self) -> float:
        span = self.end_s - float(self.arrival_s.min())
        return float(self.osl.sum()) / span if span > 0 else math.nan


def waiting(pool: LlmPool) -> int:
    return sum(len(lane.waiting) for lane in pool.lanes)


def replay(pool: LlmPool, requests: Sequence[tuple[float, int, int]], sample_at: Sequence[float] = (),
           front: FrontEnd | None = None, users: int | None = None) -> PoolRun:
    """Submit each (arrival_s, isl, osl) at its time to `pool` (built on its own Environment) and run to
    the last finish; the queue is also sampled at the times `sample_at`. With `front`, requests enter
    through that API-server stage and TTFT/E2E/TBT are when its tokens leave it (what a client sees).
    With `users`, a closed loop instead: that many clients, each sending the next request (in order)
    when its previous one is delivered; the arrival times given are ignored."""
    env: Environment = pool.env
    n = len(requests)
    done: list[Seq | None] = [None] * n
    queue = np.zeros(n)
    order = sorted(range(n), key=lambda i: requests[i][0])
    sent = np.array([r[0] for r in requests], dtype=float)
    nxt = [min(users, n)] if users else [n]

    def finished(seq: Seq, _lane: int) -> None:
        done[seq.arg] = seq
        if users and nxt[0] < n:
            nxt[0] += 1
            arrive(nxt[0] - 1)

    def arrive(i: int) -> None:
        sent[i] = env.now
        queue[i] = waiting(pool)
        _, isl, osl = requests[i]
        seq = Seq(int(isl), int(osl), finished, i, env.now)
        if front is None:
            pool.submit(seq)
        else:
            front.submit(seq)

    for i in order if not users else range(nxt[0]):
        env.at(requests[i][0] if not users else 0.0, arrive, i)
    sampled = np.zeros(len(sample_at))

    def sample(j: int) -> None:
        sampled[j] = waiting(pool)

    for j, t in enumerate(sample_at):
        env.at(t, sample, j)
    t0 = time.perf_counter()
    env.run()
    wall = time.perf_counter() - t0
    missing = [i for i, s in enumerate(done) if s is None]
    if missing:
        raise RuntimeError(f"{len(missing)} requests never finished (first: #{missing[0]})")
    seqs: list[Seq] = done  # type: ignore[assignment]
    ttft = np.array([s.t_first - s.t_call for s in seqs])
    e2e = np.array([s.t_done - s.t_call for s in seqs])
    tbt = np.array([(s.t_done - s.t_first) / (s.osl - 1) if s.osl > 1 else math.nan for s in seqs])
    return PoolRun(
        arrival_s=sent, isl=np.array([r[1] for r in requests]),
        osl=np.array([r[2] for r in requests]), ttft_s=ttft, e2e_s=e2e, tbt_s=tbt, queue_at_arrival=queue,
        queue_sampled=sampled, preemptions=pool.preemptions(), wall_s=wall, events=env.events,
        end_s=max(s.t_done for s in seqs),
    )
