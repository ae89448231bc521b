"""terrazzo: plan, compile and run agentic AI workloads on heterogeneous hardware at minimum TCO."""

__version__ = "0.1.0"
