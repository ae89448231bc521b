"""Real serving engines behind LLM pools: vLLM servers launched, supervised and routed to by the runtime."""
