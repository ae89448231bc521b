"""`terrazzo import langgraph MODULE:GRAPH` and `terrazzo import hf DIR|config.json` (the typer sub-app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from terrazzo.cli_output import JsonOpt, console, emit_json, note, warn

import_app = typer.Typer(no_args_is_help=True, help="Import agents from LangGraph and models from Hugging Face.")
OutOpt = Annotated[Path | None, typer.Option("-o", "--output", help="write the YAML here instead of stdout")]


def _write(text: str, output: Path | None) -> None:
    if output is None:
        print(text, end="")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    note(f"wrote {output}")


@import_app.command("langgraph")
def import_langgraph_cmd(
    target: Annotated[str, typer.Argument(help="MODULE:GRAPH or path/to/file.py:GRAPH (a StateGraph, a compiled "
                                          "graph, or a function returning one)")],
    name: Annotated[str | None, typer.Option(help="agent name (default: the graph's attribute name)")] = None,
    default_model: Annotated[str, typer.Option(help="catalog LLM for chat models the catalog does not know")
                             ] = "llama-3-8b",
    input_tokens: Annotated[int, typer.Option(help="prompt tokens of an LLM node without metadata")] = 512,
    output_tokens: Annotated[int, typer.Option(help="answer tokens of an LLM node without metadata")] = 256,
    loop_bound: Annotated[int, typer.Option(help="repeats allowed around each cycle (LangGraph has none but "
                                            "recursion_limit)")] = 5,
    output: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A LangGraph graph as an agent YAML: nodes, conditional edges, cycles, sub-graphs, tools, LLM models;
    what could not be mapped or was assumed is listed on stderr (and in the YAML's header)."""
    from terrazzo.importers.langgraph_import import import_langgraph

    done = import_langgraph(target, name=name, default_model=default_model, input_tokens=input_tokens,
                            output_tokens=output_tokens, loop_bound=loop_bound)
    if as_json:
        emit_json({"schema": "terrazzo.import.langgraph/v1", "agent": done.document, "report": done.report})
    else:
        _write(done.yaml(), output)
    for line in done.report:
        warn(line) if "NOT mapped" in line else note(f"assumed: {line}")


@import_app.command("hf")
def import_hf_cmd(
    path: Annotated[Path, typer.Argument(help="a checkpoint folder with config.json, or the config.json itself")],
    name: Annotated[str | None, typer.Option(help="catalog name (default: from the config or the folder)")] = None,
    source: Annotated[str | None, typer.Option(help="URL of the config, recorded as the entry's source")] = None,
    output: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A Hugging Face config.json (Llama, Mistral, Qwen, Gemma, Mixtral, DeepSeek MoE/MLA) as a catalog entry
    with parameter counts derived from its shapes; use it with --catalog FILE."""
    from terrazzo.importers.hf_config import import_hf

    done = import_hf(path, name=name, source=source)
    if as_json:
        emit_json({"schema": "terrazzo.import.hf/v1", "model": done.spec, "total_params": done.total_params,
                   "active_params": done.active_params})
        return
    _write(done.catalog_yaml(), output)
    active = f", {done.active_params / 1e9:.2f}B active" if done.spec.is_moe else ""
    summary = f"{done.name}: {done.model_type}, {done.total_params / 1e9:.2f}B parameters{active}"
    if output:  # stdout is free: say what was written and how to use it
        console.print(f"{summary}; use it with --catalog {output}", markup=False, highlight=False)
    else:  # stdout is the YAML itself
        note(summary)
