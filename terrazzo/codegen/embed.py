"""Sentence embeddings through compiled llvm-cpu artifacts: tokenise, pad each chunk of texts to the
smallest compiled (batch, sequence) bucket that holds it, run the module. Chunks no artifact fits
go to PyTorch; `last_backend` says which ran."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from terrazzo.codegen.compile import EMBED_BUCKETS, Target, built_operator, cache_dir
from terrazzo.codegen.operators import embed_operator
from terrazzo.codegen.runner import IreeFunction

HOST = Target("llvm-cpu", "host")


def find_artifacts(model_dir: str | Path, root: str | Path | None = None,
                   buckets: tuple[tuple[int, int], ...] = EMBED_BUCKETS) -> dict[tuple[int, int], Path]:
    """(batch, seq) → compiled host artifact already in the cache (none are compiled here)."""
    out = {}
    for batch, seq in buckets:
        op = embed_operator(batch, seq, model_dir)
        _, _, weights = built_operator(op)
        key = op.key(weights, HOST.flags)
        path = cache_dir(root) / f"{op.name}.{HOST.name}.{key}.vmfb"
        if path.is_file():
            out[(batch, seq)] = path
    return out


class IreeEncoder:
    def __init__(self, model_dir: str | Path, artifacts: dict[tuple[int, int], Path],
                 fallback: Callable[[list[str]], np.ndarray]) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.functions = {shape: IreeFunction(path) for shape, path in sorted(artifacts.items())}
        self.fallback = fallback
        self.last_backend = "iree"

    def encode(self, texts: list[str]) -> np.ndarray:
        widest = max(b for b, _ in self.functions) if self.functions else 0
        out, used = [], set()
        for i in range(0, len(texts), max(widest, 1)):
            chunk = texts[i:i + max(widest, 1)]
            vecs, how = self._chunk(chunk)
            out.append(vecs)
            used.add(how)
        self.last_backend = "+".join(sorted(used))
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def _chunk(self, texts: list[str]) -> tuple[np.ndarray, str]:
        longest = max(len(ids) for ids in self.tokenizer(texts)["input_ids"])
        fits = [(b, s) for (b, s) in self.functions if b >= len(texts) and s >= longest]
        if not fits:
            return self.fallback(texts), "torch"
        batch, seq = min(fits, key=lambda bs: bs[0] * bs[1])
        enc = self.tokenizer(texts, padding="max_length", max_length=seq, truncation=True, return_tensors="np")
        ids = np.zeros((batch, seq), dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.int64)
        ids[: len(texts)], mask[: len(texts)] = enc["input_ids"], enc["attention_mask"]
        mask[len(texts):, 0] = 1  # padding rows attend to one token, so they pool without dividing by zero
        return self.functions[(batch, seq)](ids, mask)[: len(texts)], "iree"
