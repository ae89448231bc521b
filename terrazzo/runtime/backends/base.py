"""Pools of workers behind one interface; `local` and `ray` differ only in how a worker is started,
called and killed (`WorkerHandle`). This class owns what must be identical on both: bounded queues,
one op at a time per worker, per-op timeouts, and retry of an op whose worker died.

Exactly-once: each submitted op has one future, resolved once; a retried op is re-queued (ahead of
new work) only after its worker is known dead, so no two workers ever hold the same attempt.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.errors import ExecutionError, OpTimeout, Overloaded, WorkerLost
from terrazzo.runtime.placement import PoolSpec
from terrazzo.runtime.worker import OpCall, OpResult


class WorkerHandle(ABC):
    name: str

    @abstractmethod
    async def run(self, call: OpCall) -> OpResult:
        """Execute on the worker; raises WorkerLost if it dies, ExecutionError if the op fails."""

    @abstractmethod
    def kill(self) -> None: ...

    @abstractmethod
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None:
        return None


@dataclass
class _Item:
    call: OpCall
    timeout_s: float
    future: asyncio.Future
    attempts: int = 0
    workers: list[str] = field(default_factory=list)


@dataclass
class PoolStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    timeouts: int = 0
    restarts: int = 0


class _Pool:
    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self.queue: asyncio.PriorityQueue[tuple[int, int, _Item]] = asyncio.PriorityQueue()
        self.workers: list[WorkerHandle | None] = [None] * spec.workers
        self.busy: list[_Item | None] = [None] * spec.workers
        self.slots: list[asyncio.Task] = []
        self.stats = PoolStats()

    @property
    def depth(self) -> int:
        return self.queue.qsize()


class PoolBackend(ABC):
    name = "base"

    def __init__(self, config: RunConfig, pools: dict[str, PoolSpec]) -> None:
        self.config = config
        self.pools = {n: _Pool(s) for n, s in pools.items()}
        self._seq = itertools.count()
        self.on_queue_depth: Callable[[str, int], None] = lambda pool, depth: None
        self.warmup: dict[str, list[dict[str, Any]]] = {}  # pool -> executors each worker loads before work
        self._stopping = False

    @abstractmethod
    async def spawn(self, spec: PoolSpec, index: int) -> WorkerHandle: ...

    async def _shutdown_backend(self) -> None:  # noqa: B027 - optional hook
        """Backend-specific teardown after all workers are killed."""

    async def start(self) -> None:
        """Start every worker of every pool concurrently, then one dispatch task per worker slot."""
        starts = []
        for pool in self.pools.values():
            for i in range(pool.spec.workers):
                starts.append(self._start_worker(pool, i))
        await asyncio.gather(*starts)
        for pool in self.pools.values():
            pool.slots = [asyncio.create_task(self._slot(pool, i)) for i in range(pool.spec.workers)]

    async def _start_worker(self, pool: _Pool, index: int) -> WorkerHandle:
        """Spawn and warm a worker (load its checkpoints/index) so the first op does not pay for loading."""
        handle = await self.spawn(pool.spec, index)
        if self.warmup.get(pool.spec.name):
            await handle.run(OpCall("warmup", "warmup", "warmup", self.warmup[pool.spec.name]))
        pool.workers[index] = handle
        return handle

    async def submit(self, pool_name: str, call: OpCall, timeout_s: float) -> OpResult:
        pool = self.pools.get(pool_name)
        if pool is None:
            raise ExecutionError(f"no pool '{pool_name}'", op=call.op, fix="the plan and the running pools disagree")
        if pool.depth >= self.config.queue_depth:
            raise Overloaded(f"pool queue full ({pool.depth} waiting)", op=call.op, pool=pool_name,
                             fix="retry after a short wait, or give the pool more replicas")
        item = _Item(call, timeout_s, asyncio.get_running_loop().create_future())
        pool.stats.submitted += 1
        pool.queue.put_nowait((1, next(self._seq), item))
        self.on_queue_depth(pool_name, pool.depth)
        return await item.future

    async def _slot(self, pool: _Pool, index: int) -> None:
        """One worker's dispatch loop: take the oldest op (retries first), run it, settle its future."""
        while not self._stopping:
            _, _, item = await pool.queue.get()
            self.on_queue_depth(pool.spec.name, pool.depth)
            if item.future.done():
                continue
            worker = pool.workers[index]
            try:
                if worker is None or not worker.alive():
                    pool.stats.restarts += 1
                    worker = await self._start_worker(pool, index)
            except Exception as exc:  # a worker that cannot start fails the op, with the reason
                self._fail(pool, item, ExecutionError(f"cannot start worker: {exc}", op=item.call.op,
                                                      pool=pool.spec.name, fix="check the pool's executor setup"))
                continue
            pool.busy[index] = item
            item.workers.append(worker.name)
            call = replace(item.call, attempt=item.attempts)
            try:
                result = await asyncio.wait_for(worker.run(call), item.timeout_s)
            except TimeoutError:
                pool.stats.timeouts += 1
                worker.kill()  # a hung op cannot be cancelled inside the worker; replace the worker
                pool.workers[index] = None
                self._fail(pool, item, OpTimeout(f"timed out after {item.timeout_s:g} s on {worker.name}",
                                                 op=item.call.op, pool=pool.spec.name,
                                                 fix=f"raise op_timeouts_s['{item.call.op}'] in the run config, "
                                                     "or fix the slow tool/endpoint"))
            except WorkerLost as exc:
                pool.workers[index] = None
                item.attempts += 1
                if item.attempts >= self.config.max_attempts:
                    self._fail(pool, item, WorkerLost(f"worker died on all {item.attempts} attempts "
                                                      f"({', '.join(item.workers)}): {exc.reason}",
                                                      op=item.call.op, pool=pool.spec.name,
                                                      fix="see the worker's stderr; the op kills its worker"))
                else:
                    pool.stats.retried += 1
                    pool.queue.put_nowait((0, next(self._seq), item))  # ahead of new work
            except ExecutionError as exc:
                self._fail(pool, item, exc)
            except asyncio.CancelledError:
                if not item.future.done():
                    item.future.set_exception(ExecutionError("runtime stopped", op=item.call.op, pool=pool.spec.name))
                raise
            else:
                pool.stats.completed += 1
                if not item.future.done():
                    item.future.set_result(result)
            finally:
                pool.busy[index] = None

    def _fail(self, pool: _Pool, item: _Item, exc: Exception) -> None:
        pool.stats.failed += 1
        if not item.future.done():
            item.future.set_exception(exc)

    def kill_worker(self, pool_name: str, index: int) -> int | None:
        """Fault injection for tests and drills: SIGKILL one worker; returns its pid (local backend)."""
        w = self.pools[pool_name].workers[index]
        if w is None:
            return None
        pid = w.pid
        w.kill()
        return pid

    def busy_index(self, pool_name: str) -> int | None:
        for i, it in enumerate(self.pools[pool_name].busy):
            if it is not None:
                return i
        return None

    def stats(self) -> dict[str, dict[str, Any]]:
        return {n: {**vars(p.stats), "workers": p.spec.workers, "device": p.spec.device} for n, p in self.pools.items()}

    async def stop(self) -> None:
        self._stopping = True
        for pool in self.pools.values():
            for t in pool.slots:
                t.cancel()
            for _, _, item in list(pool.queue._queue):  # type: ignore[attr-defined]
                if not item.future.done():
                    item.future.set_exception(ExecutionError("runtime stopped before the op ran", op=item.call.op))
        for pool in self.pools.values():
            await asyncio.gather(*pool.slots, return_exceptions=True)
            for w in pool.workers:
                if w is not None:
                    w.kill()
        await self._shutdown_backend()
