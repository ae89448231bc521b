"""Readiness that includes the model servers an agent calls: every OpenAI-compatible endpoint its LLM
nodes are mapped to (run config `models: {m: {endpoint: ...}}`) is probed with `GET <base>/models`, at most
once per `interval_s`, each probe bounded by `timeout_s`. While one is down, /readyz answers 503 and names
the model (never the endpoint's address), so a balancer stops sending traffic the agent cannot serve."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx


def endpoints_of(agent: Any, config: Any) -> dict[str, str]:
    """model -> endpoint base URL, for the agent's LLM nodes that run on an endpoint."""
    out: dict[str, str] = {}
    for _, node in agent.graph.leaves():
        target = config.models.get(getattr(node, "model", None) or "") if node.kind == "llm" else None
        if target is not None and target.endpoint:
            out[node.model] = target.endpoint.rstrip("/")
    return out


class UpstreamHealth:
    def __init__(self, endpoints: dict[str, str], interval_s: float = 2.0, timeout_s: float = 2.0) -> None:
        self.endpoints, self.interval_s, self.timeout_s = endpoints, interval_s, timeout_s
        self._state: dict[str, bool] = {m: True for m in endpoints}
        self._checked_s = -1e18
        self._lock = asyncio.Lock()

    async def _probe(self, client: httpx.AsyncClient, base: str) -> bool:
        try:
            r = await client.get(f"{base}/models")
        except (httpx.HTTPError, OSError):
            return False
        return r.status_code < 500

    async def down(self) -> list[str]:
        """The models whose endpoint did not answer its last probe (probing again when that is stale)."""
        if not self.endpoints:
            return []
        async with self._lock:
            if time.monotonic() - self._checked_s >= self.interval_s:
                async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                    ups = await asyncio.gather(*(self._probe(client, b) for b in self.endpoints.values()))
                self._state = dict(zip(self.endpoints, ups, strict=True))
                self._checked_s = time.monotonic()
        return sorted(m for m, up in self._state.items() if not up)
