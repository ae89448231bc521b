"""A tiny random-weight Llama checkpoint, written by transformers' own `save_pretrained`.

No weights can be downloaded here, so tests and the demo need a checkpoint made on the spot that
still goes through the loading path a real one uses (config.json + safetensors + tokenizer files).
Its weights are RANDOM: its text is gibberish and says nothing about any real model's quality.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_FORMAT = 2  # 2: head size 32 (vLLM's CPU attention takes multiples of 32), a chat template
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: this tiny Llama checkpoint is for plumbing tests only; its output is gibberish."
# "role: content" lines, then "assistant:" (the shape of runtime/serve.py's chat prompts), as Jinja
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
_CORPUS = (
    "the customer asked about the order status and the agent looked it up in the help centre. "
    "a voice agent turns speech into text, thinks with a language model, may search the web, then speaks. "
    "prefill reads the prompt once; decode writes one token at a time and reuses the key value cache. "
    "where is my order? my parcel is late. how do I return an item? what is the refund policy? "
    "search the web for the weather in paris. tell me a joke about computers. 0123456789 ,.;:!?'\"()-"
)


def _tokenizer(vocab_size: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    out.chat_template = CHAT_TEMPLATE  # so servers (vLLM) answer /v1/chat/completions, not 400
    return out


def make_tiny_checkpoint(directory: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2,
                         heads: int = 2, kv_heads: int = 1, vocab_size: int = 512) -> str:
    """Write a tiny Llama (GQA, `layers` layers) with random weights and a small BPE tokenizer to `directory`.

    Deterministic for a given seed, so two calls give the same checkpoint. Returns the directory. The
    default head size (64 / 2 = 32) is one vLLM's CPU attention supports (multiples of 32), so the same
    checkpoint serves on the built-in engine and on vLLM.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        f"# terrazzo tiny checkpoint\n\n{RANDOM_WEIGHTS_NOTE}\n\n"
        f"Llama architecture: {layers} layers, hidden {hidden}, {heads} heads ({kv_heads} KV heads), "
        f"vocab {len(tokenizer)}, seed {seed}. Made by `terrazzo models make-tiny` through "
        "transformers' save_pretrained, so it loads exactly like a real Hugging Face checkpoint.\n")
    (out / "terrazzo.json").write_text(json.dumps({"random_weights": True, "seed": seed, "note": RANDOM_WEIGHTS_NOTE,
                                                   "format": TINY_FORMAT}))
    return str(out)


def is_stale_tiny(directory: str | Path) -> bool:
    """A tiny checkpoint written by an older terrazzo (head size 16: vLLM cannot serve it); remake it."""
    marker = Path(directory) / "terrazzo.json"
    return marker.exists() and json.loads(marker.read_text()).get("format", 1) < TINY_FORMAT


def is_random_checkpoint(directory: str | Path) -> bool:
    marker = Path(directory) / "terrazzo.json"
    return marker.exists() and bool(json.loads(marker.read_text()).get("random_weights"))
