"""An LLM pool served by a real engine: N vLLM servers (replicas), each owned by a host (a local
process, or a Ray actor that owns the process), supervised and routed to from the orchestrator's event
loop through the `openai` client, so every call in flight reaches vLLM's continuous batching.

- Start: all replicas at once; the pool serves once each is ready (GET /health), its version read from
  GET /version.
- Supervise: a task checks every replica's process; one that died is marked unhealthy (the router skips
  it) and restarted, up to `max_restarts` times each.
- Route: the runtime's router (kv/routing.py): with a KV cache manager (runtime/kv_cache.py), to the
  replica holding the call's prefix unless it is overloaded, else least-loaded by calls in flight
  among healthy replicas; the call carries its scope's cache salt.
- Resend rule: a call whose replica failed before the call's first token is resent to another replica
  (nothing reached the caller, so nothing can be answered twice); after the first token it fails with
  WorkerLost saying how many tokens were delivered, and is not resent.
- Drain: stop taking calls, wait for those in flight, then stop the servers (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from terrazzo.catalog.engines import Engine, EngineVersion
from terrazzo.kv.prefix_keys import PrefixKey
from terrazzo.kv.routing import ReplicaLoad, Router
from terrazzo.runtime.engines.vllm_server import EngineLock, VllmProcess, VllmServerSpec
from terrazzo.runtime.executors.llm_engine import Generation
from terrazzo.runtime.executors.openai_client import OnDelta, OpenAICompatClient, UpstreamError
from terrazzo.runtime.failures import ExecutionError, Overloaded, WorkerLost

if TYPE_CHECKING:
    from terrazzo.runtime.kv_cache import PoolKv

Progress = Callable[[str, float, str], None]  # (replica name, seconds since launch, last log line)


class ReplicaHost(Protocol):
    """Owns one server process."""

    name: str

    async def start(self, timeout_s: float, on_progress: Progress | None) -> tuple[str, str, float]:
        """Launch and wait until ready: (base URL, engine version, seconds to ready)."""

    async def alive(self) -> bool: ...

    async def stop(self, grace_s: float) -> None: ...

    async def kill(self) -> None: ...

    async def pause(self) -> None:
        """SIGSTOP the server (fault drills: calls sent to it hang before their first token)."""


class LocalHost:
    """A server process on this machine; while it runs it holds this process's share of the EngineLock."""

    def __init__(self, name: str, spec: VllmServerSpec, python: Path, log_path: Path) -> None:
        self.name, self.spec, self.python, self.log_path = name, spec, python, log_path
        self.server: VllmProcess | None = None
        self._locked = False

    async def start(self, timeout_s: float, on_progress: Progress | None) -> tuple[str, str, float]:
        if not self._locked:
            self._locked = await asyncio.to_thread(EngineLock.acquire)
        server = self.server = VllmProcess(self.spec, self.python, self.log_path).launch()
        report = (lambda s, line: on_progress(self.name, s, line)) if on_progress else None
        try:
            await asyncio.to_thread(server.wait_ready, timeout_s, report)
        except BaseException:
            await asyncio.to_thread(server.kill)
            raise
        return server.url, server.version, server.ready_s or 0.0

    async def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop, grace_s)
        if self._locked:
            EngineLock.release()
            self._locked = False

    async def kill(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.kill)

    async def pause(self) -> None:
        import signal

        if self.server is not None:
            self.server._signal(signal.SIGSTOP)


class AttachedHost:
    """A server terrazzo did not start (one `deploy` started, a shared test server): it is used and
    health-checked, never restarted or stopped."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url.rstrip("/").removesuffix("/v1")

    async def start(self, timeout_s: float, on_progress: Progress | None) -> tuple[str, str, float]:
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                try:
                    if (await http.get(f"{self.url}/health")).status_code == 200:
                        version = (await http.get(f"{self.url}/version")).json().get("version", "")
                        return self.url, str(version), 0.0
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise ExecutionError(f"{self.name}: no vLLM server answers at {self.url}/health",
                                         fix="start it, or remove it from vllm.attach in the run config")
                await asyncio.sleep(1.0)

    async def alive(self) -> bool:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"{self.url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop(self, grace_s: float) -> None:
        """Not ours to stop."""

    async def kill(self) -> None:
        """Not ours to kill."""

    async def pause(self) -> None:
        raise ExecutionError(f"{self.name} is attached, not owned: it cannot be paused")


@dataclass
class Replica:
    index: int
    host: ReplicaHost
    url: str = ""
    version: str = ""
    client: OpenAICompatClient | None = None
    healthy: bool = False
    in_flight: int = 0
    work_tokens: float = 0.0                # of the calls in flight: uncached prompt + max_tokens (kv/routing.py)
    served: int = 0
    restarts: int = 0
    ready_s: float = 0.0
    active: set[str] = field(default_factory=set)   # request ids of the calls in flight here
    down: bool = False                      # out of restarts: stays out of the pool
    restarting: asyncio.Task | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class PoolCounts:
    calls: int = 0
    completed: int = 0
    failed: int = 0
    resent: int = 0                          # calls resent to another replica before their first token
    broken_after_first_token: int = 0
    restarts: int = 0


class EnginePool:
    def __init__(self, name: str, device: str, spec: VllmServerSpec, hosts: list[ReplicaHost], *,
                 router: Router | None = None, timeout_s: float = 120.0, start_timeout_s: float = 600.0,
                 max_restarts: int = 3, health_interval_s: float = 0.5, max_attempts: int = 3,
                 extra_body: dict[str, Any] | None = None, kv: PoolKv | None = None) -> None:
        self.name, self.device, self.spec = name, device, spec
        self.replicas = [Replica(i, h) for i, h in enumerate(hosts)]
        self.kv = kv                         # the KV cache manager: affinity, sessions, cache salts
        self.router = router or (kv.router if kv is not None else Router())
        self.timeout_s, self.start_timeout_s = timeout_s, start_timeout_s
        self.max_restarts, self.health_interval_s, self.max_attempts = max_restarts, health_interval_s, max_attempts
        self.extra_body = dict(extra_body or {})
        self.counts = PoolCounts()
        self.notes: list[str] = []
        self._draining = False
        self._supervisor: asyncio.Task | None = None
        self._changed = asyncio.Event()      # a replica became healthy or went down

    @property
    def identity(self) -> EngineVersion:
        return EngineVersion(Engine.VLLM, next((r.version for r in self.replicas if r.version), ""))

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self, on_progress: Progress | None = None) -> EnginePool:
        started = await asyncio.gather(*(self._start_replica(r, on_progress) for r in self.replicas),
                                       return_exceptions=True)
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            await self.stop(grace_s=5)
            raise ExecutionError(f"pool '{self.name}': {len(failed)} of {len(self.replicas)} vLLM replicas did "
                                 f"not start: {failed[0]}", pool=self.name,
                                 fix="see the engine log; check the checkpoint loads in vLLM")
        self._supervisor = asyncio.create_task(self._supervise())
        return self

    async def _start_replica(self, r: Replica, on_progress: Progress | None) -> None:
        r.url, r.version, r.ready_s = await r.host.start(self.start_timeout_s, on_progress)
        if r.client is not None:
            await r.client.aclose()
        r.client = OpenAICompatClient(f"{r.url}/v1", timeout_s=self.timeout_s, retries=0, token_ids=True)
        r.healthy = True
        r.ready.set()
        self._changed.set()

    async def _supervise(self) -> None:
        """Find dead servers and restart them; the router skips a replica while it restarts."""
        while not self._draining:
            for r in self.replicas:
                if r.healthy and not await r.host.alive():
                    self._lost(r, "its server process exited")
            await asyncio.sleep(self.health_interval_s)

    def _lost(self, r: Replica, why: str) -> None:
        if not r.healthy or self._draining:
            return
        r.healthy = False
        r.ready.clear()
        self._changed.set()
        if self.kv is not None:
            self.kv.replica_lost(r.index)  # its cache died with it: route nothing to it for a prefix it held
        if r.restarts >= self.max_restarts:
            r.down = True
            self.notes.append(f"pool '{self.name}' replica {r.index}: {why}; out of restarts ({self.max_restarts})")
            return
        self.notes.append(f"pool '{self.name}' replica {r.index}: {why}; restarting")
        r.restarting = asyncio.create_task(self._restart(r))

    async def _restart(self, r: Replica) -> None:
        r.restarts += 1
        self.counts.restarts += 1
        with contextlib.suppress(Exception):
            await r.host.kill()  # whatever is left of it
        try:
            await self._start_replica(r, None)
        except Exception as exc:
            r.down = True
            self._changed.set()
            self.notes.append(f"pool '{self.name}' replica {r.index} did not restart: {exc}")

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Take no new calls; wait (bounded) until the calls in flight are answered."""
        self._draining = True
        deadline = time.monotonic() + timeout_s
        while any(r.in_flight for r in self.replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self, grace_s: float = 15.0) -> None:
        self._draining = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for r in self.replicas:
            if r.restarting is not None and not r.restarting.done():
                r.restarting.cancel()
        await asyncio.gather(*(r.restarting for r in self.replicas if r.restarting), return_exceptions=True)
        await asyncio.gather(*(r.host.stop(grace_s) for r in self.replicas), return_exceptions=True)
        for r in self.replicas:
            r.healthy = False
            if r.client is not None:
                await r.client.aclose()

    # --- calls ------------------------------------------------------------------------------------
    def loads(self) -> list[ReplicaLoad]:
        return [ReplicaLoad(r.index, r.in_flight, r.healthy, r.work_tokens) for r in self.replicas]

    async def _pick(self, tried: set[int], key: PrefixKey | None = None) -> tuple[Replica, float]:
        """The router's replica among healthy ones not yet tried, and the prompt tokens the call will compute
        there (its blocks the replica does not hold; 0 without a KV manager); waits (bounded) while others
        restart."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            loads = self.loads()
            i = self.router.pick_replica(loads, key.encode() if key is not None else None, exclude=frozenset(tried))
            if i is not None:
                uncached = 0.0
                if self.kv is not None and key is not None:
                    placed = self.kv.placed(key, [r for r in loads if r.replica not in tried], i)
                    uncached = float(placed.match.missed_blocks * self.kv.settings.block_tokens)
                return self.replicas[i], uncached
            waiting = [r for r in self.replicas if not r.down and (r.index not in tried or r.restarting)]
            if not waiting or time.monotonic() > deadline:
                raise WorkerLost(f"no vLLM replica of pool '{self.name}' could take the call "
                                 f"({len(tried)} tried)", pool=self.name,
                                 fix="see the engine logs for why the servers died")
            if tried and all(r.index in tried for r in waiting):
                tried.clear()  # only replicas that failed it are left: try them again once restarted
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    async def generate(self, prompt: str, *, max_tokens: int, on_delta: OnDelta | None = None,
                       request_id: str = "", key: PrefixKey | None = None) -> tuple[Generation, Replica, int]:
        """One completion on the router's replica (the one holding `key`'s prefix, else the least loaded):
        (generation, replica that answered, attempts)."""
        if self._draining:
            raise Overloaded(f"pool '{self.name}' is draining", pool=self.name, fix="retry on another server")
        self.counts.calls += 1
        tried: set[int] = set()
        extra = {**self.extra_body, **(self.kv.request_extra(key) if self.kv is not None and key else {})}
        for attempt in itertools.count(1):
            r, uncached = await self._pick(tried, key)
            assert r.client is not None
            work = uncached + max_tokens  # until the call ends: the runtime does not see vLLM's progress
            r.in_flight += 1
            r.work_tokens += work
            r.active.add(request_id)
            try:
                gen = await r.client.acomplete(prompt, model=self.spec.served_name, max_tokens=max_tokens,
                                               on_delta=on_delta, resends=0, extra_body=extra)
            except UpstreamError as exc:
                if not await r.host.alive():
                    self._lost(r, "its server process exited")
                if exc.tokens_seen:
                    self.counts.failed += 1
                    self.counts.broken_after_first_token += 1
                    raise WorkerLost(f"vLLM replica {r.index} of pool '{self.name}' failed after streaming "
                                     f"{exc.tokens_seen} tokens ({exc.reason}); not resent, so no token is "
                                     "answered twice", pool=self.name,
                                     fix="retry the request; the pool restarts the replica") from None
                if not exc.safe_to_resend or attempt >= self.max_attempts:
                    self.counts.failed += 1
                    raise ExecutionError(f"vLLM replica {r.index} of pool '{self.name}': {exc.reason}",
                                         pool=self.name, fix=exc.fix) from None
                tried.add(r.index)
                self.counts.resent += 1
                continue
            finally:
                r.in_flight -= 1
                r.work_tokens -= work
                r.active.discard(request_id)
            r.served += 1
            self.counts.completed += 1
            return gen, r, attempt
        raise AssertionError("unreachable")

    # --- drills and reports -------------------------------------------------------------------------
    async def kill_replica(self, index: int) -> None:
        """Fault injection: SIGKILL one replica's server (the supervisor restarts it)."""
        await self.replicas[index].host.kill()

    async def pause_replica(self, index: int) -> None:
        await self.replicas[index].host.pause()

    def stats(self) -> dict[str, Any]:
        kv = {"kv": self.kv.stats()} if self.kv is not None else {}
        return {**vars(self.counts), **kv, "engine": str(self.identity), "device": self.device,
                "workers": len(self.replicas),
                "replicas": [{"index": r.index, "url": r.url, "healthy": r.healthy, "in_flight": r.in_flight,
                              "served": r.served, "restarts": r.restarts, "ready_s": round(r.ready_s, 1)}
                             for r in self.replicas]}
