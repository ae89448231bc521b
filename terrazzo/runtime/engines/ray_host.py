"""A Ray actor that owns one vLLM server process, so on a cluster Ray places each replica on a node
with the pool's device type (`{"tz/<device>": tp × pp}`) and the server dies with its actor."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from terrazzo.runtime.engines.engine_pool import Progress
from terrazzo.runtime.engines.vllm_server import VllmProcess, VllmServerSpec
from terrazzo.runtime.failures import ExecutionError


class _ServerActor:
    """The actor body: launch, wait, report; errors come back as values so their text survives Ray."""

    def __init__(self, spec: VllmServerSpec, python: str, log_path: str, host: str) -> None:
        self.server = VllmProcess(spec, Path(python), Path(log_path), host=host)

    def start(self, timeout_s: float) -> tuple[bool, Any]:
        import ray

        try:
            self.server.launch().wait_ready(timeout_s)
        except ExecutionError as exc:
            return False, str(exc)
        node_ip = self.server.host if self.server.host != "0.0.0.0" else ray.util.get_node_ip_address()
        return True, (f"http://{node_ip}:{self.server.port}", self.server.version, self.server.ready_s or 0.0)

    def alive(self) -> bool:
        return self.server.alive()

    def stop(self, grace_s: float) -> None:
        self.server.stop(grace_s)

    def kill(self) -> None:
        self.server.kill()

    def pause(self) -> None:
        import signal

        self.server._signal(signal.SIGSTOP)


class RayHost:
    def __init__(self, name: str, spec: VllmServerSpec, python: Path, log_path: Path, device: str,
                 bind: str = "127.0.0.1") -> None:
        import ray

        self.name = name
        self.actor: Any
        units = spec.tensor_parallel * spec.pipeline_parallel
        self.actor = ray.remote(_ServerActor).options(num_cpus=0, resources={f"tz/{device}": units},
                                                      max_restarts=0, max_concurrency=4).remote(
            spec, str(python), str(log_path), bind)

    async def start(self, timeout_s: float, on_progress: Progress | None) -> tuple[str, str, float]:
        ok, value = await self.actor.start.remote(timeout_s)
        if not ok:
            raise ExecutionError(f"{self.name}: {value}")
        return value

    async def alive(self) -> bool:
        import ray

        try:
            return bool(await asyncio.wait_for(self.actor.alive.remote(), 10))
        except (ray.exceptions.RayActorError, TimeoutError):
            return False

    async def stop(self, grace_s: float) -> None:
        import ray

        with contextlib.suppress(Exception):  # the actor is gone: its server died with it (PDEATHSIG)
            await asyncio.wait_for(self.actor.stop.remote(grace_s), grace_s + 10)
        ray.kill(self.actor, no_restart=True)

    async def kill(self) -> None:
        with contextlib.suppress(Exception):
            await self.actor.kill.remote()

    async def pause(self) -> None:
        await self.actor.pause.remote()
