"""`ray` backend: each pool is a set of Ray actors that ask for the pool's device type as a custom
resource (`{"tz/h100": 1}`), so on a real cluster Ray places a pool only on nodes that advertise that
device; locally, `ray.init()` declares those resources on this machine. Same semantics as `local`
(PoolBackend): an actor that dies fails its op with WorkerLost and the op is retried on a new actor.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from terrazzo.runtime.backends.pool_backend import PoolBackend, WorkerHandle
from terrazzo.runtime.failures import ExecutionError, WorkerLost
from terrazzo.runtime.pool_layout import PoolSpec
from terrazzo.runtime.worker import OpCall, OpResult

LOCAL_DEVICE_UNITS = 512  # per device type on a local ray.init(): a worker asks for its replica's tp × pp


class _Actor:
    """The actor body; errors come back as values so they keep their type across Ray."""

    def __init__(self, config: dict[str, Any], name: str) -> None:
        os.environ.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
        from terrazzo.runtime.worker import WorkerState

        self.state = WorkerState(config, name)

    def pid(self) -> int:
        return os.getpid()

    def execute(self, call: OpCall) -> tuple[bool, Any]:
        try:
            return True, self.state.execute(call)
        except ExecutionError as exc:
            return False, exc

    def execute_stream(self, call: OpCall) -> Iterator[tuple[bool | None, Any]]:
        """A Ray streaming generator: (None, event) as the op produces them, then (ok, result). The op
        runs on a helper thread that feeds a queue, so each event is yielded the moment it exists."""
        q: queue.SimpleQueue = queue.SimpleQueue()

        def work() -> None:
            try:
                q.put((True, self.state.execute(call, lambda ev: q.put((None, ev)))))
            except ExecutionError as exc:
                q.put((False, exc))
            except BaseException as exc:  # reported as the op's failure, never lost
                q.put((False, ExecutionError(f"{type(exc).__name__}: {exc}", op=call.op)))

        threading.Thread(target=work, name=f"op-{call.op}", daemon=True).start()
        while True:
            item = q.get()
            yield item
            if item[0] is not None:
                return


def ensure_ray(address: str | None, devices: set[str], num_cpus: int | None = None) -> None:
    """Connect to `address` (an existing cluster) or start a local Ray with a `tz/<device>` resource per
    device type; when Ray is already up, check it offers every device type the plan needs."""
    try:
        import ray
    except ImportError:
        raise ExecutionError("the ray backend needs Ray", fix="pip install 'terrazzo[runtime]' (ray)") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     resources={f"tz/{d}": LOCAL_DEVICE_UNITS for d in sorted(devices)})
    have = ray.cluster_resources()
    missing = sorted(d for d in devices if have.get(f"tz/{d}", 0) < 1)
    if missing:
        raise ExecutionError(f"the Ray cluster offers no {', '.join('tz/' + d for d in missing)} resource",
                             fix="start the nodes with e.g. `ray start --resources='{\"tz/h100\": 8}'`, or "
                                 "ray.init(resources=...) declaring every device type of the plan")


class RayWorker(WorkerHandle):
    _ids = itertools.count()

    def __init__(self, actor: Any, name: str, pid: int) -> None:
        self.actor, self.name, self._pid, self._dead = actor, name, pid, False

    async def run(self, call: OpCall, on_event: Callable[[dict], None] | None = None) -> OpResult:
        import ray

        if self._dead:
            raise WorkerLost.unsent(f"actor {self.name} is dead")
        try:
            if not call.stream:
                ok, value = await self.actor.execute.remote(call)
            else:
                ok, value = False, WorkerLost(f"actor {self.name} ended its stream without a result")
                async for ref in self.actor.execute_stream.options(num_returns="streaming").remote(call):
                    ok, value = await ref
                    if ok is None:
                        if on_event is not None:
                            on_event(value)
                        continue
                    break
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            self._dead = True
            raise WorkerLost(f"actor {self.name} (pid {self._pid}) died: {type(exc).__name__}") from None
        if not ok:
            raise value
        return value

    def kill(self) -> None:
        import ray

        self._dead = True
        ray.kill(self.actor, no_restart=True)

    def alive(self) -> bool:
        return not self._dead

    @property
    def pid(self) -> int | None:
        return self._pid


class RayBackend(PoolBackend):
    name = "ray"

    def __init__(self, config: Any, pools: dict[str, PoolSpec]) -> None:
        super().__init__(config, pools)
        ensure_ray(config.ray_address, {p.device for p in pools.values()})

    async def spawn(self, spec: PoolSpec, index: int) -> WorkerHandle:
        import ray

        name = f"{spec.name}/{index}#{next(RayWorker._ids)}"
        # ray's remote classes are typed loosely (no .remote on the class's methods)
        actor_cls: Any = ray.remote(_Actor).options(num_cpus=0, resources={spec.resource: spec.devices_per_worker},
                                                    max_restarts=0, max_concurrency=1, name=None)
        actor = actor_cls.remote(self.config.model_dump(), name)
        try:
            pid = await asyncio.wait_for(actor.pid.remote(), 120)
        except Exception as exc:
            ray.kill(actor)
            raise ExecutionError(f"Ray actor for pool '{spec.name}' did not start: {exc}",
                                 fix=f"check the cluster has free '{spec.resource}' resources") from None
        return RayWorker(actor, name, pid)
