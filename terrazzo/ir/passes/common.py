"""Helpers the passes share: running rewrite patterns and naming the model an op runs."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.pattern_rewriter import GreedyRewritePatternApplier, PatternRewriteWalker, RewritePattern

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.catalog_schema import ModelSpec
from terrazzo.errors import IRError, TerrazzoError
from terrazzo.ir.dialects.node_op import NodeOp, str_prop


def rewrite(module: ModuleOp, *patterns: RewritePattern) -> None:
    """Apply `patterns` once to every matching op, nested regions included (ops they create are not revisited)."""
    walker = PatternRewriteWalker(GreedyRewritePatternApplier(list(patterns)), apply_recursively=False)
    walker.rewrite_module(module)


def model_of(catalog: Catalog, op: NodeOp) -> ModelSpec:
    name = str_prop(op, "model") or ""
    try:
        return catalog.model(name)
    except TerrazzoError as exc:
        raise IRError(f"{op.name} '{op.node_id}': {str(exc).split(' Known:')[0]}") from None
