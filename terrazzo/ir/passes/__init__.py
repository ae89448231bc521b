"""terrazzo's passes by name; each is an xDSL ModulePass, runnable alone and idempotent."""

from xdsl.passes import ModulePass

from terrazzo.ir.passes.apply_plan import ApplyPlan
from terrazzo.ir.passes.decompose_kv import DecomposeKv
from terrazzo.ir.passes.decompose_llm import DecomposeLlm
from terrazzo.ir.passes.decompose_memory import DecomposeMemory
from terrazzo.ir.passes.decompose_moe import DecomposeMoe
from terrazzo.ir.passes.decompose_tools import DecomposeTools
from terrazzo.ir.passes.estimate_cost import EstimateCost
from terrazzo.ir.passes.partition import Partition
from terrazzo.ir.passes.verify_placement import VerifyPlacement

PASSES: dict[str, type[ModulePass]] = {
    p.name: p
    for p in (DecomposeLlm, DecomposeMoe, DecomposeTools, DecomposeMemory, DecomposeKv, EstimateCost, ApplyPlan,
              Partition, VerifyPlacement)
}

__all__ = ["PASSES"]
