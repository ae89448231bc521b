"""Measured cost models: `terrazzo profile` measures this machine, fits the roofline's factors, and the
catalog layers the result over the analytic defaults (docs/cost-model.md, "Calibrating with a profile")."""
