"""Python tools for the example agents: offline stand-ins with real behaviour (no network).

The run configs map the agents' HTTP tools (https://search.example, https://orders.example) to these,
because this machine cannot reach the internet; point `tools:` at a real endpoint to use one.
"""

from __future__ import annotations

import hashlib

_STATUSES = ("processing", "shipped", "out for delivery", "delivered")


def order_status(query: str, order_id: str | None = None) -> dict:
    """Deterministic order status from the order number (or the query text)."""
    key = order_id or query
    h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    return {"order": order_id or key[:32], "status": _STATUSES[h % len(_STATUSES)], "eta_days": h % 5}


def web_search(query: str, **_: object) -> str:
    """Offline 'search': echoes the query with a fixed result list, so the search path runs for real."""
    return f"results for {query[:80]!r}: (offline example search; configure tools.search.endpoint for a real one)"
