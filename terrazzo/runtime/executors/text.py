"""Messages that flow along edges, prompts built from them, tool-call markers parsed from LLM output,
and the small safe expression language of edge `condition`s."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def new_message(text: str, session: str) -> dict[str, Any]:
    return {"input": text, "text": text, "session": session, "context": [], "history": [], "tool_call": None,
            "tool_args": {}, "tool_results": [], "path": []}


def merge(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Join of several inputs (join: all): lists concatenate (deduplicated), scalars from the last input."""
    out = dict(messages[-1])
    for key in ("context", "history", "tool_results", "path"):
        seen: list[Any] = []
        for m in messages:
            seen.extend(x for x in m.get(key, []) if x not in seen)
        out[key] = seen
    return out


def build_prompt(msg: dict[str, Any]) -> str:
    parts = []
    if msg.get("history"):
        parts.append("Earlier:\n" + "\n".join(msg["history"][-4:]))
    if msg.get("context"):
        parts.append("Context:\n" + "\n".join(f"- {c}" for c in msg["context"]))
    if msg.get("tool_results"):
        parts.append("Tool results:\n" + "\n".join(msg["tool_results"]))
    parts.append(f"User: {msg.get('input', '')}\nAssistant:")
    return "\n\n".join(parts)


def parse_tool_call(text: str) -> tuple[str | None, dict[str, Any]]:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (or `<tool_call>name</tool_call>`)."""
    m = TOOL_CALL.search(text)
    if not m:
        return None, {}
    body = m.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.strip() or None, {}
    if isinstance(data, dict):
        args = data.get("arguments", {})
        return (str(data["name"]) if "name" in data else None), (args if isinstance(args, dict) else {"value": args})
    return str(data), {}


class ConditionUnknown(Exception):
    """The condition uses a name or construct the runtime cannot evaluate: fall back to probabilities."""


_OPS = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b, ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b,
        ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b, ast.Is: lambda a, b: a is b,
        ast.IsNot: lambda a, b: a is not b}


def evaluate(condition: str, names: dict[str, Any]) -> bool:
    """Evaluate e.g. `tool_call == 'search'` or `'refund' in text and not tool_call` without eval()."""
    try:
        tree = ast.parse(condition, mode="eval")
    except SyntaxError as exc:
        raise ConditionUnknown(str(exc)) from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ConditionUnknown(f"unknown name '{node.id}'")
            return names[node.id]
        if isinstance(node, ast.BoolOp):
            vals = (ev(v) for v in node.values)
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand)
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = ev(right_node)
                if type(op) not in _OPS or not _OPS[type(op)](left, right):
                    if type(op) not in _OPS:
                        raise ConditionUnknown(f"operator {type(op).__name__}")
                    return False
                left = right
            return True
        if isinstance(node, ast.Tuple | ast.List):
            return [ev(e) for e in node.elts]
        raise ConditionUnknown(f"unsupported expression {type(node).__name__}")

    try:
        return bool(ev(tree))
    except TypeError as exc:
        raise ConditionUnknown(str(exc)) from None


def condition_names(msg: dict[str, Any]) -> dict[str, Any]:
    return {"tool_call": msg.get("tool_call"), "tool_args": msg.get("tool_args", {}), "text": msg.get("text", ""),
            "input": msg.get("input", ""), "context": msg.get("context", []),
            "tool_results": msg.get("tool_results", []), "rounds": len(msg.get("tool_results", [])),
            "None": None}
