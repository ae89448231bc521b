"""`terrazzo profile`: measure this machine, fit the roofline to it, and write the profile YAML.

Which device the profile is about: by default it DEFINES one (`local-cpu`, or `local-gpu` for a GPU
the catalog does not know): this machine with the engine's pinned thread count, its peaks measured,
its price and TDP that share of a catalog device of the same vendor. A fixed catalog entry could not
describe whatever machine the command runs on, and a new name cannot change any existing plan. With
`--as NAME` of a catalog device it calibrates that entry instead, which layering only accepts when the
machine is that device (a GPU the catalog knows is calibrated this way by default).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.console import Console
from rich.table import Table

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.catalog.catalog_schema import Device
from terrazzo.errors import ProfileError
from terrazzo.profile import fit as F
from terrazzo.profile import measure as M
from terrazzo.profile.layer import define_device, model_spec, names_device
from terrazzo.profile.profile_file import (
    PROFILE_SCHEMA,
    AnnPoint,
    DecodePoint,
    DeviceSection,
    EmbedPoint,
    Fit,
    FrontEndRunRecord,
    FrontEndSection,
    LinkFit,
    LinkKind,
    Machine,
    OpFit,
    OpKind,
    Points,
    PrefillPoint,
    Profile,
    Settings,
    Timing,
    TransferPoint,
    write_profile,
)

OPS = ("prefill", "decode", "embed", "ann", "transfer")
PointKey = tuple[Any, ...]  # (op kind, the point's sizes...), e.g. ("decode", batch, context)
DEFAULT_BASE = {"amd": "epyc-9654", "intel": "xeon-8592"}
TINY = {"hidden": 256, "layers": 4, "heads": 8, "kv_heads": 4}  # big enough that compute shows at long prompts
KIB, MIB = 1024, 1024 * 1024


@dataclass
class Options:
    """What to measure; the defaults take about a minute on one core."""

    device: Literal["cpu", "cuda"] = "cpu"  # checked again in __post_init__: callers pass user input
    model: Path | None = None
    model_name: str | None = None
    embed_model: Path | None = None
    as_device: str | None = None
    base: str | None = None
    threads: int = 1
    warmup: int = 3
    repeats: int = 15
    seed: int = 0
    ops: tuple[str, ...] = OPS
    isl: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    decode_batch: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    decode_context: tuple[int, ...] = (32, 128, 512, 2048)
    embed_texts: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    embed_tokens: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    embed_batch_tokens: int = 32
    ann_vectors: tuple[int, ...] = (1_000, 4_000, 16_000, 64_000, 128_000)
    ann_k: tuple[int, ...] = (1, 10, 100)
    ann_dimension: int = 384
    transfer_bytes: tuple[int, ...] = (KIB, 16 * KIB, 256 * KIB, 4 * MIB, 32 * MIB)
    gemm_n: int = 1024
    copy_mb: int = 128
    kv_budget_gb: float = 2.0  # decode caches kept alive at once (interleaving needs them all)
    extra: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)  # decode/embed/ann pairs off the grids
    catalogs: list[Path] = field(default_factory=list)
    command: str = "terrazzo profile"
    engine: str = "builtin"  # or "vllm": prefill and decode measured on a live vLLM server (vllm_profile.py)
    prefill_batch: tuple[int, ...] = (1,)
    vllm_python: str | None = None
    vllm_log: Path | None = None
    vllm_server: Any = None  # a running terrazzo.profile.vllm_server.VllmServer on `model` (tests share one)
    vllm_eager: bool = False  # start vLLM with -O0 (no torch.compile: minutes saved at start-up; --quick)

    @classmethod
    def vllm(cls, **kw: object) -> Options:
        """The grid a live vLLM CPU server is profiled on (its own scheduler, HTTP included): a few minutes."""
        grid = dict(engine="vllm", ops=("prefill", "decode"), warmup=1, repeats=5, isl=(16, 64, 256, 1024),
                    prefill_batch=(1, 4), decode_batch=(1, 4, 16, 32), decode_context=(64, 256, 1024),
                    as_device="local-cpu-vllm")
        return cls(**{**grid, **kw})  # type: ignore[arg-type]

    @classmethod
    def quick(cls, **kw: Any) -> Options:
        """A few points and repeats: seconds, for a smoke test of the machinery, not for planning."""
        small: dict[str, Any]
        small = dict(warmup=1, repeats=5, isl=(16, 64, 256), decode_batch=(1, 4), decode_context=(32, 256),
                     embed_texts=(1, 4), embed_tokens=(16, 64), embed_batch_tokens=16, ann_vectors=(1_000, 8_000),
                     ann_k=(1, 10), transfer_bytes=(KIB, 64 * KIB, MIB), gemm_n=512, copy_mb=32)
        return cls(**{**small, **kw})

    def __post_init__(self) -> None:
        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise ProfileError(f"unknown op kind '{unknown[0]}'", field="--ops", fix=f"use some of: {', '.join(OPS)}")
        if self.device not in ("cpu", "cuda"):
            raise ProfileError(f"unknown device '{self.device}'", field="--device", fix="use cpu or cuda")
        if self.engine not in ("builtin", "vllm"):
            raise ProfileError(f"unknown engine '{self.engine}'", field="--engine", fix="use builtin or vllm")
        if self.engine == "vllm" and self.device != "cpu":
            raise ProfileError("--engine vllm profiles vLLM's CPU server", field="--device", fix="use --device cpu")
        if self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise ProfileError("threads and repeats must be at least 1, warmup at least 0",
                               field="--threads/--repeats/--warmup", fix="pass positive counts")


def profile_machine(opts: Options, say: Callable[[str], None] = lambda _: None) -> Profile:
    """Measure, fit, and return the profile (not yet written)."""
    M.pin_threads(opts.threads, opts.device)
    catalog = load_catalog(opts.catalogs)
    mach = M.machine(opts.device, opts.threads)
    rng = np.random.default_rng(opts.seed)
    notes: list[str] = [f"torch pinned to {opts.threads} thread(s); {opts.warmup} warm-up round(s), then "
                        f"{opts.repeats} rounds visiting every point in a new random order; median and p10-p90"]
    say(f"machine: {mach.identity} ({mach.logical_cores} logical cores), torch {mach.torch}, "
        f"{opts.threads} thread(s), device {opts.device}")
    peaks, work = M.peak_benches(opts.device, opts.gemm_n if opts.device == "cpu" else 4096, opts.copy_mb)
    peak_t = M.run_interleaved(peaks, opts.warmup, max(3, opts.repeats // 2), opts.seed)
    fp32_tflops = work["gemm"] / peak_t["gemm"].median_s / 1e12
    bw_gbyte_s = work["copy"] / peak_t["copy"].median_s / 1e9
    say(f"peaks: fp32 matmul {fp32_tflops * 1e3:.1f} GFLOP/s, copy {bw_gbyte_s:.1f} GB/s")

    benches: dict[PointKey, M.Bench] = {}
    vllm = None
    with tempfile.TemporaryDirectory(prefix="terrazzo-profile-") as tmp:
        wants_llm = bool({"prefill", "decode"} & set(opts.ops))
        if wants_llm and opts.engine == "vllm":
            vllm = _vllm_points(opts, Path(tmp), notes, say)
        llm = (_llm_benches(opts, Path(tmp), rng, benches, notes, say) if wants_llm and vllm is None else None)
        emb = _embed_benches(opts, benches) if "embed" in opts.ops else None
        if "ann" in opts.ops:
            _ann_benches(opts, rng, benches, notes)
        say(f"measuring {len(benches)} points, interleaved ...")
        timings = M.run_interleaved(benches, opts.warmup, opts.repeats, opts.seed,
                                    progress=lambda r, n: say(f"  round {r}/{n}") if r in (1, n) or r % 5 == 0
                                    else None)
    transfers = _transfers(opts, say) if "transfer" in opts.ops else {}

    points = _points(timings, transfers, opts.ann_dimension)
    if vllm is not None:
        points = points.model_copy(update={"prefill": vllm.prefill if "prefill" in opts.ops else [],
                                           "decode": vllm.decode if "decode" in opts.ops else [],
                                           "reuse_prefill": vllm.reuse_prefill if "prefill" in opts.ops else []})
    links = fit_links(points)
    section = _device_section(catalog, opts, mach, fp32_tflops, bw_gbyte_s, notes)
    device = (define_device(catalog, section, links, "this profile") if section.defines
              else catalog.device(section.name))
    catalog.devices[device.name] = device  # a private copy of the catalog: the fit looks its defaults up there
    prof = Profile(
        schema=PROFILE_SCHEMA, created=datetime.now(UTC).isoformat(timespec="seconds"), command=opts.command,
        machine=mach, settings=Settings(device=opts.device, warmup=opts.warmup, repeats=opts.repeats,
                                        threads=opts.threads, seed=opts.seed),
        device=section, llm=vllm.shape if vllm else llm.shape if llm else None, embed=emb.shape if emb else None,
        points=points, fit=Fit(links=links), notes=notes,
        engine=f"vllm-{vllm.version}" if vllm else "builtin",
        engine_settings=_vllm_settings(vllm) if vllm else None,
        front_end=_front_end(vllm) if vllm is not None and vllm.front_end is not None else None,
    )
    return prof.model_copy(update={"fit": Fit(ops=fit_ops(prof, catalog, device), links=links)})


def _llm_benches(opts: Options, tmp: Path, rng: np.random.Generator, benches: dict[PointKey, M.Bench],
                 notes: list[str], say: Callable[[str], None]) -> M.LoadedLlm:
    """Load the checkpoint (or write the tiny random one into `tmp`) and add its prefill and decode points."""
    checkpoint, name, random_weights = opts.model, opts.model_name, False
    if checkpoint is None:
        from terrazzo.models.tiny import RANDOM_WEIGHTS_NOTE, make_tiny_checkpoint

        checkpoint = Path(make_tiny_checkpoint(tmp, **TINY))
        name = name or f"tiny-random-llama-l{TINY['layers']}-h{TINY['hidden']}"
        random_weights = True
        msg = (f"no --model given: prefill and decode ran on a tiny random-weight Llama made on the fly "
               f"({TINY['layers']} layers, hidden {TINY['hidden']}, {TINY['heads']} heads, {TINY['kv_heads']} KV "
               f"heads). {RANDOM_WEIGHTS_NOTE} The timings describe this machine running that shape")
        notes.append(msg)
        say(msg)
    llm = M.load_llm(checkpoint, name or checkpoint.name.lower(), random_weights, opts.device, opts.threads,
                     max(opts.isl, default=1))
    if "prefill" in opts.ops:
        for isl in opts.isl:
            benches[("prefill", isl)] = M.prefill_bench(llm, isl, rng)
    if "decode" in opts.ops:
        used = 0
        grid = [(b, c) for b in sorted(opts.decode_batch) for c in sorted(opts.decode_context)]
        for b, c in dict.fromkeys([*grid, *opts.extra.get("decode", ())]):
            need = M.kv_bytes(llm.shape, b, c)
            if used + need > opts.kv_budget_gb * 1e9:
                notes.append(f"decode batch {b} context {c} skipped: its KV cache would pass the "
                             f"{opts.kv_budget_gb:g} GB budget")
                continue
            used += need
            benches[("decode", b, c)] = M.decode_bench(llm, b, c, rng)
    return llm


def _vllm_points(opts: Options, tmp: Path, notes: list[str], say: Callable[[str], None]) -> Any:
    """Prefill and decode points from a live vLLM server on the checkpoint (or a tiny random one)."""
    from terrazzo.profile.vllm_profile import measure

    checkpoint, name, random_weights = opts.model, opts.model_name, False
    if checkpoint is None:
        from terrazzo.models.tiny import RANDOM_WEIGHTS_NOTE, make_tiny_checkpoint

        checkpoint = Path(make_tiny_checkpoint(tmp / "tiny", **TINY))
        name, random_weights = name or f"tiny-random-llama-l{TINY['layers']}-h{TINY['hidden']}", True
        notes.append(f"no --model given: vLLM served a tiny random-weight Llama made on the fly. {RANDOM_WEIGHTS_NOTE}")
    log = opts.vllm_log or Path(tmp) / "vllm.log"
    got = measure(checkpoint, name or checkpoint.name.lower(), random_weights, opts.isl, opts.prefill_batch,
                  opts.decode_batch, opts.decode_context, opts.warmup, opts.repeats, opts.seed, log,
                  python=opts.vllm_python, server=opts.vllm_server, eager=opts.vllm_eager, say=say)
    st = got.settings
    caching = "on (cold points get distinct heads)" if "--enable-prefix-caching" in st.extra else "off"
    eager = opts.vllm_eager or "-O0" in st.extra
    threads = f", {st.omp_threads} OMP thread(s)" if st.omp_threads else ""
    notes.append(f"prefill and decode measured on a live vLLM {got.version} CPU server (OpenAI API, /v1/completions "
                 f"with token-id prompts built through /tokenize, streamed), under its own scheduler: chunked prefill, "
                 f"max_num_batched_tokens {st.max_num_batched_tokens}, max_num_seqs {st.max_num_seqs}, block size "
                 f"{st.block_size}, {got.kv_blocks:,} KV blocks{threads}, prefix caching {caching}; prefill and "
                 f"decode times are the engine's own (request_prefill_time, request_decode_time per token); a "
                 f"request's front-end latency (HTTP, API server) {got.frontend_s * 1e3:.1f} ms; server start-up "
                 f"{got.startup_s:.0f} s"
                 + ("; eager mode (-O0, no torch.compile)" if eager else ""))
    return got


def _vllm_settings(got: Any) -> dict[str, float]:
    st = got.settings
    return {"max_num_seqs": st.max_num_seqs, "max_batched_tokens": st.max_num_batched_tokens,
            "block_size": st.block_size, "kv_blocks": got.kv_blocks, "frontend_ms": round(got.frontend_s * 1e3, 3),
            **({"omp_threads": st.omp_threads} if st.omp_threads else {})}


def _front_end(got: Any) -> FrontEndSection:
    fe = got.front_end
    runs = [FrontEndRunRecord(**vars(r)) for r in fe.runs]
    return FrontEndSection(request_cpu_ms=round(fe.request_cpu_ms, 4),
                           prompt_token_cpu_ms=round(fe.prompt_token_cpu_ms, 6), step_cpu_ms=round(fe.step_cpu_ms, 4),
                           token_cpu_ms=round(fe.token_cpu_ms, 4),
                           client_request_cpu_ms=round(fe.client_request_cpu_ms, 4),
                           client_token_cpu_ms=round(fe.client_token_cpu_ms, 4),
                           client_prompt_token_cpu_ms=round(fe.client_prompt_token_cpu_ms, 6),
                           latency_ms=round(fe.latency_ms, 3),
                           source=fe.source, runs=runs,
                           method="CPU-time accounting: API-server process /proc/<pid>/stat utime+stime and the "
                                  "client's process_time over closed-loop runs (concurrency × answer × prompt length), "
                                  "non-negative least squares on requests, prompt tokens, engine steps "
                                  "(vllm:iteration_tokens_total) and streamed tokens (profile/vllm_front_end.py)")


def _embed_benches(opts: Options, benches: dict[PointKey, M.Bench]) -> M.LoadedEmbedder:
    emb = M.load_embedder(opts.embed_model, opts.device)
    coords = ({(n, opts.embed_batch_tokens) for n in opts.embed_texts} | {(1, t) for t in opts.embed_tokens}
              | set(opts.extra.get("embed", ())))
    for n, t in sorted({(n, min(t, emb.shape.max_context)) for n, t in coords}):
        benches[("embed", n, t)] = M.embed_bench(emb, n, t, opts.device)
    return emb


def _ann_benches(opts: Options, rng: np.random.Generator, benches: dict[PointKey, M.Bench], notes: list[str]) -> None:
    if opts.device == "cuda":
        notes.append("FAISS search measured on the CPU side only (faiss-cpu has no GPU indexes)")
    query = rng.standard_normal((1, opts.ann_dimension), dtype=np.float32)
    pairs = [(v, k) for v in opts.ann_vectors for k in opts.ann_k] + list(opts.extra.get("ann", ()))
    for v in dict.fromkeys(v for v, _ in pairs):
        index = M.flat_index(v, opts.ann_dimension, rng)
        for k in dict.fromkeys(k for w, k in pairs if w == v):
            benches[("ann", v, k)] = M.ann_bench(index, query, min(k, v))


def _points(timings: dict[PointKey, Timing], transfers: dict[tuple[LinkKind, int], Timing], dimension: int) -> Points:
    by = {g: sorted((k, t) for k, t in timings.items() if k[0] == g) for g in ("prefill", "decode", "embed", "ann")}
    return Points(
        prefill=[PrefillPoint(isl=k[1], timing=t) for k, t in by["prefill"]],
        decode=[DecodePoint(batch=k[1], context=k[2], timing=t) for k, t in by["decode"]],
        embed=[EmbedPoint(texts=k[1], tokens_per_text=k[2], timing=t) for k, t in by["embed"]],
        ann=[AnnPoint(vectors=k[1], dimension=dimension, k=k[2], timing=t) for k, t in by["ann"]],
        transfer=[TransferPoint(link=k[0], bytes=k[1], timing=t) for k, t in sorted(transfers.items())],
    )


def _transfers(opts: Options, say: Callable[[str], None]) -> dict[tuple[LinkKind, int], Timing]:
    sizes = sorted(opts.transfer_bytes)
    peer = M.EchoPeer(max(sizes))
    try:
        host: tuple[LinkKind, ...] = ("pipe", "shm")
        gpu: tuple[LinkKind, ...] = ("h2d", "d2h")
        benches: dict[tuple[LinkKind, int], M.Bench] = {(link, n): peer.bench(link, n) for link in host for n in sizes}
        if opts.device == "cuda":
            benches.update({(link, n): M.gpu_copy_bench(link, n) for link in gpu for n in sizes})
        say(f"measuring {len(benches)} transfer points ...")
        return M.run_interleaved(benches, opts.warmup, opts.repeats, opts.seed)
    finally:
        peer.close()


def _device_section(catalog: Catalog, opts: Options, mach: Machine, fp32_tflops: float, bw_gbyte_s: float,
                    notes: list[str]) -> DeviceSection:
    kind = "gpu" if opts.device == "cuda" else "cpu"
    common: dict[str, Any] = dict(kind=kind, fp32_tflops=round(fp32_tflops, 6), memory_bw_gbyte_s=round(bw_gbyte_s, 3),
                                  cores=opts.threads, generation=f"{mach.identity}, {opts.threads} torch thread(s)")
    target = opts.as_device
    if target is None and kind == "gpu":  # a GPU the catalog knows: calibrate its entry
        target = next((d.name for d in catalog.devices.values() if d.kind == "gpu"
                       and names_device(mach.identity, d)), None)
    if target is not None and target.lower() in catalog.devices:
        dev = catalog.device(target)
        if not names_device(mach.identity, dev) or dev.kind != kind:
            notes.append(f"--as {dev.name}: this machine ('{mach.identity}') is not a {dev.name}, so layering will "
                         "not apply this profile to it")
        if dev.cores and opts.threads < dev.cores.value:
            notes.append(f"{dev.name} has {dev.cores.value:g} cores but only {opts.threads} thread(s) ran: its "
                         "fitted factors are relative to the whole device's peaks")
        return DeviceSection(name=dev.name, defines=False, vendor=dev.vendor, memory_gb=dev.memory_gb.value,
                             **common)
    base_name = opts.base or DEFAULT_BASE.get(mach.cpu_vendor if kind == "cpu" else "")
    if base_name is None:
        raise ProfileError(f"cannot tell which catalog device prices this machine ('{mach.identity}')", field="--base",
                           fix="pass --base NAME of a catalog device of the same vendor (terrazzo hw list), "
                               "or --as NAME to calibrate a catalog device")
    base = catalog.device(base_name)
    share = min(1.0, opts.threads / base.cores.value) if kind == "cpu" and base.cores else 1.0
    mem = M.memory_gb() if kind == "cpu" else _gpu_memory_gb()
    vendor = mach.cpu_vendor if kind == "cpu" and mach.cpu_vendor != "other" else base.vendor
    return DeviceSection(name=target or f"local-{kind}", defines=True, vendor=vendor, memory_gb=round(mem, 3),
                         base=base.name, share=round(share, 6), **common)


def _gpu_memory_gb() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 1e9


# ------------------------------------------------------------------------------------------------ fitting

def fit_links(points: Points) -> dict[LinkKind, LinkFit]:
    out: dict[LinkKind, LinkFit] = {}
    for link in dict.fromkeys(p.link for p in points.transfer):
        mine = [p for p in points.transfer if p.link == link]
        if len(mine) >= 2:
            out[link] = F.fit_link([p.bytes for p in mine], [p.timing.median_s for p in mine])
    return out


def op_terms(prof: Profile, catalog: Catalog, device: Device, op: str,
             points: list | None = None) -> tuple[np.ndarray, list[float]]:
    """Unit-efficiency work terms and measured medians of one op kind's points (or of `points`)."""
    groups: dict[str, list[Any]] = {
        "prefill": prof.points.prefill, "decode": prof.points.decode, "embed": prof.points.embed,
        "ann_search": prof.points.ann}
    pts = points if points is not None else groups[op]
    if op in ("prefill", "decode"):
        assert prof.llm is not None
        terms = F.llm_terms(model_spec(prof.llm, "llm", "profile"), device, prof.llm.dtype, pts)
    elif op == "embed":
        assert prof.embed is not None
        terms = F.embed_terms(model_spec(prof.embed, "embed", "profile"), device, prof.embed.dtype, pts)
    else:
        terms = F.ann_terms(device, pts)
    return terms, [p.timing.median_s for p in pts]


def fit_ops(prof: Profile, catalog: Catalog, device: Device) -> dict[OpKind, OpFit]:
    """Per op kind with at least two points: the roofline factors (defaults from the catalog's entry)."""
    out: dict[OpKind, OpFit] = {}
    groups: dict[OpKind, list[Any]] = {"prefill": prof.points.prefill, "decode": prof.points.decode,
                                       "embed": prof.points.embed, "ann_search": prof.points.ann}
    for op, pts in groups.items():
        if len(pts) >= 2:
            terms, measured = op_terms(prof, catalog, device, op)
            out[op] = F.fit_roofline(terms, measured, catalog.efficiency_for(device.name, op))
    return out


# ------------------------------------------------------------------------------------------------ report

def summary(prof: Profile) -> Table:
    table = Table("op kind", "points", "median spread", "η compute", "η memory", "static ms", "fit error",
                  title=f"profile of {prof.device.name} ({prof.machine.identity})")
    groups: dict[OpKind, list[Any]] = {"prefill": prof.points.prefill, "decode": prof.points.decode,
                                       "embed": prof.points.embed, "ann_search": prof.points.ann}
    for op, pts in groups.items():
        if not pts:
            continue
        spread = float(np.median([p.timing.spread for p in pts])) * 100
        f = prof.fit.ops.get(op)
        cells = ([f"{f.compute:.3g}" + ("" if "compute" in f.fitted else " (not binding)"),
                  f"{f.memory:.3g}" + ("" if "memory" in f.fitted else " (not binding)"),
                  f"{f.static_latency_s * 1e3:.3g}", f"{f.mape_pct:.1f} %"] if f else ["-"] * 4)
        table.add_row(op, str(len(pts)), f"{spread:.1f} %", *cells)
    for link, lf in prof.fit.links.items():
        table.add_row(f"transfer {link}", str(lf.points), "", f"α {lf.alpha_s * 1e6:.1f} µs",
                      f"β {lf.bw_gbyte_s:.2f} GB/s", "", f"{lf.mape_pct:.1f} %")
    return table


def profile_command(opts: Options, output: Path, console: Console) -> Profile:
    """Measure, fit, write `output`, and print the summary and the notes."""
    prof = profile_machine(opts, say=lambda m: console.print(f"[dim]{m}[/]", highlight=False))
    write_profile(prof, output)
    console.print(summary(prof))
    for note in prof.notes:
        console.print(f"note: {note}", highlight=False)
    from terrazzo.profile.plausibility import profile_warnings

    for warning in profile_warnings(prof):
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    use = f"--profile {output}" if prof.device.defines else f"--profile {output} (calibrates {prof.device.name})"
    console.print(f"wrote {output}; plan with it: terrazzo plan ... {use}"
                  + (f"; the device is '{prof.device.name}'" if prof.device.defines else ""))
    return prof
