"""Helpers the passes share: running rewrite patterns and finding the catalog a pass prices against."""

from __future__ import annotations

from functools import lru_cache

from xdsl.dialects.builtin import ModuleOp
from xdsl.pattern_rewriter import GreedyRewritePatternApplier, PatternRewriteWalker, RewritePattern

from terrazzo.catalog.load import Catalog, load_catalog
from terrazzo.catalog.schema import ModelSpec
from terrazzo.errors import TerrazzoError
from terrazzo.ir.dialects.base import NodeOp
from terrazzo.ir.errors import IRError
from terrazzo.spec.load import load_cluster


def rewrite(module: ModuleOp, *patterns: RewritePattern) -> None:
    """Apply `patterns` once to every matching op, nested regions included (ops they create are not revisited)."""
    walker = PatternRewriteWalker(GreedyRewritePatternApplier(list(patterns)), apply_recursively=False)
    walker.rewrite_module(module)


@lru_cache(maxsize=8)
def catalog_for(cluster: str | None) -> Catalog:
    """The catalog a cluster file sees (its own catalog files layered on the shipped one), else the shipped one."""
    try:
        return load_cluster(cluster)[1] if cluster else load_catalog()
    except TerrazzoError as exc:
        raise IRError(str(exc)) from None


def model_of(catalog: Catalog, op: NodeOp) -> ModelSpec:
    name = op.properties["model"].data  # type: ignore[attr-defined]
    try:
        return catalog.model(name)
    except TerrazzoError as exc:
        raise IRError(f"{op.name} '{op.node_id}': {str(exc).split(' Known:')[0]}") from None
