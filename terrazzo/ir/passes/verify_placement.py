"""verify-placement: every op that needs a device has one, fits in it, and shares its pool's device type.

LLM phases are checked with cost.llm.memory_use at the placed tp, pp and batch (weights, KV cache at the
phase's context, activations); other ops by their own candidate on the placed device (memory, and whether
the device can run them at all, e.g. host code on a GPU). All problems are reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.cost.candidates import deployment
from terrazzo.cost.llm import memory_use
from terrazzo.errors import IRError, TerrazzoError
from terrazzo.ir.attributes import PlacementAttr
from terrazzo.ir.candidate_pricing import CostModel
from terrazzo.ir.context import inputs_of
from terrazzo.ir.dialects.agent_dialect import LlmCallOp
from terrazzo.ir.dialects.granular_dialect import AllReduceOp, DecodeOp, MoeExpertOp, MoeRider, PrefillOp
from terrazzo.ir.dialects.node_op import NodeOp, mean_prop, str_prop
from terrazzo.ir.module_graph import placeable_ops

GB = 1e9


def llm_fit(catalog: Catalog, op: NodeOp, place: PlacementAttr) -> str | None:
    """Why an LLM phase does not fit its placement, or None."""
    model = str_prop(op, "model") or ""
    dtype = str_prop(op, "dtype") or "bf16"
    tp, pp, batch = place.tp.data, place.pp.data, place.batch.data
    isl = mean_prop(op, "input_tokens")
    osl = mean_prop(op, "output_tokens")
    try:
        dep = deployment(catalog, model, place.device.data, dtype, tp, pp)
    except TerrazzoError as exc:
        return str(exc)
    prefill = isinstance(op, PrefillOp) or (isinstance(op, MoeExpertOp) and op.phase.data == "prefill")
    use = (memory_use(dep, batch, isl, prefill_tokens=int(isl) * batch) if prefill
           else memory_use(dep, batch, isl + osl))
    if use.fits:
        return None
    return (f"{model} {dtype} on {dep.device.name} with tp={tp} pp={pp} batch={batch} needs {use.total / GB:.1f} GB "
            f"per device (weights {use.weights / GB:.1f}, KV cache {use.kv_cache / GB:.1f}, activations "
            f"{use.activations / GB:.1f}) but {use.capacity / GB:.1f} GB is usable; raise tp or pp, lower the batch, "
            f"or choose a device with more memory")


def problems(module: ModuleOp, catalog: Catalog) -> list[str]:
    found: list[str] = []
    pools: dict[str, tuple[str, str]] = {}
    placed: dict[str, PlacementAttr] = {}
    costs: dict[str, CostModel] = {}
    for op in placeable_ops(module):
        place = op.placement
        if place is None:
            found.append(f"{op.node_id} ({op.name}) is not placed; give it an entry in the plan's placements")
            continue
        placed[op.node_id] = place
        try:
            device = catalog.device(place.device.data).name
        except TerrazzoError as exc:
            found.append(f"{op.node_id}: {str(exc).split(' Known:')[0]}")
            continue
        pool = place.pool.data
        first = pools.setdefault(pool, (device, op.node_id))
        if first[0] != device:
            found.append(f"{op.node_id}: pool '{pool}' already runs on {first[0]} ('{first[1]}'), not {device}; "
                         f"one pool is one device type")
        if isinstance(op, PrefillOp | DecodeOp | MoeExpertOp | LlmCallOp):
            why = llm_fit(catalog, op, place)
        else:
            model = costs.setdefault(device, CostModel.on(catalog, [device]))
            cand = model.candidates(op)
            why = cand[0].infeasible.data if cand else None
        if why:
            found.append(f"{op.node_id}: {why}")
    for item in module.walk():
        if isinstance(item, MoeRider | AllReduceOp) and item.anchor.data not in placed:
            found.append(f"{item.node_id} rides with '{item.anchor.data}', which is not placed")
        if (isinstance(item, NodeOp) and item.node_id.endswith(".decode")
                and str_prop(item, "serving") == "disaggregated"):
            prefill, decode = placed.get(item.node_id.removesuffix(".decode") + ".prefill"), placed.get(item.node_id)
            if prefill and decode and prefill.pool.data == decode.pool.data:
                found.append(f"{item.node_id}: the spec says serving: disaggregated, but prefill and decode share "
                             f"pool '{decode.pool.data}'; put them in different pools")
    return found


@dataclass(frozen=True)
class VerifyPlacement(ModulePass):
    name = "verify-placement"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        found = problems(op, inputs_of(ctx).catalog)
        if found:
            shown = "\n  - ".join(found[:20])
            more = f"\n  (and {len(found) - 20} more)" if len(found) > 20 else ""
            raise IRError(f"placement check failed ({len(found)} problem{'s' * (len(found) > 1)}):\n  - {shown}{more}")
