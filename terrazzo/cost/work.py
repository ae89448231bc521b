"""Latency of one visit of a non-LLM op on a device, for a given amount of work. The planner prices an
op at its mean work (terrazzo/ir/candidate_pricing.py) and the simulator at each visit's sampled work
(terrazzo/sim/service_times.py) through these same functions, so a profile that calibrates a device moves both.
"""

from __future__ import annotations

import math

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.catalog_schema import Device, ModelSpec
from terrazzo.cost.calibration import ann_estimate, embed_estimate
from terrazzo.cost.cpu_ops import cpu_seconds, encoder_forward
from terrazzo.cost.roofline import Estimate, Work, roofline

WHISPER_FRAMES_PER_WINDOW = 1500  # Whisper encodes 30 s windows of 1500 frames whatever the audio's length
WHISPER_WINDOW_S = 30.0
HTTP_WAITS_PER_CORE = 64  # concurrent outstanding HTTP calls one core's event loop keeps (asyncio, judgement call)


def tensor_dtype(device: Device) -> str:
    """What a tensor op (encoder, speech model) runs in: fp32 on a CPU, fp16 on an accelerator."""
    return "fp32" if device.kind == "cpu" else "fp16"


def encoder(catalog: Catalog, device: Device, model: ModelSpec, tokens: float, steps: float = 0.0) -> Estimate:
    """An encoder pass over `tokens` (measured where a profile has points), plus `steps` one-token
    weight-streaming passes (Whisper's text decoder)."""
    dtype = tensor_dtype(device)
    est = embed_estimate(catalog, device, model, tokens, dtype)
    if steps:
        eff = catalog.efficiency_for(device.name, "embed")
        est = est + encoder_forward(model, device, eff, 1, dtype).scaled(steps)
    return est


def whisper_frames(audio_s: float) -> float:
    """Frames Whisper's encoder runs for `audio_s` of audio: whole 30 s windows."""
    return max(1, math.ceil(audio_s / WHISPER_WINDOW_S)) * WHISPER_FRAMES_PER_WINDOW


def vector_search(catalog: Catalog, device: Device, vectors: int, dimension: int, k: int, index: str) -> Estimate:
    return ann_estimate(catalog, device, vectors, dimension, k, index)


def memory_io(catalog: Catalog, device: Device, data_bytes: float) -> Estimate:
    """Loading or storing `data_bytes` of agent memory at the device's memory bandwidth."""
    eff = catalog.efficiency_for(device.name, "memory")
    return roofline(Work(0.0, data_bytes), 1.0, device.memory_bw_gbyte_s.value * 1e9, eff)


def host_code(catalog: Catalog, device: Device, cpu_s: float) -> Estimate:
    """`cpu_s` seconds of one core, plus the host's fixed overhead per call."""
    return cpu_seconds(cpu_s, catalog.efficiency_for(device.name, "cpu"))
