"""Operators → IREE modules (.vmfb) per target, through a content-addressed artifact cache.

Import route: the operators are PyTorch modules, exported with iree-turbine's `aot.export` to the
torch dialect and compiled by `iree-compile`. Building linalg by hand would duplicate the models the
runtime already runs in PyTorch; exporting them keeps one definition, so the IREE artifact and the
PyTorch fallback cannot drift apart (the tests compare them).

Cache key: sha256 over the operator's name, its input shapes and dtypes, the target's flags, the
compiler's version and the weights' hash. Exported MLIR is cached too (keyed without the target), so
compiling one operator for four targets exports it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from terrazzo.errors import CodegenError

DEFAULT_CACHE = Path(".terrazzo") / "artifacts"
EMBED_BUCKETS = ((1, 128), (32, 128))  # (batch, sequence) shapes the embedding operator is compiled for


@dataclass(frozen=True)
class Target:
    family: str
    arch: str

    @property
    def name(self) -> str:
        return f"{self.family}-{self.arch}"

    @property
    def flags(self) -> list[str]:
        return [f.format(arch=self.arch) for f in targets()["families"][self.family]["flags"]]

    @property
    def format(self) -> str:
        return str(targets()["families"][self.family]["format"])


@dataclass(frozen=True)
class Operator:
    """A tensor program: `build()` → (torch module, example inputs, weights sha256)."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    build: Callable[[], tuple[Any, tuple[Any, ...], str]]
    source: str = ""  # where the weights come from (a checkpoint folder): built modules are reused per source

    def key(self, weights: str, extra: list[str]) -> str:
        doc = [self.name, self.shapes, self.dtypes, extra, compiler_version(), weights]
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Artifact:
    operator: str
    target: Target
    path: Path
    key: str
    shapes: tuple[tuple[int, ...], ...]
    cache_hit: bool

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path.name, "operator": self.operator, "target": self.target.name,
                "format": self.target.format, "shapes": [list(s) for s in self.shapes], "cache_key": self.key}


@cache
def targets() -> dict[str, Any]:
    return yaml.safe_load(resources.files("terrazzo.codegen").joinpath("data/targets.yaml").read_text())


def parse_target(spec: str) -> list[Target]:
    """'llvm-cpu', 'cuda', 'rocm', 'vulkan' (every arch of the family) or 'family:arch'."""
    family, _, arch = spec.partition(":")
    fams = targets()["families"]
    if family not in fams:
        raise CodegenError(f"--target: '{family}' is not one of {', '.join(fams)} (optionally family:arch, e.g. "
                           "llvm-cpu:znver4)")
    archs = fams[family]["archs"]
    if arch and arch not in archs:
        raise CodegenError(f"--target: {family} arch '{arch}' is not one of {', '.join(archs)} "
                           "(the archs this compiler version accepts)")
    return [Target(family, a) for a in ([arch] if arch else archs)]


def target_for_device(device: str) -> Target | None:
    """The target that serves a catalog device type; None where IREE has no backend (e.g. Gaudi)."""
    entry = targets()["devices"].get(device)
    return Target(entry["family"], entry["arch"]) if entry else None


@cache
def compiler_version() -> str:
    try:
        from iree.compiler import version
    except ImportError:
        raise CodegenError("IREE is not installed: pip install 'terrazzo[codegen]'") from None
    return str(getattr(version, "VERSION", "") or getattr(version, "REVISIONS", {}).get("IREE", "unknown"))


def cache_dir(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("TERRAZZO_ARTIFACTS") or DEFAULT_CACHE)


def compile_operator(op: Operator, target: Target, root: str | Path | None = None) -> Artifact:
    """The op's module for `target`, from the cache when present."""
    from iree.compiler import CompilerToolError, compile_str

    folder = cache_dir(root)
    module, args, weights = built_operator(op)
    key = op.key(weights, target.flags)
    path = folder / f"{op.name}.{target.name}.{key}.vmfb"
    if path.is_file():
        return Artifact(op.name, target, path, key, op.shapes, True)
    mlir = _export(op, module, args, weights, folder)
    try:
        binary = compile_str(mlir, input_type="torch", extra_args=target.flags)
    except CompilerToolError as exc:
        first = next((line for line in str(exc).splitlines() if "error:" in line), str(exc)[:200])
        raise CodegenError(f"iree-compile failed for {op.name} on {target.name}: {first.strip()}") from None
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(binary)
    tmp.replace(path)  # atomic: a reader never sees half an artifact
    return Artifact(op.name, target, path, key, op.shapes, False)


BUILT: dict[str, tuple[Any, tuple[Any, ...], str]] = {}


def built_operator(op: Operator) -> tuple[Any, tuple[Any, ...], str]:
    """(module, example inputs, weights hash), built once per process."""
    ident = f"{op.name}{op.shapes}{op.source}"
    if ident not in BUILT:
        BUILT[ident] = op.build()
    return BUILT[ident]


def _export(op: Operator, module: Any, args: tuple[Any, ...], weights: str, folder: Path) -> str:
    path = folder / "mlir" / f"{op.name}.{op.key(weights, [])}.mlir"
    if path.is_file():
        return path.read_text()
    import warnings

    import iree.turbine.aot as aot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = str(aot.export(module, args=args).mlir_module)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def artifact_format_ok(path: Path, target: Target) -> bool:
    """Whether a .vmfb is an IREE module whose executables are in its target's format, with the
    payload that format implies (compile-only GPU targets cannot be run here, so this is their check):
    an x86-64 ELF for llvm-cpu, PTX for the arch for CUDA, an AMDGPU ELF naming the arch for ROCm,
    SPIR-V for Vulkan. A .vmfb is a zip: the VM module (a size-prefixed FlatBuffer with identifier
    IREE), its constants, and one entry per executable named after the executable format."""
    try:
        with zipfile.ZipFile(path) as z:
            module = z.read("module.fb")
            fmt = target.format.replace("-", "_")
            blobs = [z.read(n) for n in z.namelist() if fmt in n]
    except (zipfile.BadZipFile, KeyError, OSError):
        return False
    if module[8:12] != b"IREE" or not blobs:
        return False
    data = b"".join(blobs)
    family = target.family
    if family == "llvm-cpu":
        return all(b[:4] == b"\x7fELF" and b[18] == 62 for b in blobs)  # e_machine EM_X86_64
    if family == "cuda":
        return b".version" in data and f".target {target.arch}".encode() in data
    if family == "rocm":
        at = data.find(b"\x7fELF")
        return at >= 0 and data[at + 18] == 224 and target.arch.encode() in data  # e_machine EM_AMDGPU
    if family == "vulkan":
        return b"\x03\x02\x23\x07" in data  # SPIR-V magic 0x07230203, little-endian
    return False
