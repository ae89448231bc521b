"""`terrazzo import langgraph MODULE:GRAPH`: a LangGraph StateGraph as a terrazzo agent spec.

What maps, and how:
- a node whose runnable is (or calls) a LangChain chat model → `llm`, with the model's name looked up
  in the catalog (`model`, `model_name` or `model_id` of the model object; found on a bound runnable,
  in the node function's closure, or in the module globals it names);
- a `ToolNode` → `tool` (python; its first tool's function);
- a compiled graph used as a node → `subagent` with the inner graph, mapped the same way;
- any other function → `compute` (host code);
- a conditional edge → a `branch` node after its source, one edge per declared target; a target of
  END goes to a no-op `end` node, because every branch edge in terrazzo names a node;
- an edge that closes a cycle (the ReAct tool loop) → through a `loop` node with a bound;
- a join edge (`add_edge([a, b], c)`) → `join: all` on its target.
LangGraph does not say how often each branch is taken, how many tokens an LLM reads and writes, or how
long a tool takes; those come from the node's metadata (`add_node(..., metadata={"terrazzo": {...}})`:
any node field such as `model`, `input_tokens`, `latency_s`, and `branches: {target: probability}`),
else from the importer's defaults, and the report lists every default it used and everything it
could not map.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from terrazzo.catalog.catalog_loader import Catalog, load_catalog
from terrazzo.errors import CatalogError, SpecError
from terrazzo.spec.agent import Agent

START, END = "__start__", "__end__"
_FILE_MODULES: dict[str, str] = {}  # synthetic module name → the .py path it was loaded from
_SUFFIXES = ("-instruct", "-chat", "-it", "-hf", "-base")


@dataclass
class Options:
    default_model: str = "llama-3-8b"
    input_tokens: int = 512
    output_tokens: int = 256
    loop_bound: int = 5
    tool_latency_s: float = 0.1
    compute_cpu_s: float = 0.001


@dataclass
class LanggraphImport:
    """The agent spec (validated), the same as YAML text, and what the import assumed or dropped."""

    agent: Agent
    document: dict[str, Any]
    report: list[str] = field(default_factory=list)

    def yaml(self) -> str:
        head = "# Imported by `terrazzo import langgraph`; review the assumptions listed below.\n" + "".join(
            f"#   {line}\n" for line in self.report)
        return head + yaml.safe_dump(self.document, sort_keys=False, width=120)


def load_graph(target: str) -> Any:
    """`module:attr` or `path/to/file.py:attr` → the object (a StateGraph, a compiled graph, or a
    zero-argument function returning one)."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"'{target}' is not MODULE:GRAPH", fix="pass e.g. my_agents.support:graph or "
                        "path/to/agents.py:graph")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise SpecError("file not found", file=str(path), fix="check the path before ':'")
            name = f"_terrazzo_import_{path.stem}"
            _FILE_MODULES[name] = module_name
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module  # so that annotations in it resolve (pydantic, dataclasses)
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except SpecError:
        raise
    except ImportError as exc:
        raise SpecError(f"cannot import '{module_name}': {exc}",
                        fix="run from the folder that holds the module, or pass its .py path; "
                            "LangGraph itself: pip install 'terrazzo[langgraph]'") from None
    except Exception as exc:  # the user's module failed while running: say where, without a traceback
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise SpecError(f"importing '{module_name}' raised {type(exc).__name__}: {exc}", file=frame.filename,
                        line=frame.lineno, fix="fix the module so that it imports on its own") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise SpecError(f"module '{module_name}' has no attribute '{attr}'", fix="name the graph after ':'"
                        ) from None
    if callable(obj) and not hasattr(obj, "builder") and not hasattr(obj, "add_node"):
        obj = obj()
    return obj


def _builder(graph: Any) -> Any:
    builder = getattr(graph, "builder", graph)
    if not all(hasattr(builder, a) for a in ("nodes", "edges", "branches")):
        raise SpecError(f"expected a LangGraph StateGraph or compiled graph, got {type(graph).__name__}",
                        fix="point MODULE:GRAPH at a StateGraph (or graph.compile())")
    return builder


def _model_name(model: Any) -> str | None:
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def find_chat_models(obj: Any, depth: int = 0) -> list[Any]:
    """Chat models a node's runnable is, binds, or (for a function) holds in its closure or names
    among its module globals; two levels of helper functions deep."""
    from langchain_core.language_models import BaseLanguageModel

    if isinstance(obj, BaseLanguageModel):
        return [obj]
    if depth > 2:
        return []
    found: list[Any] = []
    for attr in ("bound", "first", "last", "func", "afunc"):
        inner = getattr(obj, attr, None)
        if inner is not None and inner is not obj:
            found += find_chat_models(inner, depth + 1)
    for step in getattr(obj, "steps", None) or getattr(obj, "middle", None) or []:
        found += find_chat_models(step, depth + 1)
    fn = getattr(obj, "__func__", obj)
    code = getattr(fn, "__code__", None)
    if code is not None:
        cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c)]
        names = [getattr(fn, "__globals__", {}).get(n) for n in code.co_names]
        for value in (*cells, *names):
            if value is None or value is obj or isinstance(value, type) or _is_module(value):
                continue
            if isinstance(value, BaseLanguageModel) or callable(value) or hasattr(value, "bound"):
                found += find_chat_models(value, depth + 1)
    return list({id(m): m for m in found}.values())


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _is_module(value: Any) -> bool:
    return type(value).__name__ == "module"


def catalog_model(name: str, catalog: Catalog) -> str | None:
    """The catalog name for a provider's model id ('Qwen/Qwen2.5-7B-Instruct' → 'qwen2.5-7b-instruct')."""
    candidates = [name, name.rsplit("/", 1)[-1]]
    for c in list(candidates):
        low = c.lower()
        candidates.append(low)
        for suffix in _SUFFIXES:
            if low.endswith(suffix):
                candidates.append(low.removesuffix(suffix))
    for c in candidates:
        try:
            return catalog.model(c).name
        except CatalogError:
            continue
    return None


def _node_id(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_\-]", "_", name)[:60] or "node"
    if not re.match(r"[A-Za-z_]", base):
        base = f"n_{base}"[:60]
    nid, i = base, 2
    while nid in used:
        nid, i = f"{base}_{i}", i + 1
    used.add(nid)
    return nid


def _function_ref(fn: Any) -> str | None:
    """'module:callable' (or 'path/file.py:callable' for a module imported from a file, the form run configs
    also accept)."""
    fn = getattr(fn, "__func__", fn)
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    module = _FILE_MODULES.get(module, module) if module else None
    return f"{module}:{qual}" if module and qual and "<" not in qual else None


class _Mapper:
    def __init__(self, catalog: Catalog, opts: Options) -> None:
        self.catalog, self.opts = catalog, opts
        self.report: list[str] = []

    def graph(self, graph: Any, where: str = "") -> dict[str, Any]:
        builder = _builder(graph)
        used: set[str] = {"end"}
        ids = {name: _node_id(name, used) for name in builder.nodes}
        for name, nid in ids.items():
            if nid != name:
                self.report.append(f"{where}{name}: renamed to '{nid}' (terrazzo ids are letters, digits, _ and -)")
        nodes: list[dict[str, Any]] = [self.node(name, spec, ids[name], where) for name, spec in builder.nodes.items()]
        edges: list[dict[str, Any]] = []
        needs_end = False
        for src, dst in sorted(builder.edges):
            if src == START or dst == END:
                continue
            edges.append({"from": ids[src], "to": ids[dst]})
        for starts, dst in sorted(getattr(builder, "waiting_edges", set())):
            for src in starts:
                edges.append({"from": ids[src], "to": ids[dst]})
            next(n for n in nodes if n["id"] == ids[dst])["join"] = "all"
        routes: dict[str, list[tuple[str, Any]]] = {}
        for src, branches in builder.branches.items():
            for bname, br in branches.items():
                routes.setdefault(src, []).append((bname, br.ends))
        for name, spec in builder.nodes.items():  # Command(goto=...) destinations declared on the node
            if getattr(spec, "ends", None):
                routes.setdefault(name, []).append(("destinations", {e: e for e in spec.ends}))
        for src, declared in routes.items():
            targets = []
            for bname, ends in declared:
                if not ends:
                    self.report.append(f"{where}{src}: conditional edge '{bname}' declares no targets, NOT mapped; "
                                       "give add_conditional_edges a path_map or a Literal return annotation")
                    continue
                targets += [t for t in dict.fromkeys(ends.values()) if t not in targets]
            if not targets:
                continue
            needs_end |= END in targets
            edges += self.branch(src, ids, targets, builder.nodes.get(src), nodes, where)
        if needs_end:
            nodes.append({"id": "end", "kind": "compute", "cpu_s": 0.0,
                          "description": "LangGraph END after a conditional edge (no work)"})
        entries = [ids[d] for s, d in builder.edges if s == START]
        entries += [ids[t] for _, ends in routes.get(START, []) for t in (ends or {}).values() if t in ids]
        edges = self.close_cycles(nodes, edges, entries, where)
        return {"nodes": nodes, "edges": edges}

    def branch(self, src: str, ids: dict[str, str], targets: list[str], spec: Any, nodes: list[dict[str, Any]],
               where: str) -> list[dict[str, Any]]:
        to_id = {t: "end" if t == END else ids[t] for t in targets}
        given = dict(_meta(spec).get("branches") or {})
        if given:
            probs = {t: float(given.get(t, given.get(to_id[t])) or 0.0) for t in targets}
        else:
            probs = dict.fromkeys(targets, 1.0 / len(targets))
            shown = ", ".join(f"{to_id[t]} {p:.2f}" for t, p in probs.items())
            self.report.append(f"{where}{src}: branch probabilities not given, assumed equal ({shown}); set "
                               "metadata={'terrazzo': {'branches': {target: probability}}}")
        if len(targets) == 1:  # not a choice; from START it only names the entry node
            return [] if src == START else [{"from": ids[src], "to": to_id[targets[0]]}]
        used = {n["id"] for n in nodes}
        route = _node_id(f"{ids.get(src, 'start')}_route", used)
        nodes.append({"id": route, "kind": "branch", "description": f"LangGraph conditional edge from {src}"})
        out = [] if src == START else [{"from": ids[src], "to": route}]
        return out + [{"from": route, "to": to_id[t], "probability": probs[t]} for t in targets]

    def close_cycles(self, nodes: list[dict[str, Any]], edges: list[dict[str, Any]], entries: list[str],
                     where: str) -> list[dict[str, Any]]:
        """Route every edge that closes a cycle through a loop node with the importer's bound."""
        succ: dict[str, list[int]] = {}
        for j, e in enumerate(edges):
            succ.setdefault(e["from"], []).append(j)
        has_in = {e["to"] for e in edges}
        roots = list(dict.fromkeys([*entries, *(n["id"] for n in nodes if n["id"] not in has_in)]))
        state: dict[str, int] = {}  # 1 on the stack, 2 done
        back: list[int] = []

        def visit(nid: str) -> None:
            state[nid] = 1
            for j in succ.get(nid, []):
                dst = edges[j]["to"]
                if state.get(dst) == 1:
                    back.append(j)
                elif dst not in state:
                    visit(dst)
            state[nid] = 2

        for r in roots:
            if r not in state:
                visit(r)
        loops: dict[str, str] = {}
        used = {n["id"] for n in nodes}
        for j in back:
            body = edges[j]["to"]
            if body not in loops:
                loops[body] = _node_id(f"{body}_again", used)
                nodes.append({"id": loops[body], "kind": "loop", "body": body, "bound": self.opts.loop_bound,
                              "description": f"LangGraph cycle back to {body}"})
                edges.append({"from": loops[body], "to": body})
                self.report.append(f"{where}{body}: cycle closed by loop '{loops[body]}' with bound "
                                   f"{self.opts.loop_bound} (LangGraph bounds it only by recursion_limit; "
                                   "--loop-bound)")
            edges[j] = {**edges[j], "to": loops[body]}
        return edges

    def node(self, name: str, spec: Any, nid: str, where: str) -> dict[str, Any]:
        meta = {k: v for k, v in _meta(spec).items() if k != "branches"}
        runnable = spec.runnable
        kind = meta.pop("kind", None)
        if kind is None:
            kind = self.detect(runnable)
        out: dict[str, Any] = {"id": nid, "kind": kind}
        if kind == "subagent":
            inner = getattr(runnable, "builder", None) or runnable
            out["graph"] = self.graph(inner, f"{where}{name}/")
            out["description"] = f"LangGraph sub-graph '{name}'"
        elif kind == "llm":
            out.update(self.llm(name, runnable, meta, where))
        elif kind == "tool":
            out.update(self.tool(name, runnable, meta, where))
        elif kind == "compute":
            fn = getattr(runnable, "func", runnable)
            ref = _function_ref(fn)
            out.update({"function": ref} if ref else {})
            if "cpu_s" not in meta:
                out["cpu_s"] = self.opts.compute_cpu_s
                self.report.append(f"{where}{name}: no chat model or tool found, mapped as compute with cpu_s "
                                   f"{self.opts.compute_cpu_s:g} s (set metadata={{'terrazzo': {{'cpu_s': ...}}}} or "
                                   "{'kind': ...})")
        out.update(meta)
        return out

    def detect(self, runnable: Any) -> str:
        from langgraph.pregel import Pregel

        if isinstance(runnable, Pregel) or hasattr(runnable, "add_conditional_edges"):
            return "subagent"
        if type(runnable).__name__ == "ToolNode" or hasattr(runnable, "tools_by_name"):
            return "tool"
        return "llm" if find_chat_models(runnable) else "compute"

    def llm(self, name: str, runnable: Any, meta: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "model" not in meta:
            models = find_chat_models(runnable)
            raw = next((n for n in map(_model_name, models) if n), None)
            model = catalog_model(raw, self.catalog) if raw else None
            if model is None:
                model = self.opts.default_model
                why = f"model '{raw}' is not in the catalog" if raw else "its chat model has no model name"
                self.report.append(f"{where}{name}: {why}; planned as {model} (--default-model, or add the model "
                                   "with `terrazzo import hf`)")
            if len(models) > 1:
                self.report.append(f"{where}{name}: calls {len(models)} chat models; planned as one call to {model}")
            out["model"] = model
        for key, default in (("input_tokens", self.opts.input_tokens), ("output_tokens", self.opts.output_tokens)):
            if key not in meta:
                out[key] = default
        if "input_tokens" not in meta or "output_tokens" not in meta:
            self.report.append(f"{where}{name}: token counts not given, assumed {out.get('input_tokens', 'given')} in"
                               f" / {out.get('output_tokens', 'given')} out (--input-tokens/--output-tokens)")
        return out

    def tool(self, name: str, runnable: Any, meta: dict[str, Any], where: str) -> dict[str, Any]:
        tools = dict(getattr(runnable, "tools_by_name", {}) or {})
        out: dict[str, Any] = {"protocol": meta.get("protocol", "python")}
        funcs = [_function_ref(getattr(t, "func", None) or getattr(t, "coroutine", None)) for t in tools.values()]
        ref = next((f for f in funcs if f), None) or _function_ref(getattr(runnable, "func", None))
        if "function" not in meta and out["protocol"] == "python":
            out["function"] = ref or f"{type(runnable).__module__}:{type(runnable).__qualname__}"
        if len(tools) > 1:
            self.report.append(f"{where}{name}: ToolNode with {len(tools)} tools ({', '.join(tools)}); mapped as one "
                               f"tool node (function of '{next(iter(tools))}')")
        if "latency_s" not in meta:
            out["latency_s"] = self.opts.tool_latency_s
            self.report.append(f"{where}{name}: tool latency not given, assumed {self.opts.tool_latency_s:g} s")
        return out


def _meta(spec: Any) -> dict[str, Any]:
    meta = getattr(spec, "metadata", None) or {}
    inner = meta.get("terrazzo", {}) if isinstance(meta, dict) else {}
    return dict(inner) if isinstance(inner, dict) else {}


def _label(target: str) -> str:
    """The agent's default name: the graph's attribute, or its module's when the attribute is generic."""
    module, _, attr = target.rpartition(":")
    if attr in ("graph", "app", "agent", "workflow", "builder", "compiled"):
        return Path(module).stem if module.endswith(".py") else module.rsplit(".", 1)[-1]
    return attr


def import_langgraph(graph: Any, name: str | None = None, catalog: Catalog | None = None,
                     options: Options | None = None, **overrides: Any) -> LanggraphImport:
    """A LangGraph graph (object, or 'module:attr') as a validated terrazzo Agent, its YAML document, and a
    report of what was assumed or not mapped. `overrides`: Options fields (default_model, loop_bound, …)."""
    from terrazzo.api import load_agent

    opts = options or Options(**overrides)
    cat = catalog or load_catalog()
    if cat.model(opts.default_model).kind != "llm":
        raise SpecError(f"--default-model '{opts.default_model}' is not an LLM", fix="use an llm model")
    obj = load_graph(graph) if isinstance(graph, str) else graph
    mapper = _Mapper(cat, opts)
    body = mapper.graph(obj)
    label = name or (_label(graph) if isinstance(graph, str) else getattr(obj, "name", None)) or "agent"
    agent_name = re.sub(r"[^A-Za-z0-9_\-]", "-", str(label)).strip("-")[:64] or "agent"
    if not re.match(r"[A-Za-z_]", agent_name):
        agent_name = f"a-{agent_name}"[:64]
    document = {"name": agent_name, "description": "imported from a LangGraph graph", **body}
    return LanggraphImport(load_agent(document, cat), document, mapper.report)

