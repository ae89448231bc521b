"""A first-token candidate's prefix-reuse policy: the record the fleet model sizes pools with and the
plan file's per-op `kv` entry is written from (plan/kv_candidates.py prices and makes them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

POLICIES = ("recompute", "retain", "host", "disk")
TIER_OF = {"recompute": "-", "retain": "HBM", "host": "host DRAM", "disk": "NVMe"}


@dataclass(frozen=True)
class KvChoice:
    """One policy on one candidate: what it adds to a call (`transfer_s`, on a hit), the prefill time a
    hit saves against recompute (`saved_s`, per batch), the byte-seconds of prefix one visit parks
    (`byte_s_per_visit`) and the room one replica has for them (`room_bytes`; inf: unbounded)."""

    policy: str
    prefix_tokens: float
    new_tokens: float
    hold_s: float
    hit_rate: float
    edge: str
    transfer_s: float = 0.0
    saved_s: float = 0.0
    byte_s_per_visit: float = 0.0
    room_bytes: float = math.inf
    kv_bytes: float = 0.0  # of one prefix, whole replica

    @property
    def tier(self) -> str:
        return TIER_OF[self.policy]

    def entry(self, saving_usd_h: float | None) -> dict[str, Any]:
        """The plan file's per-op `kv` entry (plan_file.KV_POLICIES)."""
        return {"policy": self.policy, "prefix_tokens": self.prefix_tokens, "new_tokens": self.new_tokens,
                "hold_s": self.hold_s, "hit_rate": self.hit_rate, "saving_usd_h": saving_usd_h,
                "tier": self.tier, "transfer_s": self.transfer_s, "edge": self.edge}
