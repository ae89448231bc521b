"""One LLM op on an engine pool, as the orchestrator runs it: token events as vLLM streams them, the
op's timeout, and an OpResult like a worker's (so samples, spans and metrics look the same).

P/D on vLLM (pools started with the shared-storage KV connector, launch.kv_connector): `llm.prefill`
asks the prefill pool for one token, which makes it compute and store the prompt's KV; its value is the
hand-off (the prompt and budget, `EngineHandoff`); `llm.decode` sends the same prompt to the decode
pool, whose server loads the stored KV blocks instead of computing them, and streams the answer."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

from terrazzo.kv.prefix_keys import PrefixKey
from terrazzo.runtime.engines.engine_pool import EnginePool
from terrazzo.runtime.failures import ExecutionError, OpTimeout
from terrazzo.runtime.op_events import OpEvents
from terrazzo.runtime.results import RequestState
from terrazzo.runtime.worker import OpResult

ENGINE_KINDS = frozenset({"llm.aggregated", "llm.prefill", "llm.decode"})


@dataclass(frozen=True)
class EngineHandoff:
    """What a vLLM prefill hands to its decode: the prompt (the KV itself went to the connector's store)."""

    prompt: str
    max_new_tokens: int
    prompt_tokens: int
    first_token_ids: tuple[int, ...]
    prefill_replica: str


async def _key(engine: EnginePool, req: RequestState, prompt: str) -> PrefixKey | None:
    """The call's prefix key under its request's tenant and scope (session, else the request)."""
    return await engine.kv.akey(req.tenant, req.scope or req.id, prompt) if engine.kv is not None else None


async def engine_call(engine: EnginePool, req: RequestState, op: str, payload: dict[str, Any], timeout_s: float,
                      events: OpEvents, kind: str = "llm.aggregated") -> OpResult:
    if kind == "llm.prefill":
        return await _prefill(engine, req, op, payload, timeout_s)
    if kind == "llm.decode":
        hand: EngineHandoff = payload["kv"]
        payload = {"prompt": hand.prompt, "max_new_tokens": hand.max_new_tokens}
    on_delta = None
    if req.on_event is not None:
        index = itertools.count()

        def on_delta(text: str, ids: list[int]) -> None:  # one event per token; the chunk's text on its first
            for j, token_id in enumerate(ids or [None]):
                events.emit(req, {"type": "token", "op": op, "index": next(index), "token_id": token_id,
                                  "text": "" if j else text})

    t0 = time.perf_counter()
    try:
        gen, replica, attempts = await asyncio.wait_for(
            engine.generate(payload["prompt"], max_tokens=payload["max_new_tokens"], on_delta=on_delta,
                            request_id=req.id, key=await _key(engine, req, payload["prompt"])), timeout_s)
    except TimeoutError:
        raise OpTimeout(f"timed out after {timeout_s:g} s on vLLM pool '{engine.name}'", op=op, pool=engine.name,
                        fix=f"raise op_timeouts_s['{op}'] in the run config, or give the pool more replicas") from None
    except ExecutionError as exc:
        raise type(exc)(exc.reason, fix=exc.fix, op=op, pool=engine.name) from None
    info = {"engine": str(engine.identity), "replica": replica.url, "attempts": attempts,
            "prompt_tokens": gen.prompt_tokens, "ttft_s": gen.prefill_s, "replica_index": replica.index}
    return OpResult(gen, time.perf_counter() - t0, f"{engine.name}/vllm{replica.index}", 0, len(gen.token_ids), info)


async def _prefill(engine: EnginePool, req: RequestState, op: str, payload: dict[str, Any],
                   timeout_s: float) -> OpResult:
    t0 = time.perf_counter()
    try:
        gen, replica, attempts = await asyncio.wait_for(
            engine.generate(payload["prompt"], max_tokens=1, request_id=req.id,
                            key=await _key(engine, req, payload["prompt"])), timeout_s)
    except TimeoutError:
        raise OpTimeout(f"prefill timed out after {timeout_s:g} s on vLLM pool '{engine.name}'", op=op,
                        pool=engine.name, fix=f"raise op_timeouts_s['{op}'] in the run config") from None
    except ExecutionError as exc:
        raise type(exc)(exc.reason, fix=exc.fix, op=op, pool=engine.name) from None
    hand = EngineHandoff(payload["prompt"], payload["max_new_tokens"], gen.prompt_tokens, gen.token_ids, replica.url)
    info = {"engine": str(engine.identity), "replica": replica.url, "attempts": attempts,
            "kv_connector": (engine.spec.kv_transfer_config or {}).get("kv_connector")}
    return OpResult(hand, time.perf_counter() - t0, f"{engine.name}/vllm{replica.index}", 0, gen.prompt_tokens, info)
