"""What one node does, as a sequence of granular ops, written once and driven from two places: the
orchestrator (each op one round trip to its pool) and a worker running a fused segment (consecutive
ops placed on the same pool, run back to back in one round trip, so their messages never cross a pipe).

`steps()` is a generator: it yields `(op, executor kind, payload)`, is sent each op's `OpResult`, and
returns the node's output message. It is pure bookkeeping — every effect happens in the executors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from terrazzo.runtime.executors.text import build_prompt, parse_tool_call
from terrazzo.runtime.failures import ExecutionError

Step = tuple[str, str, Any]  # (granular op, executor kind, payload)

# Executor kinds whose op may run again after its worker died: pure functions of their payload, or
# writes keyed so a second run changes nothing (memory.store, tts). tool.compute depends on the tool.
PURE_KINDS = frozenset({"llm.prefill", "llm.decode", "llm.aggregated", "embed", "ann.search", "tool.lookup",
                        "compute", "stt", "tts", "memory.load", "memory.store", "noop"})


@dataclass(frozen=True)
class NodeProgram:
    path: str                     # node path, sub-agent nodes prefixed ("research/search")
    node: Any                     # the spec node (pydantic, picklable)
    ops: tuple[str, ...]          # its granular ops, in order
    ctx: dict[str, Any] = field(default_factory=dict)  # what the ops need: targets, index dirs, budgets

    def retryable(self, op: str) -> bool:
        """May `op` run a second time after its worker died mid-op? Tools only when declared idempotent."""
        kind = op_kind(self, op)
        if kind == "tool.compute":
            return bool(self.ctx["tool"].get("idempotent"))
        return kind in PURE_KINDS


def op_kind(prog: NodeProgram, op: str) -> str:
    kind = prog.node.kind
    if kind == "llm":
        return {"prefill": "llm.prefill", "decode": "llm.decode"}.get(op.rpartition(".")[2], "llm.aggregated") \
            if prog.ctx["mode"] == "disaggregated" else "llm.aggregated"
    if kind == "memory_lookup":
        return "embed" if op == prog.ops[0] else "ann.search"
    if kind == "tool":
        return "tool.lookup" if len(prog.ops) == 2 and op == prog.ops[0] else "tool.compute"
    return {"memory_load": "memory.load", "memory_store": "memory.store"}.get(kind, kind)


def steps(prog: NodeProgram, msg: dict[str, Any], request_id: str) -> Generator[Step, Any, dict[str, Any]]:
    """The node's ops on `msg`; returns the message its out-edges carry."""
    path, node, ctx = prog.path, prog.node, prog.ctx
    msg = {**msg, "path": [*msg.get("path", []), path]}
    kind = node.kind
    if kind in ("branch", "loop"):
        return msg
    if kind == "llm":
        cap = min(ctx["max_new_tokens"], msg.get("max_new_tokens") or ctx["max_new_tokens"])  # a request may ask less
        base = {"prompt": build_prompt(msg), "max_new_tokens": cap, "kv_scope": msg.get("kv_scope"), **ctx["target"]}
        if ctx["mode"] == "disaggregated":
            pre = yield prog.ops[0], "llm.prefill", base
            res = yield prog.ops[1], "llm.decode", {"kv": pre.value, "checkpoint": ctx["target"]["checkpoint"]}
        else:
            res = yield prog.ops[0], "llm.aggregated", base
        text = res.value.text
        call, args = parse_tool_call(text)
        return {**msg, "text": text, "tool_call": call, "tool_args": args, "llm_tokens": list(res.value.token_ids)}
    if kind == "memory_lookup":
        vec = (yield prog.ops[0], "embed", {"texts": [msg["text"]], "model_dir": ctx["model_dir"]}).value[0]
        hits = (yield prog.ops[1], "ann.search", {"vector": vec, "k": node.k, "index_dir": ctx["index_dir"]}).value
        return {**msg, "context": [*msg["context"], *(h["text"] for h in hits)],
                "hits": [{"source": h["source"], "score": h["score"]} for h in hits]}
    if kind == "embed":
        vec = (yield prog.ops[0], "embed", {"texts": [msg["text"]], "model_dir": ctx["model_dir"]}).value[0]
        return {**msg, "embedding": vec}
    if kind == "tool":
        target = ctx["tool"]
        if len(prog.ops) == 2:
            target = (yield prog.ops[0], "tool.lookup", target).value
        query = str(msg.get("tool_args", {}).get("query") or msg["input"])
        out = (yield prog.ops[-1], "tool.compute", {"target": target, "query": query,
                                                    "args": msg.get("tool_args", {})}).value
        return {**msg, "tool_results": [*msg["tool_results"], f"{node.id}: {out}"], "tool_call": None,
                "tool_args": {}}
    if kind == "stt":
        res = yield prog.ops[0], "stt", {"text": msg["text"]}
        return {**msg, "text": res.value, "input": res.value, "stt_mode": res.info.get("mode")}
    if kind == "tts":
        res = yield prog.ops[0], "tts", {"text": msg["text"], "name": f"{request_id}-{path.replace('/', '_')}"}
        return {**msg, "speech": res.value, "tts_mode": res.info.get("mode")}
    if kind == "memory_load":
        hist = (yield prog.ops[0], "memory.load", {"store": node.store, "session": msg["session"]}).value
        return {**msg, "history": [*msg["history"], *hist]}
    if kind == "memory_store":
        text = f"user: {msg['input']}\nassistant: {msg['text']}"
        # keyed by request, op and content: a retried store (worker died after writing) adds no second row
        key = hashlib.sha256(f"{request_id}\0{prog.ops[0]}\0{text}".encode()).hexdigest()[:32]
        yield prog.ops[0], "memory.store", {"store": node.store, "session": msg["session"], "text": text, "key": key}
        return msg
    if kind == "compute":
        out = (yield prog.ops[0], "compute", {"function": node.function, "message": msg}).value
        if isinstance(out, dict):
            return {**msg, **out}
        text = str(out)
        call, args = parse_tool_call(text)
        return {**msg, "text": text, "tool_call": call, "tool_args": args}
    raise ExecutionError(f"node kind '{kind}' has no executor", op=path)
