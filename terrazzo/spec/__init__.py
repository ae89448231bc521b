"""Specs: what the user declares (agent graph, workload, SLA, cluster), validated with line-precise errors.

Import from the modules: `spec.agent`, `spec.spec_loader`, `spec.builder`, `spec.workload`, `spec.sla`, `spec.cluster`.
"""
