"""Where a waiting prefix's KV cache can sit, and what reading it back costs: bytes / bandwidth + latency.

`hbm`: the replica's own device memory (free to read back, but it takes KV capacity from the running
batch: cost/kv_reuse_pricing.py prices that). `host`: host DRAM over the accelerator's host link (PCIe x16, one
direction). `disk`: a local NVMe drive. Every figure carries its source, as catalog figures do.

A TP- or PP-sharded replica reads a prefix back with every device at once, each its own shard over its own
host link (`replica_read_back_s`): the planner (plan/kv_candidates.py) and the simulator (sim/kv_lanes.py)
both price a read-back with it, on the replica's KV bytes (`kv_reuse_pricing.replica_kv_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from terrazzo.catalog.catalog_schema import Device
from terrazzo.errors import CostError

Tier = Literal["hbm", "host", "disk"]
TIERS: tuple[Tier, ...] = ("hbm", "host", "disk")


@dataclass(frozen=True)
class TierLink:
    """Reading KV back from a tier into the replica's memory."""

    tier: Tier
    bw_bytes_s: float
    latency_s: float
    source: str

    def read_back_s(self, n_bytes: float) -> float:
        """Time to bring `n_bytes` of KV back: bytes / bandwidth + latency (nothing to move: no time)."""
        if n_bytes < 0:
            raise CostError(f"KV bytes must be >= 0, got {n_bytes}")
        return 0.0 if n_bytes == 0 or self.tier == "hbm" else n_bytes / self.bw_bytes_s + self.latency_s


_PCIE_GBYTE_S = {  # per direction, x16
    "gen4": (31.5, "derived: PCIe Gen4 x16 = 16 GT/s x 16 lanes x 128/130 / 8 = 31.5 GB/s per direction"),
    "gen5": (63.0, "derived: PCIe Gen5 x16 = 32 GT/s x 16 lanes x 128/130 / 8 = 63.0 GB/s per direction"),
}
_HOST_LINK = {  # the accelerator's link to its host, from each datasheet
    "a40": ("gen4", "https://www.nvidia.com/en-us/data-center/a40/ (PCIe Gen4 x16)"),
    "a100-80gb-sxm": ("gen4", "https://www.nvidia.com/en-us/data-center/a100/ (PCIe Gen4: 64 GB/s bidirectional)"),
    "l4": ("gen4", "https://www.nvidia.com/en-us/data-center/l4/ (PCIe Gen4 x16 64 GB/s bidirectional)"),
    "l40s": ("gen4", "https://www.nvidia.com/en-us/data-center/l40s/ (PCIe Gen4 x16 64 GB/s bidirectional)"),
    "h100-sxm": ("gen5", "https://www.nvidia.com/en-us/data-center/h100/ (PCIe Gen5: 128 GB/s bidirectional)"),
    "h200-sxm": ("gen5", "https://www.nvidia.com/en-us/data-center/h200/ (PCIe Gen5: 128 GB/s bidirectional)"),
    "b200": ("gen5", "judgement: HGX B200 baseboards reach the host through PCIe Gen5 x16 switches (DGX B200); "
                     "a Gen6 host link would halve the read-back time"),
    "mi300x": ("gen5", "https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html (PCIe Gen5 x16)"),
    "mi325x": ("gen5", "https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html (PCIe Gen5 x16)"),
    "gaudi2": ("gen4", "https://habana.ai/products/gaudi2/ (HL-225H: host interface PCIe Gen4 x16)"),
    "gaudi3": ("gen5", "https://www.intel.com/content/www/us/en/content-details/817486/intel-gaudi-3-ai-accelerator-"
                       "white-paper.html (HL-325L: host interface PCIe Gen5 x16)"),
}
# One DMA copy launch per read-back (the engine copies a prefix's blocks in one batch). Small beside the
# bytes term: a 2,048-token Llama 3 8B prefix is 268 MB, 4.3 ms at 63 GB/s.
HOST_LATENCY_S = (10e-6, "judgement: ~10 us to launch one host-to-device DMA copy; NVIDIA's GDRCopy notes "
                         "(https://developer.nvidia.com/gdrcopy) that cudaMemcpy pays a DMA-engine launch per copy")
DISK = (7.45e9, 100e-6, "https://www.slashcam.com/news/single/Samsung-990-PRO--New-NVMe-SSD-top-model-reaches-th-17407"
                        ".html (Samsung 990 PRO, PCIe 4.0 x4 NVMe: 7,450 MB/s sequential read); latency 100 us, the "
                        "top of the 20-100 us NVMe range in https://www.purestorage.com/knowledge/what-is-nvme.html")


def host_link_gbyte_s(device: Device) -> tuple[float, str]:
    """Host-to-device bandwidth per direction (GB/s) with its source. A CPU device holds KV in its own
    DRAM, so its `host` tier reads at memory bandwidth."""
    if device.kind == "cpu":
        return device.memory_bw_gbyte_s.value, f"catalog: {device.name} memory bandwidth (KV in its own DRAM)"
    gen, where = _HOST_LINK.get(device.name, ("gen5", f"judgement: {device.name} has no host link on record; "
                                              "assumed PCIe Gen5 x16"))
    gbyte_s, derived = _PCIE_GBYTE_S[gen]
    return gbyte_s, f"{derived}; {where}"


def tier_link(device: Device, tier: Tier) -> TierLink:
    """How `device`'s replica reads KV back from `tier`."""
    match tier:
        case "hbm":
            return TierLink("hbm", device.memory_bw_gbyte_s.value * 1e9, 0.0, "resident: no transfer")
        case "host":
            gbyte_s, source = host_link_gbyte_s(device)
            latency_s = 0.0 if device.kind == "cpu" else HOST_LATENCY_S[0]
            return TierLink("host", gbyte_s * 1e9, latency_s, f"{source}; latency {HOST_LATENCY_S[1]}")
        case "disk":
            disk_bw, disk_latency_s, source = DISK
            gbyte_s, link_source = host_link_gbyte_s(device)  # the drive reads into host memory, then over the link
            bw = min(disk_bw, gbyte_s * 1e9)
            return TierLink("disk", bw, disk_latency_s, source if bw == disk_bw else f"{link_source} (slower link)")
    raise CostError(f"unknown KV tier '{tier}'; tiers are {', '.join(TIERS)}")


def read_back_s(device: Device, tier: Tier, n_bytes: float) -> float:
    """Seconds for one `device` to read `n_bytes` of KV back from `tier`."""
    return tier_link(device, tier).read_back_s(n_bytes)


def replica_read_back_s(link: TierLink, replica_bytes: float, devices: int) -> float:
    """Seconds for a replica of `devices` devices to read `replica_bytes` of KV (all its devices' shards
    together) back over `link`: each device reads its own 1/devices of them over its own host link, in
    parallel, so one latency and bytes / (devices x bandwidth)."""
    if devices < 1:
        raise CostError(f"a replica has >= 1 device, got {devices}")
    return link.read_back_s(replica_bytes / devices)
