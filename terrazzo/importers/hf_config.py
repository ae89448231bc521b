"""`terrazzo import hf DIR|config.json`: a Hugging Face model config as a sourced catalog entry.

The shape fields are read from config.json as the model's own code reads them (Llama, Mistral, Qwen 2/3,
Qwen MoE, Gemma 1/2/3, Mixtral, DeepSeek V2/V3 with MLA and shared experts); the parameter counts are
derived from those shapes by summing every weight matrix, norm and embedding the architecture has,
so each number's source says which file it came from and how. A config of another family is refused
with the list of supported ones rather than guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from terrazzo.catalog.catalog_schema import MlaShape, ModelSpec, Sourced
from terrazzo.errors import CatalogError

FAMILIES = {
    "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2_moe": "qwen2-moe",
    "qwen3_moe": "qwen3-moe", "gemma": "gemma", "gemma2": "gemma-2", "gemma3": "gemma-3", "gemma3_text": "gemma-3",
    "mixtral": "mixtral", "deepseek_v2": "deepseek", "deepseek_v3": "deepseek",
}
_FOUR_NORMS = {"gemma2", "gemma3", "gemma3_text"}  # pre- and post-norm around attention and the MLP
_QKV_BIAS = {"qwen2", "qwen2_moe"}                # attention q/k/v projections carry a bias
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text"}


@dataclass(frozen=True)
class HfModel:
    """A config.json's shape and its derived parameter counts."""

    name: str
    model_type: str
    config_path: str
    shape_source: str
    spec: ModelSpec
    total_params: float
    active_params: float

    def catalog_yaml(self) -> str:
        """A catalog file defining this model (`--catalog FILE`, `terrazzo hw validate FILE`)."""
        body = self.spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        body = {"name": self.spec.name, **body}
        head = (f"# Imported by `terrazzo import hf {self.config_path}`: shapes from its config.json, parameter\n"
                "# counts derived from the shapes (terrazzo/importers/hf_config.py).\n")
        return head + yaml.safe_dump({"models": {self.spec.name: body}}, sort_keys=False, width=120)


def read_config(path: str | Path) -> tuple[dict[str, Any], Path]:
    """config.json (or a checkpoint folder holding one) as a dict; multimodal wrappers' text_config
    is merged over the top level, which is what the language model reads."""
    p = Path(path)
    file = p / "config.json" if p.is_dir() else p
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"{file}: not found. Fix: pass a checkpoint folder with a config.json, or the file "
                           "itself") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{file}: cannot read: {exc}. Fix: pass a readable config.json") from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg}). Fix: pass the model's config.json"
                           ) from None
    if not isinstance(data, dict):
        raise CatalogError(f"{file}: expected a JSON object. Fix: pass the model's config.json")
    text = data.get("text_config")
    if isinstance(text, dict):
        data = {**{k: v for k, v in data.items() if k != "text_config"}, **text,
                "model_type": text.get("model_type", data.get("model_type"))}
    return data, file


def _need(cfg: dict[str, Any], key: str, file: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or value <= 0:
        raise CatalogError(f"{file}: {key}: missing or not a positive integer (got {value!r}). Fix: use the "
                           "model's published config.json")
    return value


def _name(cfg: dict[str, Any], file: Path) -> str:
    raw = str(cfg.get("_name_or_path") or "").rstrip("/")
    base = raw.rsplit("/", 1)[-1] if raw and not raw.startswith((".", "/")) else file.parent.name
    name = re.sub(r"[^a-z0-9.]+", "-", base.lower()).strip("-")
    return name or str(cfg.get("model_type"))


def attention_params(cfg: dict[str, Any], hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """Weights of one attention block: q, k, v, o projections (GQA), or MLA's low-rank projections."""
    mt = cfg["model_type"]
    if cfg.get("kv_lora_rank"):
        nope, rope = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"])
        v_dim, kv_rank, q_rank = int(cfg["v_head_dim"]), int(cfg["kv_lora_rank"]), cfg.get("q_lora_rank")
        q = (hidden * q_rank + q_rank + q_rank * heads * (nope + rope)) if q_rank else hidden * heads * (nope + rope)
        kv = hidden * (kv_rank + rope) + kv_rank + kv_rank * heads * (nope + v_dim)
        return q + kv + heads * v_dim * hidden
    q, kv = heads * head_dim, kv_heads * head_dim
    params = hidden * q + 2 * hidden * kv + q * hidden
    if mt in _QKV_BIAS or cfg.get("attention_bias"):
        params += q + 2 * kv + (hidden if cfg.get("attention_bias") else 0)
    if mt in _QK_NORM:
        params += 2 * head_dim
    return params


def _moe_layers(cfg: dict[str, Any], layers: int) -> list[bool]:
    """Which decoder layers route to experts (the rest have a dense MLP)."""
    mt = cfg["model_type"]
    if mt.startswith("deepseek"):
        first, freq = int(cfg.get("first_k_dense_replace", 0)), int(cfg.get("moe_layer_freq", 1))
        return [i >= first and i % freq == 0 for i in range(layers)]
    if mt in ("qwen2_moe", "qwen3_moe"):
        dense = set(cfg.get("mlp_only_layers") or [])
        step = int(cfg.get("decoder_sparse_step", 1))
        return [i not in dense and (i + 1) % step == 0 for i in range(layers)]
    return [True] * layers if mt == "mixtral" else [False] * layers


def import_hf(path: str | Path, name: str | None = None, source: str | None = None) -> HfModel:
    """Read a Hugging Face config.json into a catalog ModelSpec with derived parameter counts.

    `name`: the catalog name (default: from `_name_or_path`, else the folder's name); `source`: the
    config's URL to record as `shape_source` (default: the file it was read from)."""
    cfg, file = read_config(path)
    mt = str(cfg.get("model_type") or "")
    if mt not in FAMILIES:
        raise CatalogError(f"{file}: model_type {mt!r} is not a supported family. Fix: import one of "
                           f"{', '.join(sorted(FAMILIES))}, or write the catalog entry by hand (docs/cost-model.md)")
    layers, hidden = _need(cfg, "num_hidden_layers", file), _need(cfg, "hidden_size", file)
    heads, vocab = _need(cfg, "num_attention_heads", file), _need(cfg, "vocab_size", file)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    mla = bool(cfg.get("kv_lora_rank"))
    head_dim = int(cfg["v_head_dim"]) if mla else int(cfg.get("head_dim") or hidden // heads)
    ffn = _need(cfg, "intermediate_size", file)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0)
    active_experts = int(cfg.get("num_experts_per_tok") or 0) if experts else 0
    expert_ffn = int(cfg.get("moe_intermediate_size") or ffn) if experts else None
    shared_ffn = int(cfg.get("shared_expert_intermediate_size") or 0)
    shared = int(cfg.get("n_shared_experts") or 0) or (round(shared_ffn / expert_ffn) if shared_ffn and expert_ffn
                                                       else 0)
    moe = _moe_layers(cfg, layers) if experts else [False] * layers

    attn = attention_params(cfg, hidden, heads, kv_heads, head_dim)
    norms = (4 if mt in _FOUR_NORMS else 2) * hidden
    dense_mlp = 3 * hidden * ffn  # every supported family has a gated MLP (gate, up, down)
    expert = 3 * hidden * (expert_ffn or 0)
    shared_mlp = 3 * hidden * shared_ffn + hidden if shared_ffn else shared * expert  # Qwen MoE: gated shared expert
    router = hidden * experts
    total = active = 0
    for is_moe in moe:
        layer = attn + norms
        total += layer + (experts * expert + shared_mlp + router if is_moe else dense_mlp)
        active += layer + (active_experts * expert + shared_mlp + router if is_moe else dense_mlp)
    embed = vocab * hidden
    tied = bool(cfg.get("tie_word_embeddings", mt.startswith("gemma")))
    outside = embed * (1 if tied else 2) + hidden  # embeddings, LM head unless tied, final norm
    total, active = total + outside, active + outside

    catalog_name = name or _name(cfg, file)
    where = source or str(file)
    how = f"derived: summed weight shapes of {where} (terrazzo import hf)"
    spec = ModelSpec(
        name=catalog_name, kind="llm", family=FAMILIES[mt], layers=layers, hidden=hidden, heads=heads,
        kv_heads=kv_heads, head_dim=head_dim, ffn=ffn, vocab=vocab,
        max_context=int(cfg.get("max_position_embeddings") or 0) or 4096,
        params_b=Sourced(value=round(total / 1e9, 4), source=how),
        active_params_b=Sourced(value=round(active / 1e9, 4), source=how,
                                note=f"{active_experts} of {experts} routed experts per token"
                                     + (f" plus {shared} shared" if shared else "")) if experts else None,
        experts=experts, active_experts=active_experts, shared_experts=shared, expert_ffn=expert_ffn,
        dense_layers=sum(1 for m in moe if not m) if experts and not all(moe) else 0,
        mla=MlaShape(kv_lora_rank=int(cfg["kv_lora_rank"]), qk_rope_head_dim=int(cfg["qk_rope_head_dim"]))
        if mla else None,
        shape_source=where if len(where) >= 8 else f"file: {where}",
    )
    return HfModel(catalog_name, mt, str(path), where, spec, float(total), float(active))
