"""Target-aware code generation: terrazzo's tensor operators lowered through IREE to per-target artifacts."""
