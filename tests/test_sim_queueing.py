"""The simulator's primitives against queueing theory: M/D/1 (generator processes on a `Resource`),
M/M/c (the `ServerPool` every non-LLM op runs on) and M/M/1 processor sharing (a `Link`).

Each compares the simulated mean with the closed form using a 99 % confidence interval from batch
means (consecutive customers share a queue, batches of thousands are nearly independent). Seeds are
fixed, so a run is reproducible; the interval says how far another seed may land.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from terrazzo.sim.engine import Environment
from terrazzo.sim.links import Link
from terrazzo.sim.pools import ServerPool
from terrazzo.sim.resources import Resource
from terrazzo.sim.sampling import stream

T_995_19 = 2.861  # Student t, 99.5 % quantile, 19 degrees of freedom: a two-sided 99 % interval of 20 batches


def batch_ci(values: np.ndarray, warmup: int = 2000, batches: int = 20) -> tuple[float, float]:
    v = values[warmup:]
    means = np.array([b.mean() for b in np.array_split(v, batches)])
    return float(v.mean()), float(T_995_19 * means.std(ddof=1) / math.sqrt(batches))


def erlang_c_wait(c: int, lam: float, mu: float) -> float:
    """Mean wait in queue of M/M/c (Erlang C)."""
    a = lam / mu
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam)


def test_md1_mean_wait_matches_pollaczek_khinchine():
    lam, service_s, n = 0.7, 1.0, 120_000
    env = Environment()
    server = Resource(env, 1)
    gaps = stream(1, "md1").exponential(1 / lam, n)
    waits = np.zeros(n)

    def customer(i: int):
        arrived = env.now
        yield server.request()
        waits[i] = env.now - arrived
        yield env.timeout(service_s)
        server.release()

    def source():
        for i, gap in enumerate(gaps):
            yield env.timeout(gap)
            env.process(customer(i))

    env.process(source())
    env.run()
    rho = lam * service_s
    expected = rho * service_s / (2 * (1 - rho))  # Pollaczek–Khinchine with zero service variance
    mean, half = batch_ci(waits)
    assert abs(mean - expected) <= half, f"M/D/1 wait {mean:.4f} ± {half:.4f}, theory {expected:.4f}"
    assert half < 0.1 * expected  # the interval is tight enough to mean something


def test_mmc_mean_wait_matches_erlang_c_on_a_server_pool():
    c, lam, mu, n = 4, 3.2, 1.0, 150_000
    env = Environment()
    pool = ServerPool(env, "cpu", replicas=2, per_replica=2)  # 2 machines × 2 cores = 4 servers
    rng = stream(2, "mmc")
    gaps, services = rng.exponential(1 / lam, n), rng.exponential(1 / mu, n)
    t = np.cumsum(gaps)
    for i in range(n):
        env.at(t[i], lambda i: pool.submit(services[i], 0.0, lambda *_: None, None), i)
    env.run()
    waits = np.frombuffer(pool.visits.wait_s)
    expected = erlang_c_wait(c, lam, mu)
    mean, half = batch_ci(waits)
    assert abs(mean - expected) <= half, f"M/M/4 wait {mean:.4f} ± {half:.4f}, Erlang C {expected:.4f}"
    assert half < 0.15 * expected
    busy = pool.busy_s() / (c * env.now)
    assert busy == pytest.approx(lam / (c * mu), rel=0.02)


def test_processor_sharing_link_matches_mm1_ps_sojourn():
    """Transfers sharing a link's bandwidth: E[T] = (S/B)/(1 − ρ) + latency, whatever the size law."""
    lam, bw, mean_bytes, latency, n = 700.0, 1e9, 1e6, 5e-6, 120_000
    env = Environment()
    link = Link(env, "l", bw, latency)
    rng = stream(3, "ps")
    t, sizes = np.cumsum(rng.exponential(1 / lam, n)), rng.exponential(mean_bytes, n)
    sojourn = np.zeros(n)

    def done(i: int) -> None:
        sojourn[i] = env.now - t[i]

    for i in range(n):
        env.at(t[i], lambda i: link.send(sizes[i], done, i), i)
    env.run()
    rho = lam * mean_bytes / bw
    expected = mean_bytes / bw / (1 - rho) + latency
    mean, half = batch_ci(sojourn)
    assert abs(mean - expected) <= half, f"PS sojourn {mean:.6f} ± {half:.6f} s, theory {expected:.6f} s"
    assert link.busy_s() / env.now == pytest.approx(rho, rel=0.02)


def test_two_transfers_share_the_bandwidth_equally():
    env = Environment()
    link = Link(env, "l", 100.0, 0.5)
    ends: dict[str, float] = {}
    link.send(100.0, lambda k: ends.__setitem__(k, env.now), "a")  # alone: 1 s
    env.at(0.5, lambda _: link.send(25.0, lambda k: ends.__setitem__(k, env.now), "b"))
    env.run()
    # a has 50 B left at 0.5 s; both at 50 B/s until b's 25 B are done (t = 1.0), then a alone: 25 B in 0.25 s
    assert ends["b"] == pytest.approx(1.0 + 0.5)
    assert ends["a"] == pytest.approx(1.25 + 0.5)


def test_engine_runs_callbacks_in_time_then_fifo_order_and_processes_return_values():
    env = Environment()
    seen = []
    env.schedule(2.0, seen.append, "late")
    env.schedule(1.0, seen.append, "first")
    env.schedule(1.0, seen.append, "second")

    def proc():
        got = yield env.timeout(1.5, value="x")
        seen.append(got)
        return 42

    p = env.process(proc())
    env.run(until_s=10.0)
    assert seen == ["first", "second", "x", "late"]
    assert p.processed and p.value == 42
    assert env.now == 10.0
