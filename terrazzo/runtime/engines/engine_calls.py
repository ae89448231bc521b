"""One LLM op on an engine pool, as the orchestrator runs it: token events as vLLM streams them, the
op's timeout, and an OpResult like a worker's (so samples, spans and metrics look the same)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from terrazzo.runtime.engines.engine_pool import EnginePool
from terrazzo.runtime.failures import ExecutionError, OpTimeout
from terrazzo.runtime.op_events import OpEvents
from terrazzo.runtime.results import RequestState
from terrazzo.runtime.worker import OpResult


async def engine_call(engine: EnginePool, req: RequestState, op: str, payload: dict[str, Any], timeout_s: float,
                      events: OpEvents) -> OpResult:
    on_delta = None
    if req.on_event is not None:
        index = itertools.count()

        def on_delta(text: str, token_id: int | None) -> None:
            events.emit(req, {"type": "token", "op": op, "index": next(index), "token_id": token_id, "text": text})

    t0 = time.perf_counter()
    try:
        gen, replica, attempts = await asyncio.wait_for(
            engine.generate(payload["prompt"], max_tokens=payload["max_new_tokens"], on_delta=on_delta,
                            request_id=req.id), timeout_s)
    except TimeoutError:
        raise OpTimeout(f"timed out after {timeout_s:g} s on vLLM pool '{engine.name}'", op=op, pool=engine.name,
                        fix=f"raise op_timeouts_s['{op}'] in the run config, or give the pool more replicas") from None
    except ExecutionError as exc:
        raise type(exc)(exc.reason, fix=exc.fix, op=op, pool=engine.name) from None
    info = {"engine": str(engine.identity), "replica": replica.url, "attempts": attempts,
            "prompt_tokens": gen.prompt_tokens, "ttft_s": gen.prefill_s}
    return OpResult(gen, time.perf_counter() - t0, f"{engine.name}/vllm{replica.index}", 0, len(gen.token_ids), info)
