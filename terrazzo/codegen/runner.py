"""Running a compiled llvm-cpu module in-process with IREE's runtime, the way a CPU pool's worker does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.errors import CodegenError


class IreeFunction:
    """The module's `main`, on the local-task driver (a thread pool sized by IREE)."""

    def __init__(self, vmfb: str | Path, driver: str = "local-task") -> None:
        import iree.runtime as rt

        path = Path(vmfb)
        if not path.is_file():
            raise CodegenError(f"{path}: no such artifact; compile it with `terrazzo compile AGENT --emit vmfb`")
        self.path = path
        ctx = rt.SystemContext(config=rt.Config(driver))
        try:
            ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, path.read_bytes()))
        except RuntimeError as exc:
            raise CodegenError(f"{path}: IREE cannot load it on driver {driver} ({exc}); an artifact for a GPU "
                               "target runs only where that GPU is") from None
        self._main = ctx.modules.module["main"]

    def __call__(self, *inputs: Any) -> np.ndarray:
        return np.array(self._main(*inputs).to_host(), copy=True)  # the host view may be reused by the next call
