"""`local` backend: each pool is a set of worker processes on this machine (spawned, not forked, so no
torch/thread state is inherited). Each worker talks over its own pipe — no queue shared between
processes, so a worker killed mid-write cannot corrupt anyone else's channel; its death shows as
EOF on its pipe, which fails exactly the op it held with WorkerLost (and the pool retries it)."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import os
import signal
import threading
from typing import Any

from terrazzo.runtime.backends.base import PoolBackend, WorkerHandle
from terrazzo.runtime.errors import ExecutionError, WorkerLost
from terrazzo.runtime.placement import PoolSpec
from terrazzo.runtime.worker import OpCall, OpResult

_CTX = mp.get_context("spawn")
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _worker_main(conn: Any, config: dict[str, Any], name: str) -> None:
    """Entry point of a worker process: answer (id, OpCall) messages one at a time until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    os.environ.update(_WORKER_ENV)
    from terrazzo.runtime.worker import WorkerState

    state = WorkerState(config, name)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        call_id, call = msg
        try:
            reply = (call_id, True, state.execute(call))
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
        self.proc = _CTX.Process(target=_worker_main, args=(child, config, self.name), daemon=True, name=self.name)
        self.proc.start()
        child.close()  # so the parent sees EOF when the worker dies
        self._pending: dict[int, asyncio.Future] = {}
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
            self._settle(call_id, ok, value)
        self._dead = True
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        for call_id in list(self._pending):
            lost = WorkerLost(f"worker {self.name} (pid {self.proc.pid}) exited with code {code}")
            self._settle(call_id, False, lost)

    def _settle(self, call_id: int, ok: bool, value: Any) -> None:
        with self._lock:
            fut = self._pending.pop(call_id, None)
        if fut is None or self._loop is None:
            return

        def done() -> None:
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        self._loop.call_soon_threadsafe(done)

    async def run(self, call: OpCall) -> OpResult:
        if self._dead:
            raise WorkerLost(f"worker {self.name} is dead")
        fut = asyncio.get_running_loop().create_future()
        call_id = next(self._ids_call)
        with self._lock:
            self._pending[call_id] = fut
        try:
            self.conn.send((call_id, call))
        except (BrokenPipeError, OSError) as exc:
            with self._lock:
                self._pending.pop(call_id, None)
            raise WorkerLost(f"worker {self.name} pipe closed: {exc}") from None
        return await fut

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()

    def alive(self) -> bool:
        return not self._dead and self.proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self.proc.pid


class LocalBackend(PoolBackend):
    name = "local"
    start_timeout_s = 120.0

    async def spawn(self, spec: PoolSpec, index: int) -> WorkerHandle:
        cfg = self.config.model_dump()
        worker = await asyncio.to_thread(LocalWorker, spec, index, cfg)
        await asyncio.to_thread(worker.wait_ready, self.start_timeout_s)
        worker.start_reader(asyncio.get_running_loop())
        return worker

    async def _shutdown_backend(self) -> None:
        for pool in self.pools.values():
            for w in pool.workers:
                if isinstance(w, LocalWorker):
                    await asyncio.to_thread(w.proc.join, 5)
