"""terrazzo's two dialects: `agent` (one op per spec node) and `tz` (granular operators and pools)."""

from terrazzo.ir.dialects.agent_dialect import Agent
from terrazzo.ir.dialects.granular_dialect import Tz

__all__ = ["Agent", "Tz"]
