"""`local` backend: each pool is a set of worker processes on this machine (spawned, not forked, so no
torch/thread state is inherited). Each worker talks over its own pipe — no queue shared between
processes, so a worker killed mid-write cannot corrupt anyone else's channel; its death shows as
EOF on its pipe, which fails exactly the op it held with WorkerLost (and the pool retries it)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from terrazzo.runtime.backends.pool_backend import PoolBackend, WorkerHandle
from terrazzo.runtime.failures import ExecutionError, WorkerLost
from terrazzo.runtime.pool_layout import PoolSpec
from terrazzo.runtime.worker import OpCall, OpResult

_CTX = mp.get_context("spawn")
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


_PROGRESS_SPAN = 4096  # progress word = call id × span + op index within the call


def _thread_locks_only() -> None:
    """tqdm (inside sentence-transformers' encode) makes a process-shared semaphore on first use, even with
    its bar disabled; a worker killed at stop cannot unlink it, and the resource tracker then reports a
    leaked semaphore at exit. A worker's progress bars are never shown, so a thread lock does."""
    with contextlib.suppress(ImportError):
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())


def _worker_main(conn: Any, config: dict[str, Any], name: str, progress: Any) -> None:
    """Entry point of a worker process: answer (id, OpCall) messages one at a time until None. Replies are
    (id, True, OpResult) or (id, False, ExecutionError); (id, None, event) are events sent while it runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    os.environ.update(_WORKER_ENV)
    _thread_locks_only()
    from terrazzo.runtime.worker import WorkerState

    state = WorkerState(config, name)
    current = [0]

    def report(index: int) -> None:  # start time first, then the word: a reader never pairs a new word with an old time
        progress[1] = time.monotonic()
        progress[0] = current[0] * _PROGRESS_SPAN + index

    state.report_progress = report
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        call_id, call = msg
        current[0] = call_id
        emit = (lambda ev, cid=call_id: conn.send((cid, None, ev))) if call.stream else None
        reply: tuple[int, bool, Any]
        try:
            reply = (call_id, True, state.execute(call, emit))
        except ExecutionError as exc:
            reply = (call_id, False, exc)
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable result
            conn.send((call_id, False, ExecutionError(f"result could not be sent back: {exc}", op=call.op,
                                                      fix="return plain data from the executor")))


class LocalWorker(WorkerHandle):
    _ids = itertools.count()

    def __init__(self, spec: PoolSpec, index: int, config: dict[str, Any]) -> None:
        self.name = f"{spec.name}/{index}#{next(self._ids)}"
        parent, child = _CTX.Pipe(duplex=True)
        self.conn = parent
        self._progress = _CTX.RawArray("d", 2)  # shared memory: (progress word, op start on time.monotonic())
        self._progress[0] = -1
        self._call_id = -1
        self.proc = _CTX.Process(target=_worker_main, args=(child, config, self.name, self._progress), daemon=True,
                                 name=self.name)
        self.proc.start()
        child.close()  # so the parent sees EOF when the worker dies
        self._pending: dict[int, tuple[asyncio.Future, Callable[[dict], None] | None]] = {}
        self._ids_call = itertools.count()
        self._lock = threading.Lock()
        self._dead = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def wait_ready(self, timeout_s: float) -> None:
        if not self.conn.poll(timeout_s):
            self.kill()
            raise ExecutionError(f"worker {self.name} did not start within {timeout_s:g} s",
                                 fix="check that the terrazzo package imports in a fresh process")
        try:
            self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(timeout=5)
            raise ExecutionError(f"worker {self.name} exited while starting (exit code {self.proc.exitcode})",
                                 fix="see its stderr above; a script that starts a runtime needs the "
                                     "`if __name__ == '__main__':` guard (workers are spawned)") from None

    def start_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        threading.Thread(target=self._read, name=f"reader-{self.name}", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                call_id, ok, value = self.conn.recv()
            except (EOFError, OSError, TypeError, ValueError):
                break
            if ok is None:
                self._event(call_id, value)
            else:
                self._settle(call_id, ok, value)
        self._dead = True
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        for call_id in list(self._pending):
            lost = WorkerLost(f"worker {self.name} (pid {self.proc.pid}) exited with code {code}")
            self._settle(call_id, False, lost)

    def _event(self, call_id: int, event: dict) -> None:
        """Hand an event to the loop; same thread and queue as the settlement, so events precede it."""
        with self._lock:
            entry = self._pending.get(call_id)
        if entry is not None and entry[1] is not None and self._loop is not None:
            self._call_soon(entry[1], event)

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (the runtime stopped): nobody waits any more
            if self._loop is not None:
                self._loop.call_soon_threadsafe(fn, *args)

    def _settle(self, call_id: int, ok: bool, value: Any) -> None:
        with self._lock:
            entry = self._pending.pop(call_id, None)
        if entry is None or self._loop is None:
            return
        fut = entry[0]

        def done() -> None:
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        self._call_soon(done)

    async def run(self, call: OpCall, on_event: Callable[[dict], None] | None = None) -> OpResult:
        if self._dead:
            raise WorkerLost.unsent(f"worker {self.name} is dead")
        fut = asyncio.get_running_loop().create_future()
        call_id = self._call_id = next(self._ids_call)
        with self._lock:
            self._pending[call_id] = (fut, on_event)
        try:
            self.conn.send((call_id, call))
        except (BrokenPipeError, OSError) as exc:
            with self._lock:
                self._pending.pop(call_id, None)
            raise WorkerLost.unsent(f"worker {self.name} pipe closed: {exc}") from None
        try:
            return await fut
        finally:
            with self._lock:
                self._pending.pop(call_id, None)  # settled, or the caller gave up (cancelled)

    reports_progress = True

    def progress(self) -> tuple[int, float] | None:
        """Read the worker's shared progress slot for the current call (lock-free: re-read until stable)."""
        p = self._progress
        for _ in range(8):
            word, started = p[0], p[1]
            if p[0] == word:
                break
        call_id, index = divmod(int(word), _PROGRESS_SPAN)
        return (index, started) if word >= 0 and call_id == self._call_id else None

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()

    def alive(self) -> bool:
        return not self._dead and self.proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self.proc.pid


def _kill_late(start: asyncio.Future[LocalWorker]) -> None:
    """A worker whose start was cancelled still comes up: end it once it has."""
    if not start.cancelled() and start.exception() is None:
        start.result().kill()


class LocalBackend(PoolBackend):
    name = "local"
    start_timeout_s = 120.0

    async def spawn(self, spec: PoolSpec, index: int) -> WorkerHandle:
        cfg = self.config.model_dump()

        def make() -> LocalWorker:
            worker = LocalWorker(spec, index, cfg)
            try:
                worker.wait_ready(self.start_timeout_s)
            except BaseException:
                worker.kill()
                raise
            return worker

        start = asyncio.ensure_future(asyncio.to_thread(make))
        try:
            worker = await asyncio.shield(start)
        except asyncio.CancelledError:  # stopping mid-start: the process still comes up, so end it then
            start.add_done_callback(_kill_late)
            raise
        worker.start_reader(asyncio.get_running_loop())
        return worker

    async def _shutdown_backend(self) -> None:
        for pool in self.pools.values():
            for w in pool.workers:
                if isinstance(w, LocalWorker):
                    await asyncio.to_thread(w.proc.join, 5)
