# %% [markdown]
# # terrazzo from Python
#
# A notebook in the percent format (`# %%` cells: VS Code, JupyterLab with jupytext, or plain
# `python examples/notebook.py`). It builds an agent in Python, plans it on two clusters, shows the
# plans as pandas DataFrames, compares them, and simulates the cheaper one. The test suite runs it
# (tests/test_api.py). Needs the `frames` extra: `pip install 'terrazzo[frames]'`.

# %%
from pathlib import Path

import pandas as pd

import terrazzo as tz

EXAMPLES = Path(__file__).resolve().parent if "__file__" in globals() else Path("examples")
pd.set_option("display.width", 160)

# %% [markdown]
# ## An agent, built in Python
# A support agent: retrieve passages, then answer with an LLM; a quarter of the answers call an order tool.

# %%
agent = (
    tz.build_agent("support", "retrieve, answer, sometimes look an order up")
    .node("retrieve", "memory_lookup", index_vectors=1_000_000, dimension=384, k=5)
    .node("answer", "llm", model="llama-3-8b", dtype="fp8", input_tokens=1024, output_tokens=192)
    .node("route", "branch")
    .node("orders", "tool", protocol="http", endpoint="http://orders.internal/status", latency_s="150 ms")
    .node("done", "compute", cpu_s="1 ms")
    .chain("retrieve", "answer", "route")
    .edge("route", "orders", probability=0.25)
    .edge("route", "done", probability=0.75)
    .build()
)
agent.graph.visits()

# %% [markdown]
# ## Plan it on the paper's heterogeneous cluster, and on an NVIDIA-only one

# %%
workload = {"arrival": {"process": "poisson", "rate_per_s": 20}}
sla = EXAMPLES / "slas" / "interactive.yaml"
hetero = tz.plan_agent(agent, EXAMPLES / "clusters" / "hetero.yaml", workload, sla)
nvidia = tz.plan_agent(agent, {"name": "nvidia", "devices": ["h100", "a100", "epyc-9654"]}, workload, sla)

plan_frame = hetero.to_pandas()[["name", "device", "tp", "pp", "batch", "replicas", "latency_s", "usd_h"]]
plan_frame  # noqa: B018 - a notebook cell shows its last value

# %%
hetero.baselines()[["name", "tco_usd_h", "ratio"]]

# %% [markdown]
# ## Side by side

# %%
comparison = tz.compare({"hetero": hetero, "nvidia": nvidia})
comparison.to_pandas()[["tco_usd_h", "usd_per_request", "e2e_latency_s", "devices", "meets_sla"]]

# %% [markdown]
# ## Simulate the cheaper plan at 1.5× its rate

# %%
best = comparison.plans[comparison.cheapest]
sim = tz.simulate(best, rate_per_s=30, duration_s=60)
requests = sim.to_pandas()
print(f"attainment {sim.attainment:.1%}, p50 {requests['e2e_s'].median():.2f} s, "
      f"p99 {requests['e2e_s'].quantile(0.99):.2f} s")
sim.pools()[["op", "device", "replicas", "utilisation"]]
