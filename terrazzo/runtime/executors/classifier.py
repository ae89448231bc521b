"""The privacy filter as a compute node:
`{kind: compute, function: "terrazzo.runtime.executors.classifier:pii_filter"}`. It scores the
message's text with the byte-level classifier (terrazzo/codegen/pii.py), through the compiled
llvm-cpu artifact when `terrazzo compile --emit vmfb` made one, else in PyTorch, and adds
`pii: {score, flagged, backend}` to the message. A demonstration filter trained on synthetic data."""

from __future__ import annotations

import os
from typing import Any

_MODEL: dict[str, Any] = {}


def _scorer() -> tuple[Any, str]:
    if "fn" not in _MODEL:
        from terrazzo.codegen.compile import Target, built_operator, cache_dir
        from terrazzo.codegen.operators import pii_operator
        from terrazzo.codegen.runner import IreeFunction

        root = os.environ.get("TERRAZZO_ARTIFACTS")
        op = pii_operator(1, root)
        net, _, weights = built_operator(op)
        host = Target("llvm-cpu", "host")
        path = cache_dir(root) / f"{op.name}.{host.name}.{op.key(weights, host.flags)}.vmfb"
        if path.is_file():
            _MODEL["fn"], _MODEL["backend"] = IreeFunction(path), "iree"
        else:
            import torch

            def run(x: Any) -> Any:
                with torch.no_grad():
                    return net(torch.from_numpy(x)).numpy()

            _MODEL["fn"], _MODEL["backend"] = run, "torch"
    return _MODEL["fn"], _MODEL["backend"]


def pii_filter(message: dict[str, Any], threshold: float = 0.5) -> dict[str, Any]:
    from terrazzo.codegen.pii import encode

    fn, backend = _scorer()
    score = float(fn(encode([str(message.get("text", ""))]))[0])
    return {**message, "pii": {"score": score, "flagged": score >= threshold, "backend": backend}}
