"""Read spec files into validated models; every failure is a SpecError naming file, line, field and fix."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.errors import CatalogError, SpecError
from terrazzo.spec.agent import NODE_KINDS, Agent, AgentGraph, GraphError, LlmNode, SubagentNode
from terrazzo.spec.cluster import Cluster
from terrazzo.spec.sla import Sla
from terrazzo.spec.source import Loc, YamlSource, parse_yaml, read_yaml
from terrazzo.spec.workload import Workload

M = TypeVar("M", bound=BaseModel)
_FIXES = {
    "extra_forbidden": "remove it, or check its spelling against the documented fields",
    "missing": "add this field",
    "union_tag_invalid": "use a known kind",
    "union_tag_not_found": "add 'kind:'",
    "greater_than_equal": "use a value in range",
    "greater_than": "use a value in range",
    "less_than_equal": "use a value in range",
    "literal_error": "use one of the listed values",
    "cluster_format": "write it in the format shown (every cluster mode, with examples: docs/clusters.md)",
    "finite_number": "write a finite number (not .inf or .nan)",
    "less_than": "use a value in range",
}


def validate(src: YamlSource, schema: type[M], data: Any = None, base: Loc = ()) -> M:
    """Validate `data` (default: the whole document) against `schema`, mapping errors to lines."""
    try:
        return schema.model_validate(src.data if data is None else data)
    except ValidationError as exc:
        raise _to_spec_error(src, exc, base) from None


def _to_spec_error(src: YamlSource, exc: ValidationError, base: Loc) -> SpecError:
    errs = exc.errors(include_url=False)
    err = next((e for e in errs if e["type"] == "extra_forbidden"), errs[0])  # a typo explains a "missing"
    raw = err["loc"]
    loc = (*base, *(p for i, p in enumerate(raw) if not (p in NODE_KINDS and i and isinstance(raw[i - 1], int))))
    if loc[:1] == ("graph",) and "graph" not in src.data:
        loc = loc[1:]  # nodes/edges written at the top level
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown field '{loc[-1]}'"
    elif err["type"] == "cluster_format":
        loc = loc[:1]  # the field as a whole, not the element the shape check tripped on
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown node kind {err['input'].get('kind')!r}; kinds are {', '.join(NODE_KINDS)}"
        loc = (*loc, "kind")
    return src.error(msg, loc, _FIXES.get(err["type"], "change the value as the message says"))


def _catalog_name(src: YamlSource, loc: Loc, lookup: Any, name: str) -> None:
    try:
        lookup(name)
    except CatalogError as exc:
        message = str(exc).split(" Known:")[0].strip()
        raise src.error(message, loc, "use a catalog name (terrazzo hw list / models list)") from None


def _check_graph(src: YamlSource, graph: AgentGraph, catalog: Catalog, base: Loc, seen: tuple[Path, ...]) -> AgentGraph:
    try:
        graph.check()
    except GraphError as exc:
        raise src.error(str(exc), (*base, *exc.loc), exc.fix) from None
    nodes = list(graph.nodes)
    for i, node in enumerate(nodes):
        loc = (*base, "nodes", i)
        model = getattr(node, "model", None) or getattr(node, "embed_model", None)
        if model:
            field = "model" if getattr(node, "model", None) else "embed_model"
            _catalog_name(src, (*loc, field), catalog.model, model)
        if isinstance(node, LlmNode) and catalog.model(node.model).kind != "llm":
            raise src.error(f"model '{node.model}' is not an LLM", (*loc, "model"), "use an llm model")
        if isinstance(node, SubagentNode):
            if node.agent is not None:
                path = (Path(src.file).parent / node.agent).resolve()
                if path in seen:
                    raise src.error(f"sub-agent '{node.agent}' includes itself", (*loc, "agent"),
                                    "break the recursion; a recursive agent needs a loop node with a bound")
                inner = load_agent(path, catalog, _seen=(*seen, path)).graph
                nodes[i] = node.model_copy(update={"graph": inner, "agent": None})
            else:
                inner = _check_graph(src, node.resolved, catalog, (*loc, "graph"), seen)
                nodes[i] = node.model_copy(update={"graph": inner})
    return graph.model_copy(update={"nodes": nodes}) if nodes != list(graph.nodes) else graph


def load_agent(path: str | Path, catalog: Catalog | None = None, *, _seen: tuple[Path, ...] = ()) -> Agent:
    return agent_from_source(read_yaml(path), catalog, _seen or (Path(path).resolve(),))


def agent_from_text(text: str, catalog: Catalog | None = None, file: str = "<string>") -> Agent:
    return agent_from_source(parse_yaml(text, file), catalog, ())


def agent_from_source(src: YamlSource, catalog: Catalog | None, seen: tuple[Path, ...]) -> Agent:
    agent = validate(src, Agent)
    graph = _check_graph(src, agent.graph, catalog or load_catalog(), ("graph",) if "graph" in src.data else (), seen)
    return agent.model_copy(update={"graph": graph})


def check_agent(agent: Agent, catalog: Catalog | None = None) -> Agent:
    """Same checks for an agent built in Python (the builder): errors name the field path."""
    src = YamlSource(file=f"<agent {agent.name}>", data={"graph": {}})
    graph = _check_graph(src, agent.graph, catalog or load_catalog(), ("graph",), ())
    return agent.model_copy(update={"graph": graph})


def load_workload(path: str | Path, agent: Agent | None = None) -> Workload:
    src = read_yaml(path)
    workload = validate(src, Workload)
    _check_llm_keys(src, agent, "tokens", workload.tokens)
    return workload


def load_sla(path: str | Path, agent: Agent | None = None) -> Sla:
    src = read_yaml(path)
    sla = validate(src, Sla)
    _check_llm_keys(src, agent, "llm", sla.llm)
    return sla


def _check_llm_keys(src: YamlSource, agent: Agent | None, section: str, node_ids: Iterable[str]) -> None:
    """A per-node section (the workload's `tokens:`, the SLA's `llm:`) names only the agent's LLM nodes."""
    if agent is None:
        return
    llm_ids = {pid for pid, n in agent.graph.leaves() if n.kind == "llm"}
    for node_id in node_ids:
        if node_id not in llm_ids:
            raise src.error(f"'{node_id}' is not an LLM node of agent '{agent.name}'", (section, node_id),
                            f"use one of: {', '.join(sorted(llm_ids)) or '(none)'}")


def load_cluster(path: str | Path, profiles: Iterable[str | Path] = ()) -> tuple[Cluster, Catalog]:
    """The cluster and the catalog it sees (shipped catalog plus the cluster's own catalog files, then any
    measured `profiles`, which may define devices the cluster names)."""
    src = read_yaml(path)
    cluster = validate(src, Cluster)
    extra = [Path(src.file).parent / c for c in cluster.catalogs]
    try:
        catalog = load_catalog(extra, profiles)
    except CatalogError as exc:
        raise src.error(str(exc), ("catalogs",), "fix the catalog file it names") from None
    for key in ("devices", "buy"):
        for i, name in enumerate(getattr(cluster, key)):
            _catalog_name(src, (key, i), catalog.device, name)
    for name in cluster.inventory:
        _catalog_name(src, ("inventory", name), catalog.device, name)
    _catalog_name(src, ("tco_profile",), catalog.tco_profile, cluster.tco_profile)
    if cluster.price_profile:
        try:
            catalog.price_usd(catalog.device(cluster.device_types[0]).name, cluster.price_profile)
        except CatalogError as exc:
            message = str(exc).split(" Known:")[0].strip()
            raise src.error(message, ("price_profile",), "use a known price profile") from None
    return cluster, catalog
