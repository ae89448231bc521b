"""Paper §3.1: t = max_r(θ_r / (perf_r·η_r)) + l + d + δ, kept as a breakdown so reports can say what binds."""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.catalog.schema import Efficiency


@dataclass(frozen=True)
class Work:
    """Resource demand θ of one step on one device: FLOPs and bytes moved to or from device memory."""

    flops: float
    mem_bytes: float


@dataclass(frozen=True)
class Estimate:
    """Latency of one step and where it goes: compute, memory, collectives/transfers, fixed overhead."""

    compute_s: float
    memory_s: float
    comm_s: float = 0.0
    static_s: float = 0.0

    @property
    def latency_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.comm_s + self.static_s

    @property
    def bound(self) -> str:
        """The term that dominates: 'compute', 'memory', 'network' or 'overhead'."""
        terms = {"compute": self.compute_s, "memory": self.memory_s, "network": self.comm_s, "overhead": self.static_s}
        return max(terms, key=terms.__getitem__)

    def __add__(self, other: Estimate) -> Estimate:
        """Sequential composition: phases that run one after another (pipeline stages)."""
        return Estimate(
            self.compute_s + other.compute_s, self.memory_s + other.memory_s,
            self.comm_s + other.comm_s, self.static_s + other.static_s,
        )

    def scaled(self, k: float) -> Estimate:
        return Estimate(self.compute_s * k, self.memory_s * k, self.comm_s * k, self.static_s * k)


def roofline(work: Work, peak_flops: float, mem_bw_bytes_s: float, eff: Efficiency, comm_s: float = 0.0) -> Estimate:
    return Estimate(
        compute_s=work.flops / (peak_flops * eff.compute),
        memory_s=work.mem_bytes / (mem_bw_bytes_s * eff.memory),
        comm_s=comm_s,
        static_s=eff.static_latency_s,
    )
