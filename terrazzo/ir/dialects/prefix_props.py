"""The prefix properties an LLM op carries (from the spec's `prefix:`), and their verifier.

`prefix` names the sources in front of the call's new input, in order (`system_prompt:NAME`,
`context:NAME`, `conversation`), `prefix_tokens` their mean sizes per visit; `input_tokens` is the full
input (prefix + new), what a cold prefill processes. decompose-kv adds `cached_tokens` (read from resident
KV) and `new_tokens` (computed), which sum to the mean input.
"""

from __future__ import annotations

import math

from xdsl.dialects.builtin import ArrayAttr, DenseArrayBase, FloatAttr, StringAttr, f64

from terrazzo.ir.dialects.node_op import NodeOp, check_positive, mean_prop

CONVERSATION = "conversation"
SHARED_KINDS = ("system_prompt", "context")


def prefix_keys(op: NodeOp) -> list[str]:
    attr = op.properties.get("prefix")
    return [a.data for a in attr.data if isinstance(a, StringAttr)] if isinstance(attr, ArrayAttr) else []


def prefix_sizes(op: NodeOp) -> list[float]:
    attr = op.properties.get("prefix_tokens")
    return [float(x) for x in attr.get_values()] if isinstance(attr, DenseArrayBase) else []


def optional_float(op: NodeOp, name: str) -> float | None:
    attr = op.properties.get(name)
    return attr.value.data if isinstance(attr, FloatAttr) else None


def verify_prefix(op: NodeOp) -> None:
    keys, sizes = prefix_keys(op), prefix_sizes(op)
    if ("prefix" in op.properties) != ("prefix_tokens" in op.properties):
        raise op.fail("prefix and prefix_tokens come together")
    attr = op.properties.get("prefix")
    if attr is not None and not (isinstance(attr, ArrayAttr) and all(isinstance(a, StringAttr) for a in attr.data)):
        raise op.fail("prefix must be an array of strings")
    size_attr = op.properties.get("prefix_tokens")
    if isinstance(size_attr, DenseArrayBase) and size_attr.elt_type != f64:
        raise op.fail("prefix_tokens must be an array<f64>")
    if len(keys) != len(sizes):
        raise op.fail(f"prefix has {len(keys)} sources for {len(sizes)} prefix_tokens")
    for key, size in zip(keys, sizes, strict=True):
        kind, _, name = key.partition(":")
        if not (key == CONVERSATION or (kind in SHARED_KINDS and name)):
            raise op.fail(f"prefix source '{key}' is not 'conversation', 'system_prompt:NAME' or 'context:NAME'")
        check_positive(op, f"prefix_tokens of '{key}'", size)
    total = mean_prop(op, "input_tokens")
    if sum(sizes) > total * (1 + 1e-9):
        raise op.fail(f"prefix_tokens sum to {sum(sizes):g}, more than the input's {total:g} tokens")
    new, cached = optional_float(op, "new_tokens"), optional_float(op, "cached_tokens")
    if (new is None) != (cached is None):
        raise op.fail("new_tokens and cached_tokens come together")
    if new is not None and cached is not None:
        check_positive(op, "new_tokens", new)
        check_positive(op, "cached_tokens", cached)
        if cached > sum(sizes) * (1 + 1e-9) + 1e-9:
            raise op.fail(f"cached_tokens = {cached:g} is more than the prefix ({sum(sizes):g} tokens)")
        if not math.isclose(new + cached, total, rel_tol=1e-6, abs_tol=1e-6):
            raise op.fail(f"new_tokens + cached_tokens = {new + cached:g}, not the input's {total:g} tokens")
