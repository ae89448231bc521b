"""Pools of workers behind one interface; `local` and `ray` differ only in how a worker is started,
called and killed (`WorkerHandle`). This class owns what must be identical on both: bounded queues,
one op at a time per worker, per-op timeouts, and retry of an op whose worker died.

Exactly-once: each submitted op has one future, resolved once; a retried op is re-queued (ahead of
new work) only after its worker is known dead, so no two workers ever hold the same attempt.

KV affinity: an op may name its `home` (the KV scope of an LLM call, runtime/kv_cache.py). The worker
that last ran that home keeps the scope's KV (the built-in engine), so a slot that takes such an op
hands it to that worker instead, unless that worker carries more than `kv.affinity_slack` ops (then
it runs where it was taken: least loaded wins, as in the Router).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.failures import ExecutionError, OpTimeout, Overloaded, WorkerLost
from terrazzo.runtime.pool_layout import PoolSpec
from terrazzo.runtime.worker import OpCall, OpResult


class _Timeout(Exception):
    def __init__(self, op: str, timeout_s: float) -> None:
        super().__init__(op)
        self.op, self.timeout_s = op, timeout_s


class WorkerHandle(ABC):
    name: str

    @abstractmethod
    async def run(self, call: OpCall, on_event: Callable[[dict], None] | None = None) -> OpResult:
        """Execute on the worker; raises WorkerLost if it dies, ExecutionError if the op fails. With
        `call.stream`, `on_event` gets the worker's events (on the event loop) before the result."""

    @abstractmethod
    def kill(self) -> None: ...

    @abstractmethod
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None:
        return None

    reports_progress = False

    def progress(self) -> tuple[int, float] | None:
        """(index of the op it is running within the current call, its start on time.monotonic()), for
        fused calls; None when the handle cannot tell (then a fused call gets one summed deadline)."""
        return None


@dataclass(frozen=True)
class Steps:
    """The granular ops one submission runs (one, or a fused segment), with each op's timeout and
    whether it may run again after its worker died (pure ops yes; tools only when idempotent)."""

    ops: tuple[str, ...]
    timeouts_s: tuple[float, ...]
    retryable: tuple[bool, ...]


@dataclass
class _Item:
    call: OpCall
    timeout_s: float
    future: asyncio.Future
    on_event: Callable[[dict], None] | None = None
    steps: Steps | None = None
    attempts: int = 0
    workers: list[str] = field(default_factory=list)
    home: str | None = None   # KV scope: run it on the worker that holds the scope's KV, if not overloaded


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
        self.slots: list[asyncio.Future] = []
        self.stats = PoolStats()
        self.retiring = 0  # slots asked to retire by resize() that have not yet (see _RETIRE)
        self.markers = 0   # _RETIRE markers in the queue (not ops)
        self.homes: OrderedDict[str, int] = OrderedDict()     # KV scope -> the slot that last ran it
        self.handed: list[deque[_Item]] = [deque() for _ in range(spec.workers)]  # ops handed to a slot
        self.wake: list[asyncio.Event] = [asyncio.Event() for _ in range(spec.workers)]
        self.getting: dict[int, asyncio.Future] = {}  # slot -> its pending queue.get (done: it holds an op)
        self.handoffs = 0  # ops run on their home worker after another slot took them

    @property
    def depth(self) -> int:
        return self.queue.qsize() - self.markers


_RETIRE: Any = object()  # queue marker: the idle slot that takes it retires (resize down)


class PoolBackend(ABC):
    name = "base"

    def __init__(self, config: RunConfig, pools: dict[str, PoolSpec]) -> None:
        self.config = config
        self.pools = {n: _Pool(s) for n, s in pools.items()}
        self._seq = itertools.count()
        self.on_queue_depth: Callable[[str, int], None] = lambda pool, depth: None
        self.warmup: dict[str, list[dict[str, Any]]] = {}  # pool -> executors each worker loads before work
        self._stopping = False
        self._resize_lock = asyncio.Lock()

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

    async def submit(self, pool_name: str, call: OpCall, timeout_s: float,
                     on_event: Callable[[dict], None] | None = None, *, retryable: bool = True,
                     steps: Steps | None = None, home: str | None = None) -> OpResult:
        """Queue `call` on the pool and wait for its result. `retryable`: may it run again if its worker
        dies mid-op (False for side effects that must not happen twice). `steps`: for a fused call, its
        ops with their own timeouts and retry flags (then `timeout_s` and `retryable` are ignored)."""
        pool = self.pools.get(pool_name)
        if pool is None:
            raise ExecutionError(f"no pool '{pool_name}'", op=call.op, fix="the plan and the running pools disagree")
        if pool.depth >= self.config.queue_depth:
            raise Overloaded(f"pool queue full ({pool.depth} waiting)", op=call.op, pool=pool_name,
                             fix="retry after a short wait, or give the pool more replicas")
        steps = steps or Steps((call.op,), (timeout_s,), (retryable,))
        item = _Item(call, sum(steps.timeouts_s), asyncio.get_running_loop().create_future(), on_event, steps,
                     home=home)
        pool.stats.submitted += 1
        pool.queue.put_nowait((1, next(self._seq), item))
        self.on_queue_depth(pool_name, pool.depth)
        return await item.future

    async def _slot(self, pool: _Pool, index: int) -> None:
        """One worker's dispatch loop: take the oldest op (retries first), run it, settle its future."""
        while not self._stopping:
            start_error = None
            if pool.workers[index] is None:
                self._requeue_handed(pool, index)  # a live worker takes them while this one (re)starts
                start_error = await self._ensure_worker(pool, index)
            item = await self._take(pool, index)
            if item is _RETIRE:
                if self._retire(pool, index):
                    return
                continue
            self.on_queue_depth(pool.spec.name, pool.depth)
            if item.future.done():
                continue
            worker = pool.workers[index]
            if start_error is None and (worker is None or not worker.alive()):  # died while idle
                start_error = await self._ensure_worker(pool, index)
                worker = pool.workers[index]
            if start_error is not None or worker is None:  # a worker that cannot start fails the op, with the reason
                self._fail(pool, item, ExecutionError(f"cannot start worker: {start_error}", op=item.call.op,
                                                      pool=pool.spec.name, fix="check the pool's executor setup"))
                continue
            pool.busy[index] = item
            item.workers.append(worker.name)
            call = replace(item.call, attempt=item.attempts) if item.attempts else item.call
            try:
                result = await self._run_timed(worker, call, item)
            except _Timeout as t:
                pool.stats.timeouts += 1
                worker.kill()  # a hung op cannot be cancelled inside the worker; replace the worker
                pool.workers[index] = None
                self._fail(pool, item, OpTimeout(f"timed out after {t.timeout_s:g} s on {worker.name}",
                                                 op=t.op, pool=pool.spec.name,
                                                 fix=f"raise op_timeouts_s['{t.op}'] in the run config, "
                                                     "or fix the slow tool/endpoint"))
            except WorkerLost as exc:
                pool.workers[index] = None
                item.attempts += 1
                unsafe = self._unsafe_to_retry(item, worker) if exc.sent else None
                if unsafe is not None:
                    self._fail(pool, item, WorkerLost(
                        f"worker {worker.name} died while running a tool that is not declared idempotent; it is "
                        f"not run again, so its side effects cannot happen twice ({exc.reason})", op=unsafe,
                        pool=pool.spec.name, fix=f"if the tool is safe to run twice, set idempotent: true for node "
                        f"'{unsafe.rpartition('.')[0] or unsafe}' under tools: in the run config (HTTP GET tools "
                        "are idempotent by default)"))
                elif item.attempts >= self.config.max_attempts:
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
                if item.home is not None:
                    pool.homes[item.home] = index
                    pool.homes.move_to_end(item.home)
                    while len(pool.homes) > 4096:
                        pool.homes.popitem(last=False)
                if not item.future.done():
                    item.future.set_result(result)
            finally:
                pool.busy[index] = None

    async def _take(self, pool: _Pool, index: int) -> Any:
        """The slot's next op: one handed to it, else the oldest queued one that is not handed on."""
        while True:
            if pool.handed[index]:
                return pool.handed[index].popleft()
            pool.wake[index].clear()
            get = pool.getting[index] = asyncio.ensure_future(pool.queue.get())
            wake = asyncio.ensure_future(pool.wake[index].wait())
            try:
                await asyncio.wait({get, wake}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                if get.done() and not get.cancelled():  # taken as the slot stopped
                    item = get.result()[2]
                    if item is not _RETIRE and not item.future.done():
                        item.future.set_exception(ExecutionError("runtime stopped before the op ran",
                                                                 op=item.call.op))
                raise
            finally:
                pool.getting.pop(index, None)
                wake.cancel()
                if not get.done():
                    get.cancel()
            if get.done() and not get.cancelled():
                entry = get.result()
                if entry[2] is _RETIRE or not self._hand_over(pool, index, entry[2]):
                    return entry[2]

    def _hand_over(self, pool: _Pool, index: int, item: _Item) -> bool:
        """Hand `item` to the slot holding its home's KV when that slot is live and not overloaded."""
        home = pool.homes.get(item.home) if item.home is not None else None
        if home is None or home == index or home >= len(pool.workers) or pool.workers[home] is None:
            return False
        if home >= len(pool.slots) or pool.slots[home].done():
            return False
        got = pool.getting.get(home)
        taken = got is not None and got.done() and not got.cancelled()  # took an op, not yet started
        load = (pool.busy[home] is not None) + taken + len(pool.handed[home])
        if load > self.config.kv.affinity_slack:
            return False
        pool.handed[home].append(item)
        pool.handoffs += 1
        pool.wake[home].set()
        return True

    async def _ensure_worker(self, pool: _Pool, index: int) -> Exception | None:
        """Replace the slot's lost worker. A slot does this before taking work, so the op its old worker
        held (re-queued) goes to a live replica meanwhile rather than waiting for this start."""
        try:
            pool.stats.restarts += 1
            await self._start_worker(pool, index)
            return None
        except Exception as exc:
            return exc

    @staticmethod
    async def _run_timed(worker: WorkerHandle, call: OpCall, item: _Item) -> OpResult:
        """Run with each op's own timeout. One op: a plain deadline. A fused call: the deadline of the op
        the worker reports it is running (its progress), else one deadline for the whole call."""
        steps = item.steps
        assert steps is not None
        if len(steps.ops) == 1:
            try:
                return await asyncio.wait_for(worker.run(call, item.on_event), steps.timeouts_s[0])
            except TimeoutError:
                raise _Timeout(steps.ops[0], steps.timeouts_s[0]) from None
        task = asyncio.ensure_future(worker.run(call, item.on_event))
        t0 = time.monotonic()
        try:
            while True:
                prog, now = worker.progress(), time.monotonic()
                if prog is not None or worker.reports_progress:
                    i, started = prog if prog is not None else (0, t0)  # not started yet: the first op from now
                    op, limit_s, deadline = steps.ops[i], steps.timeouts_s[i], started + steps.timeouts_s[i]
                    # a later op cannot expire before now + its own budget: wake then to look again
                    wake = min([deadline, *(now + t for t in steps.timeouts_s[i + 1:])])
                else:
                    op, limit_s = " + ".join(steps.ops), sum(steps.timeouts_s)
                    deadline = wake = t0 + limit_s
                done, _ = await asyncio.wait({task}, timeout=max(wake - now, 0.0))
                if done:
                    return task.result()
                if worker.progress() == prog and time.monotonic() >= deadline:
                    raise _Timeout(op, limit_s)
        finally:
            if not task.done():
                task.cancel()

    @staticmethod
    def _unsafe_to_retry(item: _Item, worker: WorkerHandle) -> str | None:
        """The first op that may have run (started before the worker died) and must not run twice."""
        steps = item.steps
        assert steps is not None
        prog = worker.progress() if len(steps.ops) > 1 else None
        ran = steps.ops[: prog[0] + 1] if prog is not None else steps.ops
        return next((op for op, ok in zip(ran, steps.retryable, strict=False) if not ok), None)

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

    async def resize(self, pool_name: str, workers: int) -> None:
        """Grow or shrink a running pool to `workers` without dropping an op (the server's controller).
        Grow: spawn and warm the new workers, then open their dispatch slots; the pool serves meanwhile.
        Shrink: queue one _RETIRE marker per slot to drop, ahead of all ops; an idle slot takes one and
        retires at once, a busy slot only after settling the op it holds, and queued ops stay for the rest."""
        pool = self.pools.get(pool_name)
        if pool is None:
            raise ExecutionError(f"no pool '{pool_name}' to resize", fix=f"use one of {sorted(self.pools)}")
        if workers < 1:
            raise ExecutionError(f"pool '{pool_name}' cannot shrink to {workers} workers", fix="keep at least 1")
        async with self._resize_lock:
            current = sum(not t.done() for t in pool.slots) - pool.retiring
            if workers < current:
                pool.retiring += current - workers
                pool.markers += current - workers
                for _ in range(current - workers):
                    pool.queue.put_nowait((-1, next(self._seq), _RETIRE))
            elif workers > current:
                withdrawn = min(pool.retiring, workers - current)  # cancel pending retirements first
                pool.retiring -= withdrawn
                free = [i for i, t in enumerate(pool.slots) if t.done()]
                new = (free + list(range(len(pool.slots), len(pool.slots) + workers)))[: workers - current - withdrawn]
                for i in new:
                    if i >= len(pool.slots):
                        pool.workers.append(None)
                        pool.busy.append(None)
                        pool.handed.append(deque())
                        pool.wake.append(asyncio.Event())
                        pool.slots.append(asyncio.get_running_loop().create_future())
                        pool.slots[i].set_result(None)  # a closed slot until its worker starts
                started = await asyncio.gather(*(self._start_worker(pool, i) for i in new), return_exceptions=True)
                failed = [r for r in started if isinstance(r, BaseException)]
                for i, r in zip(new, started, strict=True):
                    if not isinstance(r, BaseException):
                        pool.slots[i] = asyncio.create_task(self._slot(pool, i))
                if failed:
                    pool.spec = replace(pool.spec, workers=workers - len(failed))
                    raise ExecutionError(f"pool '{pool_name}': {len(failed)} of {len(new)} new workers did not start: "
                                         f"{failed[0]}", fix="check the pool's executor setup or free resources")
            pool.spec = replace(pool.spec, workers=workers)

    def _requeue_handed(self, pool: _Pool, index: int) -> None:
        """Ops handed to this slot for its KV go back to the queue, ahead of new work."""
        while pool.handed[index]:
            pool.queue.put_nowait((0, next(self._seq), pool.handed[index].popleft()))

    def _retire(self, pool: _Pool, index: int) -> bool:
        """A slot took a _RETIRE marker: retire it (stop its idle worker) unless a later grow withdrew it."""
        pool.markers -= 1
        if pool.retiring == 0:
            return False
        pool.retiring -= 1
        self._requeue_handed(pool, index)
        worker, pool.workers[index] = pool.workers[index], None
        if worker is not None:
            worker.kill()
        return True

    def load(self) -> dict[str, dict[str, int]]:
        """Per pool, now: ops waiting, workers busy with an op, workers wanted (after pending resizes)."""
        return {n: {"queued": p.depth, "busy": sum(b is not None for b in p.busy), "workers": p.spec.workers}
                for n, p in self.pools.items()}

    def stats(self) -> dict[str, dict[str, Any]]:
        return {n: {**vars(p.stats), "workers": p.spec.workers, "device": p.spec.device, "kv_handoffs": p.handoffs}
                for n, p in self.pools.items()}

    async def stop(self) -> None:
        self._stopping = True
        for pool in self.pools.values():
            for t in pool.slots:
                t.cancel()
            handed = [(0, 0, it) for q in pool.handed for it in q]
            for _, _, item in [*pool.queue._queue, *handed]:  # type: ignore[attr-defined]
                if item is not _RETIRE and not item.future.done():
                    item.future.set_exception(ExecutionError("runtime stopped before the op ran", op=item.call.op))
        for pool in self.pools.values():
            await asyncio.gather(*pool.slots, return_exceptions=True)
            for w in pool.workers:
                if w is not None:
                    w.kill()
        await self._shutdown_backend()
