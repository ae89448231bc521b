"""Paper §3.1: t = max_r(θ_r / (perf_r·η_r)) + l + d + δ, kept as a breakdown so reports can say what binds."""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.catalog.catalog_schema import FITTED_SOURCE, Efficiency

ANALYTIC = "analytic"
FITTED = FITTED_SOURCE


@dataclass(frozen=True)
class Work:
    """Resource demand θ of one step on one device: FLOPs and bytes moved to or from device memory."""

    flops: float
    mem_bytes: float


@dataclass(frozen=True)
class Estimate:
    """Latency of one step and where it goes: compute, memory, collectives/transfers, fixed overhead.

    `source` says where the number comes from: "analytic" (catalog defaults), "fitted:<profile>" (efficiency
    factors fitted to a measured profile) or "profile:<profile>#<points>" (interpolated between measurements).
    """

    compute_s: float
    memory_s: float
    comm_s: float = 0.0
    static_s: float = 0.0
    source: str = ANALYTIC
    # Measured ÷ predicted time the model's cross-validated error spans here (p10, p90); (1, 1) = not known.
    spread: tuple[float, float] = (1.0, 1.0)

    @property
    def latency_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.comm_s + self.static_s

    @property
    def latency_range_s(self) -> tuple[float, float]:
        """The latency at the p10 and p90 of the cross-validated error."""
        return self.latency_s * self.spread[0], self.latency_s * self.spread[1]

    @property
    def bound(self) -> str:
        """The term that dominates: 'compute', 'memory', 'network' or 'overhead'."""
        terms = {"compute": self.compute_s, "memory": self.memory_s, "network": self.comm_s, "overhead": self.static_s}
        return max(terms, key=terms.__getitem__)

    def __add__(self, other: Estimate) -> Estimate:
        """Sequential composition: phases that run one after another (pipeline stages)."""
        return Estimate(
            self.compute_s + other.compute_s, self.memory_s + other.memory_s,
            self.comm_s + other.comm_s, self.static_s + other.static_s, join_sources(self.source, other.source),
            (min(self.spread[0], other.spread[0]), max(self.spread[1], other.spread[1])),
        )

    def scaled(self, k: float) -> Estimate:
        return Estimate(self.compute_s * k, self.memory_s * k, self.comm_s * k, self.static_s * k, self.source,
                        self.spread)


def join_sources(*sources: str) -> str:
    """Sources of a composite estimate, each named once in order ("fitted:p.yaml + analytic")."""
    parts = dict.fromkeys(p for s in sources for p in s.split(" + "))
    return " + ".join(parts)


def source_of(eff: Efficiency) -> str:
    """An efficiency fitted to a profile says so in its source ("fitted:<file>"); anything else is analytic."""
    return eff.source if eff.source.startswith(FITTED) else ANALYTIC


def roofline(work: Work, peak_flops: float, mem_bw_bytes_s: float, eff: Efficiency, comm_s: float = 0.0) -> Estimate:
    return Estimate(
        compute_s=work.flops / (peak_flops * eff.compute),
        memory_s=work.mem_bytes / (mem_bw_bytes_s * eff.memory),
        comm_s=comm_s,
        static_s=eff.static_latency_s,
        source=source_of(eff),
    )
