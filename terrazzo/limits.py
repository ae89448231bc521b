"""The largest values a spec may hold. Past them the planner and the simulator would work for minutes or
hours (their work grows with the rate, the token counts and the index size) or overflow integer IR
attributes, so a spec that asks for more fails at load time, with its file and line, instead. Each bound is
far above any deployment terrazzo can plan for on one cluster."""

MAX_RATE_PER_S = 100_000.0        # requests per second per agent (planning time grows with it: 2e5 takes ~20 s)
MAX_TOKENS = 10_000_000.0         # tokens per LLM call, in or out (longest context windows are ~1e7)
MAX_SECONDS = 86_400.0            # one latency, deadline or duration: a day
MAX_DURATION_S = 30 * 86_400.0    # a workload's duration: a month
MAX_BYTES = 1e15                  # one payload or state size: a petabyte
MAX_GBIT_PER_S = 1e6              # one link
MAX_INDEX_VECTORS = 10**13        # one vector index
MAX_K = 100_000                   # neighbours per lookup
MAX_DEVICES = 1_000_000           # devices of one type in an inventory
