"""Serving-engine identity: which engine runs a pool, and at which version.

One name per engine, read by the cost model (efficiency is per device *and* engine), the simulator (its
scheduler), the runtime (what to launch) and `deploy` (which image and flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Engine(StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    TRTLLM = "trtllm"
    TGI = "tgi"
    LLAMACPP = "llamacpp"
    GAUDI = "gaudi"  # Intel's optimum-habana / vLLM-fork stack on Gaudi
    BUILTIN = "builtin"  # terrazzo's own PyTorch engine (runtime/executors/llm_engine.py)


@dataclass(frozen=True)
class EngineVersion:
    """An engine and its version string as the engine reports it ("0.32.0"); "" when unknown."""

    engine: Engine
    version: str = ""

    def __str__(self) -> str:
        return f"{self.engine.value}-{self.version}" if self.version else self.engine.value
