"""terrazzo's MLIR-based IR on xDSL: the `agent` and `tz` dialects, the spec frontend, the passes that decompose,
estimate, place and partition, and the driver behind `terrazzo compile` (docs/ir.md walks through it)."""
