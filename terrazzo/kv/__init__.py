"""The KV cache manager and the cache-aware router (paper §4.1): pure policy and state, no I/O and no clock
of their own, so the runtime (which acts on them) and the simulator (which predicts them) share one copy."""
