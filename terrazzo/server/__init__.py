"""`terrazzo serve`: the HTTP API in front of running agents (invoke, SSE streaming, OpenAI-compatible chat),
its safety limits (auth, validation, body size, deadlines, admission), metrics, and the slow-path
controller that re-plans and resizes pools as traffic moves."""
