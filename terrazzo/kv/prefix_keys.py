"""Prefix keys: the name of the KV a call can reuse, as a hash chain over blocks of its input.

key_0 = H(tenant, scope) and key_i = H(key_{i-1}, block_i), one key per full block of `block_tokens`,
so two calls share key_i exactly when they share the tenant, the scope (session, else request) and
every block up to i. A key never matches across tenants or scopes, whatever the text: the router's
affinity can only send a call to a replica *because of* KV its own tenant and session put there.

Blocks are of token ids when the caller has them, else of the prompt's UTF-8 bytes (`BYTES_PER_BLOCK`
bytes a block): the router runs before the engine tokenises, and a byte block is a stable stand-in
whose boundaries move with the text exactly as token blocks do.

The same (tenant, scope) also gives the `cache_salt` sent to vLLM with each call: vLLM mixes it into
its own block hashes, so its automatic prefix cache never serves one scope's KV to another's request."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

BLOCK_TOKENS = 64          # tokens per block (a multiple of vLLM's KV block, 16 on CPU)
BYTES_PER_BLOCK = 256      # text blocks: about 64 tokens of English at ~4 bytes a token
_SEP = "\x1f"              # unit separator: (tenant, scope) pairs cannot collide by concatenation


def _h(*parts: bytes) -> str:
    return hashlib.blake2b(b"".join(parts), digest_size=12).hexdigest()


def scope_key(tenant: str, scope: str) -> str:
    """key_0: the (tenant, session-or-request) root every block key of the scope chains from."""
    if not tenant or not scope:
        raise ValueError("a prefix key needs a tenant and a scope (session or request id)")
    return _h(b"tz-kv-scope", tenant.encode(), _SEP.encode(), scope.encode())


@dataclass(frozen=True)
class PrefixKey:
    """The chain of one call's input: `root` (the scope) and one key per full block, in order."""

    tenant: str
    scope: str
    root: str
    blocks: tuple[str, ...]
    block_units: int             # tokens (or bytes) per block

    @property
    def longest(self) -> str:
        """The key of the whole reusable prefix (the root when the input is under one block)."""
        return self.blocks[-1] if self.blocks else self.root

    def chain(self) -> tuple[str, ...]:
        return (self.root, *self.blocks)

    def encode(self) -> str:
        """As one string (the Router's affinity key): root and blocks, '.'-joined."""
        return ".".join(self.chain())

    def cache_salt(self, secret: bytes) -> str:
        """vLLM's per-request `cache_salt`, isolating this scope's blocks in the engine's own cache; keyed
        with the runtime's `secret` so no one who knows a tenant's and session's names can compute it."""
        return hashlib.blake2b(self.root.encode(), key=secret[:64], digest_size=32).hexdigest()


def decode(key: str) -> tuple[str, ...]:
    """The chain (root first) of an encoded key."""
    return tuple(k for k in key.split(".") if k)


def prefix_key(tenant: str, scope: str, tokens: Sequence[int] | str, *,
               block_tokens: int = BLOCK_TOKENS, block_bytes: int = BYTES_PER_BLOCK) -> PrefixKey:
    """The chain of `tokens` (token ids) or of a prompt's text, under (tenant, scope)."""
    if min(block_tokens, block_bytes) < 1:
        raise ValueError("blocks need at least one token or byte")
    root = scope_key(tenant, scope)
    if isinstance(tokens, str):
        data, size = tokens.encode(), block_bytes
        pieces = [data[i:i + size] for i in range(0, len(data) - size + 1, size)]
    else:
        size = block_tokens
        pieces = [b",".join(str(t).encode() for t in tokens[i:i + size])
                  for i in range(0, len(tokens) - size + 1, size)]
    keys, last = [], root
    for piece in pieces:
        last = _h(last.encode(), piece)
        keys.append(last)
    return PrefixKey(tenant, scope, root, tuple(keys), size)
