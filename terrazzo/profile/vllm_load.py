"""Requests to a live OpenAI-compatible server with exact token counts, timed per output token.

Prompts: random words, turned into token ids by the server's own /tokenize and cut to the exact
length, sent as token ids to /v1/completions (so the engine sees exactly that many tokens, and no two
prompts share a prefix). Answers: `max_tokens` with `ignore_eos`, so each request generates exactly its
planned output. Streaming with vLLM's continuous usage statistics gives the cumulative token count of
every chunk, so token times stay exact even when the server coalesces tokens into one chunk.

Open loop (`open_loop`: each request at its arrival time) for Poisson and trace replays; closed loop
(`closed_loop`: N users, each sending the next request when its last one finishes) for capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WORDS = ("order", "status", "parcel", "late", "refund", "policy", "agent", "check", "reply", "weather", "paris",
         "voice", "search", "model", "token", "cache", "prefill", "decode", "batch", "queue", "answer", "speech")


@dataclass
class Timed:
    """One request: when it was sent, and (time, cumulative output tokens) per streamed chunk."""

    isl: int
    osl: int
    sent_s: float = 0.0
    marks: list[tuple[float, int]] = field(default_factory=list)
    error: str = ""

    @property
    def ttft_s(self) -> float:
        return self.marks[0][0] - self.sent_s

    @property
    def e2e_s(self) -> float:
        return self.marks[-1][0] - self.sent_s

    @property
    def tbt_s(self) -> float:
        return (self.marks[-1][0] - self.marks[0][0]) / (self.osl - 1) if self.osl > 1 else float("nan")


class PromptMaker:
    """Token-id prompts of exact lengths, built through the server's /tokenize."""

    def __init__(self, base_url: str, model: str, seed: int = 0) -> None:
        import httpx

        self.rng = np.random.default_rng(seed)
        text = " ".join(self.rng.choice(WORDS, size=4096))
        r = httpx.post(f"{base_url}/tokenize", json={"model": model, "prompt": text, "add_special_tokens": False},
                       timeout=60)
        r.raise_for_status()
        self.pool = np.asarray(r.json()["tokens"], dtype=np.int64)
        if len(self.pool) < 64:
            raise RuntimeError(f"/tokenize returned only {len(self.pool)} tokens")

    def ids(self, n: int) -> list[int]:
        """`n` ids: a random rotation of the tokenized text, repeated as needed (distinct from other prompts)."""
        start = int(self.rng.integers(len(self.pool)))
        idx = (start + np.arange(n)) % len(self.pool)
        out = self.pool[idx].copy()
        out[: min(8, n)] = self.rng.choice(self.pool, size=min(8, n))  # a distinct head: no shared prefix
        return [int(x) for x in out]


async def _one(client: Any, model: str, prompt: list[int], rec: Timed, t0: float) -> None:
    rec.sent_s = time.perf_counter() - t0
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=rec.osl, temperature=0.0, stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            extra_body={"ignore_eos": True, "min_tokens": rec.osl})
        async for chunk in stream:
            usage = chunk.usage
            got = usage.completion_tokens if usage is not None else None
            if got and (not rec.marks or got > rec.marks[-1][1]):
                rec.marks.append((time.perf_counter() - t0, int(got)))
    except Exception as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    if not rec.error and (not rec.marks or rec.marks[-1][1] != rec.osl):
        rec.error = f"expected {rec.osl} tokens, got {rec.marks[-1][1] if rec.marks else 0}"


def _client(base_url: str, concurrency: int) -> Any:
    """The openai client; its default connection pool (1,000 connections) holds every stream we open."""
    from openai import AsyncOpenAI

    if concurrency > 1000:
        raise ValueError(f"{concurrency} concurrent streams exceed the client's connection pool")
    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=600.0)


def metric_sums(base_url: str, names: Sequence[str]) -> dict[str, float]:
    """`<name>_sum` and `<name>_count` of vLLM's Prometheus histograms (summed over label sets)."""
    import httpx

    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in names:
            for suffix in ("_sum", "_count"):
                if line.startswith(name + suffix):
                    key = name + suffix
                    out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def counter(base_url: str, name: str) -> float:
    """A Prometheus counter `<name>_total` of the server, summed over its label sets."""
    import httpx

    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "_total{") or line.startswith(name + "_total "))


def _waiting(text: str) -> float:
    """vLLM's gauge of requests waiting for admission, from its Prometheus text."""
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_waiting"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def open_loop(base_url: str, model: str, requests: Sequence[tuple[float, list[int], int]],
              queue_every_s: float | None = None, queue: list[tuple[float, float]] | None = None) -> list[Timed]:
    """Send each (arrival_s, prompt ids, output tokens) at its arrival time; wait for all to finish. With
    `queue_every_s`, the server's waiting-requests gauge (/metrics) is sampled into `queue` as (t, n)."""
    async def sample(t0: float, stop: asyncio.Event) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=10.0) as http:
            while not stop.is_set():
                t = time.perf_counter() - t0
                r = await http.get(f"{base_url}/metrics")
                queue.append((t, _waiting(r.text)))  # type: ignore[union-attr]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), queue_every_s)

    async def main() -> list[Timed]:
        client = _client(base_url, 256)
        recs = [Timed(len(p), osl) for _, p, osl in requests]
        t0 = time.perf_counter()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(t0, stop)) if queue_every_s and queue is not None else None
        tasks = []
        for (at, prompt, _), rec in zip(requests, recs, strict=True):
            delay = at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, model, prompt, rec, t0)))
        await asyncio.gather(*tasks)
        stop.set()
        if sampler is not None:
            await sampler
        await client.close()
        return recs
    return asyncio.run(main())


def closed_loop(base_url: str, model: str, requests: Sequence[tuple[list[int], int]], users: int) -> tuple[
        list[Timed], float]:
    """`users` clients, each sending the next request as soon as its previous one finished; returns the
    records and the wall time of the whole run."""
    async def main() -> tuple[list[Timed], float]:
        client = _client(base_url, users)
        recs = [Timed(len(p), osl) for p, osl in requests]
        queue = list(range(len(requests)))[::-1]
        t0 = time.perf_counter()

        async def user() -> None:
            while queue:
                i = queue.pop()
                await _one(client, model, requests[i][0], recs[i], t0)
        await asyncio.gather(*(user() for _ in range(users)))
        wall = time.perf_counter() - t0
        await client.close()
        return recs, wall
    return asyncio.run(main())


def failures(recs: Sequence[Timed]) -> list[str]:
    return [r.error for r in recs if r.error]
