"""Live on the session's vLLM CPU server (tests/vllm_live.py): a session's next call reuses its prefix
from vLLM's automatic prefix cache, and the same tokens from another tenant or session find nothing,
by vLLM's own counters (the runtime sends each (tenant, session) its own cache salt)."""

from __future__ import annotations

import asyncio
import uuid

from vllm_live import SERVED, LiveServer

from terrazzo.runtime.config import KvSettings
from terrazzo.runtime.engines.engine_pool import AttachedHost, EnginePool
from terrazzo.runtime.engines.vllm_server import VllmServerSpec
from terrazzo.runtime.kv_cache import KvManager

HITS = "vllm:prefix_cache_hits_total"


def test_session_kv_is_reused_and_never_served_to_another_tenant(vllm_server: LiveServer) -> None:
    manager = KvManager(KvSettings())
    spec = VllmServerSpec(model=str(vllm_server.checkpoint), served_name=SERVED, max_model_len=1024)
    pool = EnginePool("llm", "cpu", spec, [AttachedHost("llm/attached0", vllm_server.url)],
                      kv=manager.pool("llm", 1, str(vllm_server.checkpoint), 1))
    assert pool.kv is not None
    unique = uuid.uuid4().hex  # nothing of this text is cached yet, by any test
    system = f"{unique} policy:"
    while len(pool.kv.key("t", "s", system).blocks) * pool.kv.settings.block_tokens < 600:  # ~600 tokens
        system += " refunds take five days"
    turn1, turn2 = system + "\nUser: where is my order?", system + "\nUser: where is my order?\nUser: and now?"

    async def call(tenant: str, session: str, prompt: str) -> tuple[float, int]:
        before = vllm_server.metric(HITS)
        key = pool.kv.key(tenant, f"{tenant}:{session}", prompt)  # the server's tenant-qualified session
        gen, _, _ = await pool.generate(prompt, max_tokens=2, key=key)
        return vllm_server.metric(HITS) - before, gen.prompt_tokens

    async def go() -> list[tuple[float, int]]:
        await pool.start()
        try:
            return [await call("acme", "s1", turn1), await call("acme", "s1", turn2),
                    await call("globex", "s1", turn2), await call("acme", "s2", turn2)]
        finally:
            await pool.stop()

    (cold, n1), (warm, n2), (other_tenant, _), (other_session, _) = asyncio.run(go())
    assert 500 < n1 < n2 < 1024
    assert cold == 0
    assert warm >= n1 - 32                     # turn 2 found turn 1's prompt, but for its last partial block
    assert other_tenant == 0 and other_session == 0  # same tokens, another scope: vLLM found nothing
    stats = pool.kv.stats()
    assert stats["calls"] == 4 and stats["hit_calls"] == 1 and stats["sessions_live"] == 3
