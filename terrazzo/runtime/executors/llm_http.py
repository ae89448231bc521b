"""OpenAI-compatible HTTP LLM client (vLLM, SGLang, llama.cpp server, TGI, terrazzo's own serve app):
completions with or without streaming (SSE), timeouts, bounded retries with backoff on connect
errors, 5xx and 429 (Retry-After honoured). A stream is retried only before its first token, so no
text is ever duplicated."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from terrazzo.runtime.executors.llm_engine import Generation
from terrazzo.runtime.failures import ExecutionError

_RETRY_STATUS = {429, 500, 502, 503, 504}


class OpenAIClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0, retries: int = 2) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s))
        self.retries, self.timeout_s = retries, timeout_s

    def _post(self, path: str, body: dict[str, Any], stream: bool) -> Any:
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            wait_s = min(0.1 * 2**attempt, 2.0)
            try:
                req = self.client.build_request("POST", path, json=body)
                resp = self.client.send(req, stream=stream)
                if resp.status_code == 200:
                    return resp
                resp.read()
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in _RETRY_STATUS:
                    raise ExecutionError(f"LLM endpoint {self.base_url}{path} answered {last}",
                                         fix="check the model name and request (served_name in the run config)")
                ra = resp.headers.get("retry-after", "")
                if ra.replace(".", "", 1).isdigit():
                    wait_s = min(float(ra), self.timeout_s)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout_s:g} s"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                time.sleep(wait_s)
        raise ExecutionError(f"LLM endpoint {self.base_url}{path} failed after {self.retries + 1} tries: {last}",
                             fix="check the server is up and reachable; raise op_timeout_s for slow models")

    def complete(self, prompt: str, *, model: str, max_tokens: int) -> Generation:
        t0 = time.perf_counter()
        resp = self._post("/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                           "temperature": 0}, stream=False)
        data = resp.json()
        usage = data.get("usage") or {}
        ids = tuple(data.get("token_ids") or ())  # terrazzo's server returns them; others give a count
        n = usage.get("completion_tokens", len(ids))
        return Generation(token_ids=ids or tuple([-1] * n), text=data["choices"][0]["text"],
                          prompt_tokens=usage.get("prompt_tokens", 0), decode_s=time.perf_counter() - t0)

    def stream(self, prompt: str, *, model: str, max_tokens: int) -> Iterator[str]:
        """Yield text deltas as the server sends them (Server-Sent Events, `data: {...}` … `data: [DONE]`)."""
        for delta, _ in self.stream_chunks(prompt, model=model, max_tokens=max_tokens):
            if delta:
                yield delta

    def stream_chunks(self, prompt: str, *, model: str, max_tokens: int) -> Iterator[tuple[str, list[int]]]:
        """(text delta, token ids) per SSE chunk; ids only where the server sends them (terrazzo's does)."""
        resp = self._post("/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                           "temperature": 0, "stream": True}, stream=True)
        try:
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line.removeprefix("data:").strip()
                if payload == "[DONE]":
                    return
                data = json.loads(payload)
                choice = data["choices"][0]
                delta = choice.get("text") if "text" in choice else choice.get("delta", {}).get("content", "")
                ids = data.get("token_ids") or []
                if delta or ids:
                    yield delta or "", list(ids)
        finally:
            resp.close()

    def complete_streaming(self, prompt: str, *, model: str, max_tokens: int,
                           on_delta: Callable[[str, int | None], None]) -> Generation:
        """Like `complete`, over SSE, calling `on_delta(text, token_id)` per chunk as it arrives."""
        t0 = time.perf_counter()
        texts: list[str] = []
        ids: list[int] = []
        chunks = 0
        for delta, tok in self.stream_chunks(prompt, model=model, max_tokens=max_tokens):
            texts.append(delta)
            ids += tok
            chunks += 1
            on_delta(delta, tok[0] if len(tok) == 1 else None)
        n = len(ids) or chunks
        return Generation(token_ids=tuple(ids) or tuple([-1] * n), text="".join(texts), prompt_tokens=0,
                          decode_s=time.perf_counter() - t0)

    def close(self) -> None:
        self.client.close()
