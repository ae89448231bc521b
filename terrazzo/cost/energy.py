"""Device power weighted by utilisation, for energy per request, the cost/latency/energy front and
power limits (`max_kw`).

TCO keeps its TCO profile's power rule (the paper's: full TDP around the clock). Energy does not: a
device draws its idle power (engine loaded, no work; sourced per device in the catalog) plus the
share of the idle-to-TDP span its load uses. A device without an idle figure is taken at full TDP.
"""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.catalog.catalog_schema import Device


@dataclass(frozen=True)
class PowerCurve:
    """Watts at zero and at full utilisation."""

    idle_w: float
    tdp_w: float

    def at(self, utilisation: float) -> float:
        u = min(max(utilisation, 0.0), 1.0)
        return self.idle_w + u * (self.tdp_w - self.idle_w)


def power_curve(device: Device) -> PowerCurve:
    tdp = device.tdp_w.value
    return PowerCurve(device.idle_w.value if device.idle_w is not None else tdp, tdp)


def joules_per_request(it_power_w: float, pue: float, rate_per_s: float) -> float:
    """Energy at the wall (device power × PUE) per request at `rate_per_s`."""
    return it_power_w * pue / rate_per_s if rate_per_s > 0 else float("inf")
