"""Layer a measured profile over a catalog, only where it applies.

A profile either defines its own device (this machine: peaks measured, price and TDP a share of a
catalog device of the same vendor) or calibrates a catalog device, which it may only do when the
machine it ran on is that device (its CPU or GPU name names the catalog entry). Its fitted factors
become the device's efficiency entries (source "fitted:<file>"); its points apply to the model,
dtype and index they were measured with. Anything that does not match is left alone and the
catalog's `notes` say why.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from terrazzo.catalog.catalog_schema import Device, Efficiency, ModelSpec, ScaleOut, Sourced
from terrazzo.cost.calibration import Calibration, Grid
from terrazzo.cost.roofline import FITTED
from terrazzo.errors import ProfileError
from terrazzo.profile.profile_file import (
    DeviceSection,
    EncoderShape,
    LinkFit,
    LinkKind,
    LlmShape,
    Profile,
    load_profile,
)

LLM_OPS = ("prefill", "decode")


def _norm(text: str) -> str:
    text = text.lower().replace("(r)", "").replace("(tm)", "")
    return re.sub(r"[^a-z0-9]", "", text)


def names_device(identity: str, device: Device) -> bool:
    """Whether a CPU or GPU name ('AMD EPYC 9654 96-Core Processor', 'NVIDIA H100 80GB HBM3') is this
    catalog device: one of its names that carries a model number appears in it."""
    ident = _norm(identity)
    names = (_norm(n) for n in (device.name, *device.aliases))
    return any(n in ident for n in names if re.search(r"\d", n) and len(n) >= 4)


def layer_profile(catalog: Any, path: str | Path) -> list[str]:
    """Apply the profile at `path` to `catalog` (a terrazzo.catalog.catalog_loader.Catalog); returns what it defined."""
    prof = load_profile(path)
    label = str(path)
    device = _device(catalog, prof, label)
    if device is None:
        return []
    defined = [] if not prof.device.defines else [f"devices.{device.name}"]
    llm = _model(catalog, prof.llm, label, "llm", defined) if prof.llm else None
    embed = _model(catalog, prof.embed, label, "embed", defined) if prof.embed else None
    fitted = []
    for op, fit in prof.fit.ops.items():
        if (op in LLM_OPS and llm is None) or (op == "embed" and embed is None):
            continue  # fitted on a model that does not match its catalog name: not applied (noted)
        current = catalog.efficiency_for(device.name, op)
        catalog.efficiency.setdefault(device.name, {})[op] = Efficiency(
            compute=fit.compute, memory=fit.memory, network=current.network,
            static_latency_s=fit.static_latency_s, source=f"{FITTED}{label}")
        defined.append(f"efficiency.{device.name}.{op}")
        fitted.append(op)
    cal = Calibration(
        file=label, device=device.name, machine=f"{prof.machine.hostname_sha256} {prof.machine.identity}",
        defines_device=prof.device.defines, llm_model=llm, llm_dtype=prof.llm.dtype if llm and prof.llm else None,
        embed_model=embed, embed_dtype=prof.embed.dtype if embed and prof.embed else None,
        grids=_grids(prof, label, llm, embed),
    )
    catalog.profiles.append(cal)
    how = "defined by the profile" if prof.device.defines else "catalog device"
    models = [f"{m} {d}" for m, d in ((llm, cal.llm_dtype), (embed, cal.embed_dtype)) if m]
    catalog.notes.append(
        f"{label}: applied to {device.name} ({how}, measured on {prof.machine.identity}); fitted "
        f"{', '.join(fitted) or 'nothing'}; measured points for {', '.join(cal.grids) or 'nothing'}"
        + (f" ({', '.join(models)})" if models else ""))
    return defined


def _device(catalog: Any, prof: Profile, label: str) -> Device | None:
    sec, machine = prof.device, prof.machine
    existing = catalog.devices.get(sec.name)
    if not sec.defines:
        if existing is None:
            catalog.notes.append(f"{label}: NOT applied: it calibrates catalog device '{sec.name}', which this "
                                 "catalog does not have")
            return None
        if existing.kind != sec.kind or not names_device(machine.identity, existing):
            catalog.notes.append(
                f"{label}: NOT applied: it claims to calibrate {existing.name}, but was measured on "
                f"'{machine.identity}', which is not a {existing.name}. Re-run `terrazzo profile` without --as to "
                "define this machine as its own device")
            return None
        return existing
    if existing is not None:
        same = [c for c in catalog.profiles if c.device == sec.name and c.defines_device
                and c.machine.split(" ", 1)[0] == machine.hostname_sha256]
        if not same:
            catalog.notes.append(
                f"{label}: NOT applied: device '{sec.name}' is already in the catalog (from "
                f"{catalog.origins.get(('devices', sec.name), 'another profile')}); this profile was measured on "
                f"'{machine.identity}'. Re-run `terrazzo profile --as NEW-NAME`")
            return None
    device = define_device(catalog, sec, prof.fit.links, label)
    catalog.devices[device.name] = device
    catalog.origins[("devices", device.name)] = label
    return device


def define_device(catalog: Any, sec: DeviceSection, links: dict[LinkKind, LinkFit], label: str) -> Device:
    """This machine as a catalog device: peaks measured, price/TDP a share of the base device's, and the
    pipe between processes (how pools on one host exchange data) as its network link."""
    if sec.base is None or sec.base not in catalog.devices:
        raise ProfileError(f"base device {sec.base!r} is not in the catalog", file=label, field="device.base",
                           fix="name a catalog device of the same vendor (terrazzo hw list), e.g. "
                               "`terrazzo profile --base epyc-9654`, or layer the catalog file that defines it")
    base: Device = catalog.devices[sec.base]
    how = f"measured: terrazzo profile -> {label}"
    base_cores = base.cores.value if base.cores else 1
    share = f"derived: {sec.share:.4g} of {base.name}'s (cores {sec.cores} of {base_cores:g})"
    link = links.get("pipe") or links.get("shm")
    nic = (Sourced(value=link.bw_gbyte_s * 8, source=f"{how} (pipe between processes, α–β fit)",
                   note=f"alpha {link.alpha_s * 1e6:.1f} us; pools on one host talk over pipes")
           if link else base.scale_out.nic_gbit_s)
    return Device(
        name=sec.name, vendor=sec.vendor, kind=sec.kind, generation=sec.generation,
        peak_tflops={"fp32": Sourced(value=sec.fp32_tflops, source=f"{how} (fp32 matmul, {sec.cores} threads)")},
        memory_gb=Sourced(value=sec.memory_gb, source=f"{how} (total memory)"),
        memory_bw_gbyte_s=Sourced(value=sec.memory_bw_gbyte_s, source=f"{how} (large copy, read + write)"),
        scale_up=None, scale_out=ScaleOut(nic_gbit_s=nic),
        tdp_w=Sourced(value=base.tdp_w.value * sec.share, source=f"{share} TDP"),
        price_usd=Sourced(value=base.price_usd.value * sec.share, source=f"{share} price"),
        cores=Sourced(value=sec.cores, source=f"{how} (threads pinned)"),
    )


def _shape_matches(spec: ModelSpec, shape: LlmShape | EncoderShape) -> bool:
    fields = ("layers", "hidden", "heads", "ffn", "vocab") + (("kv_heads", "head_dim") if isinstance(shape, LlmShape)
                                                            else ())
    return all(getattr(spec, f) == getattr(shape, f) for f in fields)


def _model(catalog: Any, shape: LlmShape | EncoderShape, label: str, kind: str, defined: list[str]) -> str | None:
    """The catalog name the measured model goes by: its own if the catalog has it with the same shape, a
    catalog model of the same shape, or (unknown) a new entry; None, with a note, on a mismatch."""
    spec = catalog.models.get(shape.name)
    if spec is not None:
        if _shape_matches(spec, shape):
            return spec.name
        catalog.notes.append(f"{label}: its {kind} points are NOT applied: it names model '{shape.name}', but "
                             f"the checkpoint it measured has a different shape than the catalog's {spec.name}")
        return None
    same = next((m for m in catalog.models.values() if m.kind == kind and _shape_matches(m, shape)), None)
    if same is not None:
        return same.name
    catalog.models[shape.name] = model_spec(shape, kind, label)
    catalog.origins[("models", shape.name)] = label
    defined.append(f"models.{shape.name}")
    return shape.name


def model_spec(shape: LlmShape | EncoderShape, kind: str, label: str) -> ModelSpec:
    where = shape.checkpoint if isinstance(shape, LlmShape) else shape.path
    llm = isinstance(shape, LlmShape)
    return ModelSpec(
        name=shape.name, kind="llm" if llm else "embed", family="llama" if llm else "bert",
        layers=shape.layers, hidden=shape.hidden, heads=shape.heads,
        kv_heads=shape.kv_heads if isinstance(shape, LlmShape) else shape.heads,
        head_dim=shape.head_dim if isinstance(shape, LlmShape) else shape.hidden // shape.heads,
        ffn=shape.ffn, vocab=shape.vocab, max_context=shape.max_context,
        params_b=Sourced(value=shape.params / 1e9, source=f"measured: parameter count, terrazzo profile -> {label}"),
        shape_source=f"derived: config.json of {where} (via {label})",
    )


def _grids(prof: Profile, label: str, llm: str | None, embed: str | None) -> dict[str, Grid]:
    pts, grids = prof.points, {}
    if llm and pts.prefill:
        grids["prefill"] = Grid(label, "prefill", ("batch", "isl"),
                                {(float(p.batch), float(p.isl)): p.timing.median_s for p in pts.prefill})
    if llm and pts.reuse_prefill:
        grids["reuse_prefill"] = Grid(label, "reuse_prefill", ("new", "cached"),
                                      {(float(p.new), float(p.cached)): p.timing.median_s
                                       for p in pts.reuse_prefill if p.batch == 1})
    if llm and pts.decode:
        grids["decode"] = Grid(label, "decode", ("batch", "context"),
                               {(float(p.batch), float(p.context)): p.timing.median_s for p in pts.decode})
    if embed and pts.embed:
        grids["embed"] = Grid(label, "embed", ("texts", "tokens"),
                              {(float(p.texts), float(p.tokens_per_text)): p.timing.median_s for p in pts.embed})
    for index, dim in {(p.index, p.dimension) for p in pts.ann if p.queries == 1}:
        grids[f"ann:{index}:{dim}"] = Grid(label, "ann_search", ("vectors", "k"), {
            (float(p.vectors), float(p.k)): p.timing.median_s
            for p in pts.ann if p.index == index and p.dimension == dim and p.queries == 1})
    return grids
