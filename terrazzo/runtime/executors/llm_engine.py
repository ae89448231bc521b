"""In-process LLM engine on PyTorch + transformers with prefill and decode as separate steps.

Prefill runs the prompt once and returns the first token plus the KV cache as plain bytes
(`KvHandoff`), so the cache can cross a process boundary (pipe, Ray object store) exactly as the
plan's kv.transfer edge says; decode rebuilds the cache in its own process and continues greedily.
Greedy decoding feeds the same tensors `generate` would, so outputs are token-identical to it.

KV kept across calls: a call that names its KV scope (`scope`, the hashed (tenant, session-or-request)
root of runtime/kv_cache.py) leaves its prompt's cache in this process; the scope's next call (a loop's
next iteration, a session's next turn) prefills only the tokens after the longest common prefix with it.
At most `keep_kv_bytes` are kept, least recently used first out; a scope is never served another's.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from terrazzo.runtime.failures import ExecutionError


@dataclass(frozen=True)
class KvHandoff:
    """A request's KV cache after prefill, as bytes: no torch objects, so any transport can carry it."""

    tokens: tuple[int, ...]            # prompt + tokens generated so far (last one not yet in the cache)
    prompt_len: int
    layers: tuple[tuple[bytes, bytes], ...]  # per layer (keys, values), C-contiguous
    shape: tuple[int, ...]             # per tensor: (batch, kv_heads, cached_len, head_dim)
    dtype: str                         # torch dtype name, e.g. "float32"
    eos_token_id: int | None = None
    max_new_tokens: int = 16
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(k) + len(v) for k, v in self.layers)


@dataclass(frozen=True)
class Generation:
    token_ids: tuple[int, ...]   # generated tokens only
    text: str
    prompt_tokens: int
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str | None = None  # as an OpenAI-compatible server said it ("stop", "length"); None: not told


class LlmEngine:
    """One loaded checkpoint; `prefill` and `decode` may run in different processes on the same checkpoint."""

    def __init__(self, checkpoint: str | Path, *, threads: int | None = None, max_prompt_tokens: int = 1024,
                 keep_kv_bytes: int = 256 << 20) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = Path(checkpoint)
        if not (path / "config.json").exists():
            raise ExecutionError(f"LLM checkpoint '{path}' has no config.json",
                                 fix="point the run config's models: entry at a Hugging Face checkpoint directory, "
                                     "or make one with `terrazzo models make-tiny DIR`")
        hf_logging.disable_progress_bar()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.checkpoint = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.max_prompt_tokens = max_prompt_tokens
        self.keep_kv_bytes = keep_kv_bytes
        self._kept: OrderedDict[str, tuple[tuple[int, ...], Any, int]] = OrderedDict()  # scope -> (ids, cache, bytes)

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return ids[-self.max_prompt_tokens:]

    def prefill(self, prompt_ids: list[int], max_new_tokens: int, scope: str | None = None) -> KvHandoff:
        """Run the prompt (after what `scope` already holds of it), pick the first token greedily, and
        export the cache; with a scope, keep the prompt's cache for the scope's next call."""
        torch = self.torch
        cache, cached = self._reuse(scope, prompt_ids)
        ids = torch.tensor([prompt_ids[cached:]], dtype=torch.long)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long),
                             past_key_values=cache, use_cache=True)
        first = int(out.logits[0, -1].argmax())
        cache = out.past_key_values
        layers, shape, dtype = [], (), "float32"
        for layer in cache.layers:
            k, v = layer.keys.contiguous(), layer.values.contiguous()
            shape, dtype = tuple(k.shape), str(k.dtype).removeprefix("torch.")
            layers.append((k.numpy().tobytes(), v.numpy().tobytes()))
        hand = KvHandoff(tokens=(*prompt_ids, first), prompt_len=len(prompt_ids), layers=tuple(layers), shape=shape,
                         dtype=dtype, eos_token_id=self._eos(), max_new_tokens=max_new_tokens,
                         meta={"cached_tokens": cached})
        if scope is not None:
            self._keep(scope, tuple(prompt_ids), cache, hand.nbytes)
        return hand

    def _reuse(self, scope: str | None, prompt_ids: list[int]) -> tuple[Any, int]:
        """(the scope's kept cache cut to the longest common prefix, its length); (None, 0) when none.
        At least the last prompt token is recomputed: its logits give the first output token."""
        kept = self._kept.pop(scope, None) if scope is not None else None
        if kept is None:
            return None, 0
        ids, cache, _ = kept
        n = 0
        limit = min(len(ids), len(prompt_ids) - 1)
        while n < limit and ids[n] == prompt_ids[n]:
            n += 1
        if n == 0:
            return None, 0
        if n < len(ids):
            cache.crop(n - len(ids))  # drop the tail past the common prefix (transformers: a negative count)
        return cache, n

    def _keep(self, scope: str, ids: tuple[int, ...], cache: Any, nbytes: int) -> None:
        if nbytes > self.keep_kv_bytes:
            return
        self._kept[scope] = (ids, cache, nbytes)
        while sum(b for _, _, b in self._kept.values()) > self.keep_kv_bytes:
            self._kept.popitem(last=False)

    @property
    def kept_bytes(self) -> int:
        return sum(b for _, _, b in self._kept.values())

    def _eos(self) -> int | None:
        eos = self.model.generation_config.eos_token_id
        return eos[0] if isinstance(eos, list) else eos

    def _import_cache(self, kv: KvHandoff):  # -> DynamicCache
        import numpy as np
        from transformers import DynamicCache

        torch = self.torch
        np_dtype = np.dtype(kv.dtype)
        pairs = [(torch.from_numpy(np.frombuffer(k, dtype=np_dtype).reshape(kv.shape).copy()),
                  torch.from_numpy(np.frombuffer(v, dtype=np_dtype).reshape(kv.shape).copy())) for k, v in kv.layers]
        if len(pairs) != self.model.config.num_hidden_layers:
            raise ExecutionError(f"KV cache has {len(pairs)} layers but '{self.checkpoint}' has "
                                 f"{self.model.config.num_hidden_layers}",
                                 fix="prefill and decode pools must load the same checkpoint")
        return DynamicCache(pairs, config=self.model.config)

    def iter_decode(self, kv: KvHandoff) -> Iterator[int]:
        """Yield generated token ids one at a time (the first comes from prefill) until the budget or EOS."""
        torch = self.torch
        cache = self._import_cache(kv)
        tokens = list(kv.tokens)
        n = 1
        yield tokens[-1]
        with torch.inference_mode():
            while n < kv.max_new_tokens and tokens[-1] != kv.eos_token_id:
                step = torch.tensor([[tokens[-1]]], dtype=torch.long)
                out = self.model(input_ids=step, attention_mask=torch.ones((1, len(tokens)), dtype=torch.long),
                                 past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                tokens.append(int(out.logits[0, -1].argmax()))
                n += 1
                yield tokens[-1]

    def decode(self, kv: KvHandoff) -> Generation:
        """Continue greedily from an imported cache until `max_new_tokens` or EOS."""
        return self.generation(list(self.iter_decode(kv)), kv.prompt_len)

    def generation(self, generated: list[int], prompt_len: int) -> Generation:
        text = cast(str, self.tokenizer.decode(generated, skip_special_tokens=True))  # one sequence: one string
        return Generation(token_ids=tuple(generated), text=text, prompt_tokens=prompt_len)

    def generate(self, prompt_ids: list[int], max_new_tokens: int, scope: str | None = None) -> Generation:
        """Aggregated serving: prefill and decode in this process (the handoff stays in memory)."""
        return self.decode(self.prefill(prompt_ids, max_new_tokens, scope))

    def reference_generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """transformers' own greedy `generate`: the oracle the disaggregated path must match token for token."""
        torch = self.torch
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        return [int(t) for t in out[0, len(prompt_ids):]]
