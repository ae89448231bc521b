"""What runs inside a worker (a local process or a Ray actor): one `WorkerState` that loads executors
lazily and caches them, so a pool's worker pays for loading a checkpoint or index once."""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.errors import ExecutionError


@dataclass(frozen=True)
class OpCall:
    request_id: str
    op: str          # granular op name from the plan, e.g. "think.prefill"
    kind: str        # executor: llm.prefill, llm.decode, llm.aggregated, embed, ann.search, tool.lookup, ...
    payload: Any
    attempt: int = 0


@dataclass(frozen=True)
class OpResult:
    value: Any
    exec_s: float                   # time inside the worker, excluding queueing and transport
    worker: str
    pid: int
    tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class WorkerState:
    def __init__(self, config: RunConfig | dict[str, Any], name: str) -> None:
        self.config = config if isinstance(config, RunConfig) else RunConfig.model_validate(config)
        self.name = name
        self.pid = os.getpid()
        self._cache: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, key: str, make: Any) -> Any:
        if (kind, key) not in self._cache:
            self._cache[(kind, key)] = make()
        return self._cache[(kind, key)]

    def engine(self, checkpoint: str):  # -> LlmEngine
        from terrazzo.runtime.executors.llm_engine import LlmEngine

        return self._get("llm", checkpoint, lambda: LlmEngine(checkpoint, threads=1,
                                                              max_prompt_tokens=self.config.max_prompt_tokens))

    def execute(self, call: OpCall) -> OpResult:
        """Run one op; any failure surfaces as ExecutionError naming the op (never a bare traceback)."""
        t0 = time.perf_counter()
        try:
            value, tokens, info = getattr(self, "_" + call.kind.replace(".", "_"))(call.payload)
        except ExecutionError as exc:
            if exc.op is None:
                raise type(exc)(exc.reason, fix=exc.fix, op=call.op, pool=self.name) from None
            raise
        except AttributeError as exc:
            if f"_{call.kind.replace('.', '_')}" in str(exc):
                raise ExecutionError(f"no executor for op kind '{call.kind}'", op=call.op, pool=self.name) from None
            raise ExecutionError(f"{type(exc).__name__}: {exc}", op=call.op, pool=self.name,
                                 fix="see the worker traceback: " + traceback.format_exc(limit=3)) from None
        except Exception as exc:
            raise ExecutionError(f"{type(exc).__name__}: {exc}", op=call.op, pool=self.name,
                                 fix="see the worker traceback: " + traceback.format_exc(limit=3)) from None
        return OpResult(value, time.perf_counter() - t0, self.name, self.pid, tokens, info)

    # --- executors: payload -> (value, tokens, info) -------------------------------------------------
    def _noop(self, p: Any) -> tuple[Any, int, dict]:
        return p, 0, {}

    def _warmup(self, items: list[dict[str, str]]) -> tuple[Any, int, dict]:
        from terrazzo.runtime.executors.vector import Embedder, VectorIndex

        for it in items:
            if it["kind"] == "llm":
                self.engine(it["key"])
            elif it["kind"] == "embed":
                self._get("embed", it["key"], lambda k=it["key"]: Embedder(k))
            elif it["kind"] == "index":
                self._get("index", it["key"], lambda k=it["key"]: VectorIndex(Path(k)))
        return None, 0, {}

    def _llm_prefill(self, p: dict) -> tuple[Any, int, dict]:
        eng = self.engine(p["checkpoint"])
        ids = p.get("prompt_ids") or eng.encode(p["prompt"])
        kv = eng.prefill(list(ids), p["max_new_tokens"])
        return kv, len(ids), {"kv_bytes": kv.nbytes, "checkpoint": p["checkpoint"]}

    def _llm_decode(self, p: dict) -> tuple[Any, int, dict]:
        gen = self.engine(p["checkpoint"]).decode(p["kv"])
        return gen, len(gen.token_ids), {}

    def _llm_aggregated(self, p: dict) -> tuple[Any, int, dict]:
        if p.get("endpoint"):
            from terrazzo.runtime.executors.llm_http import OpenAIClient

            client = self._get("http", p["endpoint"], lambda: OpenAIClient(p["endpoint"], api_key=p.get("api_key"),
                                                                          timeout_s=self.config.op_timeout_s))
            gen = client.complete(p["prompt"], model=p["served_name"], max_tokens=p["max_new_tokens"])
            return gen, len(gen.token_ids), {"endpoint": p["endpoint"]}
        eng = self.engine(p["checkpoint"])
        gen = eng.generate(p.get("prompt_ids") or eng.encode(p["prompt"]), p["max_new_tokens"])
        return gen, len(gen.token_ids), {}

    def _embed(self, p: dict) -> tuple[Any, int, dict]:
        from terrazzo.runtime.executors.vector import Embedder

        emb = self._get("embed", p["model_dir"], lambda: Embedder(p["model_dir"]))
        return emb.encode(p["texts"]), 0, {}

    def _ann_search(self, p: dict) -> tuple[Any, int, dict]:
        from terrazzo.runtime.executors.vector import VectorIndex

        idx = self._get("index", p["index_dir"], lambda: VectorIndex(Path(p["index_dir"])))
        return idx.search(p["vector"], p["k"]), 0, {}

    def _tool_lookup(self, p: dict) -> tuple[Any, int, dict]:
        """Resolve the tool's target: import the callable, or validate the URL (tool.lookup in the IR)."""
        if p.get("function"):
            from terrazzo.runtime.executors.tools import resolve_callable

            resolve_callable(p["function"], self.config.base_dir)
        elif not str(p.get("endpoint", "")).startswith(("http://", "https://")):
            raise ExecutionError(f"tool endpoint {p.get('endpoint')!r} is not an http(s) URL",
                                 fix="set the tool's endpoint, or map it to a function in the run config's tools:")
        return p, 0, {}

    def _tool_compute(self, p: dict) -> tuple[Any, int, dict]:
        from terrazzo.runtime.executors.tools import call_http, call_python

        t = p["target"]
        if t.get("function"):
            return call_python(t["function"], self.config.base_dir, p["query"], p["args"]), 0, {}
        return call_http(t["endpoint"], p["query"], p["args"], timeout_s=t["timeout_s"], retries=t["retries"],
                         max_response_bytes=t["max_response_bytes"]), 0, {}

    def _compute(self, p: dict) -> tuple[Any, int, dict]:
        if not p.get("function"):
            return p["message"], 0, {"mode": "identity (node has no function)"}
        from terrazzo.runtime.executors.tools import resolve_callable

        out = resolve_callable(p["function"], self.config.base_dir)(p["message"])
        return out, 0, {}

    def _stt(self, p: dict) -> tuple[Any, int, dict]:
        from terrazzo.runtime.executors.speech import transcribe

        a = self.config.audio
        text, mode = transcribe(p["text"], a.stt_endpoint, a.stt_model, self.config.op_timeout_s)
        return text, 0, {"mode": mode}

    def _tts(self, p: dict) -> tuple[Any, int, dict]:
        from terrazzo.runtime.executors.speech import synthesize

        a = self.config.audio
        out_dir = self.config.path(self.config.state_dir) / "audio"  # type: ignore[operator]
        out, mode = synthesize(p["text"], a.tts_endpoint, a.tts_model, a.tts_voice, out_dir, p["name"],
                               self.config.op_timeout_s)
        return out, 0, {"mode": mode}

    def _memory(self):  # -> MemoryStore
        from terrazzo.runtime.executors.memory import MemoryStore

        db = self.config.path(self.config.state_dir) / "memory.sqlite"  # type: ignore[operator]
        return self._get("memory", str(db), lambda: MemoryStore(db))

    def _memory_load(self, p: dict) -> tuple[Any, int, dict]:
        return self._memory().load(p["store"], p["session"]), 0, {}

    def _memory_store(self, p: dict) -> tuple[Any, int, dict]:
        self._memory().store(p["store"], p["session"], p["text"])
        return None, 0, {}
