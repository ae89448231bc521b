"""Collectives and transfers on the α–β model: time = α·hops + bytes / (bandwidth·η)."""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.catalog.catalog_schema import Device
from terrazzo.spec.cluster import Fabric


@dataclass(frozen=True)
class Link:
    """One direction of a path between devices: bandwidth in bytes/s and per-message latency α."""

    name: str
    bw_bytes_s: float
    latency_s: float

    def transfer_s(self, n_bytes: float, efficiency: float = 1.0) -> float:
        return self.latency_s + n_bytes / (self.bw_bytes_s * efficiency)


def scale_up_domain(device: Device, fabric: Fabric) -> int:
    own = int(device.scale_up.domain_size.value) if device.scale_up else 1
    return min(own, fabric.scale_up_domain) if fabric.scale_up_domain else own


def scale_up_link(device: Device, fabric: Fabric) -> Link | None:
    if device.scale_up is None:
        return None
    return Link(device.scale_up.link, device.scale_up.bw_gbyte_s.value * 1e9, fabric.scale_up_latency_s)


def scale_out_link(device: Device, fabric: Fabric) -> Link:
    """The NIC bounds a device's share of the scale-out fabric, and so does the fabric itself."""
    gbit = min(device.scale_out.nic_gbit_s.value, fabric.scale_out_gbit_s)
    return Link("scale-out", gbit * 1e9 / 8, fabric.scale_out_latency_s)


def group_link(device: Device, fabric: Fabric, group: int) -> Link:
    """Slowest link inside a group of `group` devices: scale-up when it fits one domain."""
    up = scale_up_link(device, fabric)
    if up is not None and group <= scale_up_domain(device, fabric):
        return up
    return scale_out_link(device, fabric)


def allreduce_s(n_bytes: float, group: int, link: Link, efficiency: float) -> float:
    """Ring all-reduce: 2(g-1) steps, each moving n/g bytes per device."""
    if group <= 1:
        return 0.0
    steps = 2 * (group - 1)
    return steps * link.latency_s + steps / group * n_bytes / (link.bw_bytes_s * efficiency)


def kv_egress_peak_bytes_s(kv_bytes: float, ttft_s: float, n_prefill: int) -> float:
    """Paper §5.2: each prefill device must ship a request's KV within its TTFT."""
    return kv_bytes / (ttft_s * n_prefill)


def kv_ingress_peak_bytes_s(kv_bytes: float, tbt_s: float, n_decode: int) -> float:
    """Paper §5.2: the KV must land before the second token is due."""
    return kv_bytes / (tbt_s * n_decode)
