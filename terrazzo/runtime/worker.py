"""What runs inside a worker (a local process or a Ray actor): one `WorkerState` that loads executors
lazily and caches them, so a pool's worker pays for loading a checkpoint or index once."""

from __future__ import annotations

import itertools
import os
import pickle
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.runtime.config import RunConfig
from terrazzo.runtime.failures import ExecutionError, SegmentFailed


@dataclass(frozen=True)
class OpCall:
    request_id: str
    op: str          # granular op name from the plan, e.g. "think.prefill"
    kind: str        # executor: llm.prefill, llm.decode, llm.aggregated, embed, ann.search, tool.lookup, ...
    payload: Any
    attempt: int = 0
    stream: bool = False  # someone listens: send events (decode tokens, fused ops' starts/ends) while running


Emit = Callable[[dict[str, Any]], None]


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
        self._emit: Emit | None = None   # set while an op with stream=True runs
        self._op = self._request = ""
        self.report_progress: Callable[[int], None] = lambda index: None  # the backend may publish it
        self._segments: dict[str, tuple] = {}

    def _get(self, kind: str, key: str, make: Any) -> Any:
        if (kind, key) not in self._cache:
            self._cache[(kind, key)] = make()
        return self._cache[(kind, key)]

    def engine(self, checkpoint: str):  # -> LlmEngine
        from terrazzo.runtime.executors.llm_engine import LlmEngine

        return self._get("llm", checkpoint, lambda: LlmEngine(checkpoint, threads=1,
                                                              max_prompt_tokens=self.config.max_prompt_tokens))

    def execute(self, call: OpCall, emit: Emit | None = None) -> OpResult:
        """Run one op; any failure surfaces as ExecutionError naming the op (never a bare traceback).
        `emit` receives events while it runs (decode tokens as they are produced)."""
        t0 = time.perf_counter()
        self._emit, self._op, self._request = emit, call.op, call.request_id
        try:
            value, tokens, info = getattr(self, "_" + call.kind.replace(".", "_"))(call.payload)
        except SegmentFailed:
            raise
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
        finally:
            self._emit = None
        return OpResult(value, time.perf_counter() - t0, self.name, self.pid, tokens, info)

    def _tokens(self, eng: Any, ids: Iterable[int]) -> list[int]:
        """Drain a decode iterator; when streaming, emit one `token` event per token as it is produced
        (text delta of the incremental detokenisation; held back while it ends in a partial character)."""
        out: list[int] = []
        emit, op, shown = self._emit, self._op, ""
        for t in ids:
            out.append(t)
            if emit is not None:
                text = eng.tokenizer.decode(out, skip_special_tokens=True)
                clean = text.startswith(shown) and not text.endswith("\ufffd")
                emit({"type": "token", "op": op, "index": len(out) - 1, "token_id": t,
                      "text": text[len(shown):] if clean else ""})
                shown = text if clean else shown
        if emit is not None:
            final = eng.tokenizer.decode(out, skip_special_tokens=True)
            if final != shown and final.startswith(shown):  # flush what was held back
                emit({"type": "token", "op": op, "index": len(out), "token_id": None, "text": final[len(shown):],
                      "flush": True})
        return out

    # --- executors: payload -> (value, tokens, info) -------------------------------------------------
    def _noop(self, p: Any) -> tuple[Any, int, dict]:
        return p, 0, {}

    def _segment(self, p: dict) -> tuple[Any, int, dict]:
        """A fused segment: the nodes' programs run back to back here, each op through `execute` (so
        errors name the op), reporting which op runs (for its own timeout) and, when streaming, each op's
        start and end. Returns the output message and per-op timings; an op's failure raises
        SegmentFailed with the timings of the ops before it."""
        from terrazzo.runtime.program import steps

        if p["key"] not in self._segments:
            self._segments[p["key"]] = pickle.loads(p["programs"])
        emit, rid = self._emit, self._request
        done: list[dict[str, Any]] = []
        msg, tokens, t0, i = p["msg"], 0, time.perf_counter(), 0
        for prog in self._segments[p["key"]]:
            gen = steps(prog, msg, rid)
            try:
                op, kind, payload = next(gen)
                while True:
                    self.report_progress(i)
                    if emit is not None and i > 0:
                        emit({"type": "op_start", "op": op})
                    start_s = time.perf_counter() - t0
                    try:
                        res = self.execute(OpCall(rid, op, kind, payload, stream=emit is not None), emit)
                    except ExecutionError as exc:
                        raise SegmentFailed(exc, done) from None
                    done.append({"op": op, "start_s": start_s, "exec_s": res.exec_s, "tokens": res.tokens,
                                 "info": res.info, "worker": self.name})
                    tokens += res.tokens
                    if emit is not None:
                        emit({"type": "op_end", "op": op, "exec_s": res.exec_s, "tokens": res.tokens,
                              "worker": self.name, "ok": True})
                    i += 1
                    op, kind, payload = gen.send(res)
            except StopIteration as stop:
                msg = stop.value
        return {"msg": msg, "done": done}, tokens, {}

    def _warmup(self, items: list[dict[str, str]]) -> tuple[Any, int, dict]:
        from terrazzo.runtime.executors.vector import VectorIndex

        for it in items:
            if it["kind"] == "llm":
                self.engine(it["key"])
            elif it["kind"] == "embed":
                self._get("embed", it["key"], lambda k=it["key"]: self._embedder(k))
            elif it["kind"] == "index":
                self._get("index", it["key"], lambda k=it["key"]: VectorIndex(Path(k)))
        return None, 0, {}

    def _llm_prefill(self, p: dict) -> tuple[Any, int, dict]:
        eng = self.engine(p["checkpoint"])
        ids = p.get("prompt_ids") or eng.encode(p["prompt"])
        kv = eng.prefill(list(ids), p["max_new_tokens"], p.get("kv_scope"))
        return kv, len(ids), {"kv_bytes": kv.nbytes, "checkpoint": p["checkpoint"],
                              "cached_tokens": kv.meta.get("cached_tokens", 0)}

    def _llm_decode(self, p: dict) -> tuple[Any, int, dict]:
        eng = self.engine(p["checkpoint"])
        gen = eng.generation(self._tokens(eng, eng.iter_decode(p["kv"])), p["kv"].prompt_len)
        return gen, len(gen.token_ids), {}

    def _llm_aggregated(self, p: dict) -> tuple[Any, int, dict]:
        if p.get("endpoint"):
            from terrazzo.runtime.executors.openai_client import OpenAICompatClient

            client = self._get("http", p["endpoint"], lambda: OpenAICompatClient(
                p["endpoint"], api_key=p.get("api_key"), timeout_s=self.config.op_timeout_s))
            on_delta = None
            if self._emit is not None:
                emit, op, n = self._emit, self._op, itertools.count()

                def on_delta(text: str, ids: list[int]) -> None:
                    for j, tid in enumerate(ids or [None]):  # one event per token; the chunk's text on its first
                        emit({"type": "token", "op": op, "index": next(n), "token_id": tid, "text": "" if j else text})
            gen = client.complete(p["prompt"], model=p["served_name"], max_tokens=p["max_new_tokens"],
                                  on_delta=on_delta)
            return gen, len(gen.token_ids), {"endpoint": p["endpoint"], "finish_reason": gen.finish_reason,
                                             "prompt_tokens": gen.prompt_tokens}
        eng = self.engine(p["checkpoint"])
        kv = eng.prefill(list(p.get("prompt_ids") or eng.encode(p["prompt"])), p["max_new_tokens"], p.get("kv_scope"))
        gen = eng.generation(self._tokens(eng, eng.iter_decode(kv)), kv.prompt_len)
        return gen, len(gen.token_ids), {"cached_tokens": kv.meta.get("cached_tokens", 0)}

    def _embed(self, p: dict) -> tuple[Any, int, dict]:
        emb = self._get("embed", p["model_dir"], lambda: self._embedder(p["model_dir"]))
        return emb.encode(p["texts"]), 0, {"backend": emb.backend_used}

    def _embedder(self, model_dir: str) -> Any:
        from terrazzo.runtime.executors.vector import Embedder

        return Embedder(model_dir, self.config.embed_backend, self.config.path(self.config.artifacts_dir))

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

        def call() -> str:
            if t.get("function"):
                return call_python(t["function"], self.config.base_dir, p["query"], p["args"])
            return call_http(t["endpoint"], p["query"], p["args"], timeout_s=t["timeout_s"], retries=t["retries"],
                             max_response_bytes=t["max_response_bytes"], method=t.get("method", "POST"),
                             idempotent=bool(t.get("idempotent")))

        if t.get("idempotent"):
            return call(), 0, {}
        from terrazzo.runtime.idempotency import effect_key

        store = self._get("idempotency", "", self._idempotency)  # a tool with side effects: at most once per id
        wait_s = float(t.get("timeout_s") or self.config.op_timeout_s) * (int(t.get("retries") or 0) + 1)
        return store.once(effect_key(self._request, self._op, p["query"], p["args"]), self._request, self._op,
                          call, wait_s), 0, {"at_most_once": True}

    def _idempotency(self):  # -> IdempotencyStore
        from terrazzo.runtime.idempotency import IdempotencyStore

        return IdempotencyStore.in_dir(self.config.path(self.config.state_dir))

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
        out_dir = self.config.path(self.config.state_dir) / "audio"
        out, mode = synthesize(p["text"], a.tts_endpoint, a.tts_model, a.tts_voice, out_dir, p["name"],
                               self.config.op_timeout_s, a.tts_format)
        return out, 0, {"mode": mode}

    def _memory(self):  # -> MemoryStore
        from terrazzo.runtime.executors.memory import MemoryStore

        db = self.config.path(self.config.state_dir) / "memory.sqlite"
        return self._get("memory", str(db), lambda: MemoryStore(db))

    def _memory_load(self, p: dict) -> tuple[Any, int, dict]:
        return self._memory().load(p["store"], p["session"]), 0, {}

    def _memory_store(self, p: dict) -> tuple[Any, int, dict]:
        self._memory().store(p["store"], p["session"], p["text"], key=p.get("key"))
        return None, 0, {}
