"""Profiles generated from the analytic model with known factors, for tests that need exact and
machine-independent numbers (the real measurement path is exercised in tests/test_profile.py).

Every point's time is what the roofline gives with `KNOWN` factors (times an optional seeded noise),
so a fit must recover `KNOWN`, and a plan built with the profile must move exactly where it applies.
"""

from __future__ import annotations

import numpy as np

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.catalog.catalog_schema import Efficiency
from terrazzo.profile import fit as F
from terrazzo.profile.layer import model_spec
from terrazzo.profile.profile_command import fit_ops
from terrazzo.profile.profile_file import (
    PROFILE_SCHEMA,
    AnnPoint,
    DecodePoint,
    DeviceSection,
    EmbedPoint,
    EncoderShape,
    Fit,
    LlmShape,
    Machine,
    Points,
    PrefillPoint,
    Profile,
    Settings,
    Timing,
)

KNOWN = {  # (compute, memory, static_latency_s) per op kind; both roofline terms bind somewhere on the grids
    "prefill": (0.6, 0.4, 0.003),
    "decode": (0.25, 0.35, 0.001),
    "embed": (0.5, 0.8, 0.002),
    "ann_search": (0.3, 0.9, 0.0001),
}
TINY = LlmShape(name="tiny-test-llama", checkpoint="synthetic", random_weights=True, dtype="fp32", layers=4,
                hidden=256, heads=8, kv_heads=4, head_dim=32, ffn=512, vocab=473, params=2_603_776, max_context=2048)
MINILM = EncoderShape(name="all-minilm-l6-v2", path="synthetic", layers=6, hidden=384, heads=12, ffn=1536,
                      vocab=30522, params=22_713_216, max_context=256)
ISL = (2, 4, 8, 16, 64, 256, 1024, 4096)
BATCH, CONTEXT = (1, 4, 16, 64, 256), (32, 256, 2048)
TEXTS, TOKENS = (1, 4, 16), (8, 32, 128)
VECTORS, KS = (1_000, 10_000, 100_000, 1_000_000), (1, 10)


def _timing(t: float) -> Timing:
    return Timing(median_s=t, p10_s=t * 0.95, p90_s=t * 1.05, repeats=5)


def known(op: str) -> Efficiency:
    c, m, s = KNOWN[op]
    return Efficiency(compute=c, memory=m, network=1.0, static_latency_s=s, source="derived: synthetic")


def synthetic_profile(device: str = "epyc-9654", identity: str = "AMD EPYC 9654 96-Core Processor",
                      llm: LlmShape = TINY, noise: float = 0.0, seed: int = 0,
                      catalog: Catalog | None = None) -> Profile:
    """A profile of `device` (calibrating the catalog's entry) as if measured on a CPU named `identity`."""
    cat = catalog or load_catalog()
    dev = cat.device(device)
    rng = np.random.default_rng(seed)
    points: dict[str, list] = {"prefill": [PrefillPoint(isl=i, timing=_timing(1.0)) for i in ISL],
                               "decode": [DecodePoint(batch=b, context=c, timing=_timing(1.0))
                                          for b in BATCH for c in CONTEXT],
                               "embed": [EmbedPoint(texts=n, tokens_per_text=t, timing=_timing(1.0))
                                         for n in TEXTS for t in TOKENS],
                               "ann": [AnnPoint(vectors=v, dimension=384, k=k, timing=_timing(1.0))
                                       for v in VECTORS for k in KS]}
    terms = {"prefill": F.llm_terms(model_spec(llm, "llm", "t"), dev, "fp32", points["prefill"]),
             "decode": F.llm_terms(model_spec(llm, "llm", "t"), dev, "fp32", points["decode"]),
             "embed": F.embed_terms(model_spec(MINILM, "embed", "t"), dev, "fp32", points["embed"]),
             "ann": F.ann_terms(dev, points["ann"])}
    for group, pts in points.items():
        op = "ann_search" if group == "ann" else group
        times = F.predict(known(op), terms[group]) * (1 + noise * rng.standard_normal(len(pts)))
        points[group] = [p.model_copy(update={"timing": _timing(float(t))}) for p, t in zip(pts, times, strict=True)]
    prof = Profile(
        schema=PROFILE_SCHEMA, created="2026-01-01T00:00:00+00:00", command="tests/profile_synth.py",
        machine=Machine(hostname_sha256="0123456789ab", os="Linux", python="3.11", cpu_model=identity,
                        cpu_vendor="amd", logical_cores=int(dev.cores.value if dev.cores else 1), torch="2.13.0",
                        torch_threads=int(dev.cores.value if dev.cores else 1)),
        settings=Settings(device="cpu", warmup=1, repeats=5, threads=int(dev.cores.value if dev.cores else 1)),
        device=DeviceSection(name=dev.name, defines=False, kind="cpu", vendor=dev.vendor, generation="synthetic",
                             fp32_tflops=dev.tflops("fp32") or 1.0, memory_bw_gbyte_s=dev.memory_bw_gbyte_s.value,
                             memory_gb=dev.memory_gb.value, cores=int(dev.cores.value if dev.cores else 1)),
        llm=llm, embed=MINILM, points=Points(**points), fit=Fit(), notes=["synthetic: generated from KNOWN factors"],
    )
    return prof.model_copy(update={"fit": Fit(ops=fit_ops(prof, cat, dev))})
