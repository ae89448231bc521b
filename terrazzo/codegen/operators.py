"""The tensor operators terrazzo lowers: the embedding model's forward pass (pooling and
normalisation included) and the privacy filter, each at fixed input shapes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from terrazzo.codegen.compile import Operator, cache_dir

EMBED = "embed.minilm"
PII = "pii.filter"


def embed_operator(batch: int, seq: int, model_dir: str | Path | None = None) -> Operator:
    def build() -> tuple[Any, tuple[Any, ...], str]:
        import torch

        from terrazzo.codegen.encoder import load_encoder, minilm_dir

        folder = Path(model_dir) if model_dir else minilm_dir()
        enc = load_encoder(folder)
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        ids = torch.zeros(batch, seq, dtype=torch.int64)
        return enc, (ids, torch.ones(batch, seq, dtype=torch.int64)), digest

    return Operator(EMBED, ((batch, seq), (batch, seq)), ("i64", "i64"), build, str(model_dir or ""))


def pii_operator(batch: int, root: str | Path | None = None) -> Operator:
    def build() -> tuple[Any, tuple[Any, ...], str]:
        import torch

        from terrazzo.codegen.pii import MAX_BYTES, train

        trained = train(cache_dir(root) / "weights")
        return trained.net, (torch.zeros(batch, MAX_BYTES, dtype=torch.int64),), trained.weights_sha256

    from terrazzo.codegen.pii import MAX_BYTES

    return Operator(PII, ((batch, MAX_BYTES),), ("i64",), build)
